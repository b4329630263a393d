//! Command-line parsing and dispatch for the `theta` binary.

use std::fs;
use std::io::Write as _;
use std::path::{Path, PathBuf};

use anyhow::{Context as _, bail};
use clap::{Parser, Subcommand};
use ed25519_dalek::SigningKey;

/// Theta: an event-sourced command-log database for collaborative 3D/VR scene editing.
///
/// A signed, Lamport-ordered command log is the single source of truth; projections of it
/// are streamed to viewers, and its history can be replayed and audited.
#[derive(Debug, Parser)]
#[command(name = "theta", version, about, long_about)]
struct Cli {
    #[command(subcommand)]
    command: Cmd,
}

#[derive(Debug, Subcommand)]
enum SessionCmd {
    /// Create a session owned by --key; prints the bare session id on stdout (the receipt goes
    /// to stderr), so that `S=$(theta session create --key owner.key)` works. The server admits
    /// the key only if it may create sessions (by default: a service admin key).
    Create {
        /// Session name.
        #[arg(long, default_value = "untitled")]
        name: String,
        /// Print the session id and receipt as one JSON object.
        #[arg(long)]
        json: bool,
        #[command(flatten)]
        server: crate::client::Server,
    },
}

#[derive(Debug, Subcommand)]
enum AuditCmd {
    /// Re-verify a range of the log: signatures, hash chain, Merkle tree.
    Verify {
        /// Session id (32 hex digits).
        #[arg(long)]
        session: String,
        /// First seq.
        #[arg(long, default_value_t = 1)]
        from: u64,
        /// Last seq (0: the head).
        #[arg(long, default_value_t = 0)]
        to: u64,
        #[command(flatten)]
        server: crate::client::Server,
    },
    /// Fetch an entry and its inclusion proof and check both locally.
    Prove {
        /// Session id (32 hex digits).
        #[arg(long)]
        session: String,
        /// The entry's seq.
        seq: u64,
        #[command(flatten)]
        server: crate::client::Server,
    },
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Run the log store as a service: gRPC (append, replay, audit), /metrics.
    Serve(Box<crate::serve::ServeArgs>),
    /// Sessions on a running server.
    #[command(subcommand)]
    Session(SessionCmd),
    /// Sign a command described in JSON and append it, e.g.
    /// --json '{"kind":"Rename","entity":1,"name":"table"}'.
    Append {
        /// Session id (32 hex digits).
        #[arg(long)]
        session: String,
        /// The command as JSON (docs/PROTOCOL.md, "CLI command JSON").
        #[arg(long)]
        json: String,
        /// Print the receipt as JSON.
        #[arg(long)]
        json_output: bool,
        #[command(flatten)]
        server: crate::client::Server,
    },
    /// Replay a session's log as text or JSON lines.
    Log {
        #[command(flatten)]
        args: crate::client::LogArgs,
        #[command(flatten)]
        server: crate::client::Server,
    },
    /// Audit a session: verify the log, prove an entry's inclusion.
    #[command(subcommand)]
    Audit(AuditCmd),
    /// Offline operations on a data directory: backup, restore, migrate.
    #[command(subcommand)]
    Store(crate::storecmd::StoreCmd),
    /// Counters and sessions of a running server.
    Stats {
        #[command(flatten)]
        server: crate::client::Server,
    },
    /// Run a scripted editing session against a real store and verify it (start here).
    Demo(Box<crate::demo::DemoArgs>),
    /// Show a session: live over QUIC, or at any seq of its history over gRPC; headless to PNGs.
    View(Box<crate::view::ViewArgs>),
    /// Print the schema manifest: protocol version, schema hash and component ids.
    Manifest,
    /// Generate an Ed25519 key pair and write the secret key to a file (hex, mode 0600).
    Keygen {
        /// Where to write the secret key.
        #[arg(long, short, value_name = "FILE")]
        out: PathBuf,
        /// Overwrite an existing file.
        #[arg(long)]
        force: bool,
    },
    /// Print the public key of a secret key file.
    Pubkey {
        /// The secret key file written by `theta keygen`.
        #[arg(value_name = "FILE")]
        key: PathBuf,
    },
}

/// Parses the command line and runs the chosen subcommand.
pub fn run() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = || tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build();
    match cli.command {
        Cmd::Serve(args) => crate::serve::run(*args),
        Cmd::Session(SessionCmd::Create { name, json, server }) => {
            rt()?.block_on(crate::client::create_session(&server, name, json))
        }
        Cmd::Append { session, json, json_output, server } => {
            rt()?.block_on(crate::client::append(&server, &session, &json, json_output))
        }
        Cmd::Log { args, server } => rt()?.block_on(crate::client::log(&server, args)),
        Cmd::Audit(AuditCmd::Verify { session, from, to, server }) => {
            rt()?.block_on(crate::client::verify(&server, &session, from, to))
        }
        Cmd::Audit(AuditCmd::Prove { session, seq, server }) => {
            rt()?.block_on(crate::client::prove(&server, &session, seq))
        }
        Cmd::Stats { server } => rt()?.block_on(crate::client::stats(&server)),
        Cmd::Store(cmd) => crate::storecmd::run(cmd),
        Cmd::Demo(args) => crate::demo::run(*args),
        Cmd::View(args) => crate::view::run(*args),
        Cmd::Manifest => {
            print!("{}", theta_schemas::manifest::render());
            Ok(())
        }
        Cmd::Keygen { out, force } => keygen(&out, force),
        Cmd::Pubkey { key } => {
            let key = read_key(&key)?;
            println!("{}", hex::encode(key.verifying_key().to_bytes()));
            Ok(())
        }
    }
}

fn keygen(out: &Path, force: bool) -> anyhow::Result<()> {
    if out.exists() && !force {
        bail!("{} exists; pass --force to overwrite it", out.display());
    }
    let key = SigningKey::generate(&mut rand::rngs::OsRng);
    let mut opts = fs::OpenOptions::new();
    opts.write(true).create(true).truncate(true);
    #[cfg(unix)]
    {
        use std::os::unix::fs::OpenOptionsExt as _;
        opts.mode(0o600);
    }
    let mut f = opts.open(out).with_context(|| format!("create {}", out.display()))?;
    writeln!(f, "{}", hex::encode(key.to_bytes())).with_context(|| format!("write {}", out.display()))?;
    println!("secret key: {}", out.display());
    println!("public key: {}", hex::encode(key.verifying_key().to_bytes()));
    Ok(())
}

/// Reads a secret key file: 64 hex digits, surrounding whitespace ignored.
pub fn read_key(path: &Path) -> anyhow::Result<SigningKey> {
    let text = fs::read_to_string(path).with_context(|| format!("read key file {}", path.display()))?;
    let mut secret = [0u8; 32];
    hex::decode_to_slice(text.trim(), &mut secret)
        .with_context(|| format!("{} must hold a 32-byte secret key as 64 hex digits", path.display()))?;
    Ok(SigningKey::from_bytes(&secret))
}
