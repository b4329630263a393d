//! The `theta` client subcommands: talk to a running `theta serve` over gRPC.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, bail};
use serde_json::Value as Json;
use theta_client::command_json::command_from_json;
use theta_client::history::{HistoryClient, HistoryError};
use theta_proto::v1 as pb;
use theta_schemas::SessionId;
use tokio_stream::StreamExt;

use crate::cli::read_key;

/// Where the server is.
#[derive(Debug, Clone, clap::Args)]
pub struct Server {
    /// gRPC address of `theta serve` (http:// or https://).
    #[arg(long, env = "THETA_SERVER", default_value = "http://127.0.0.1:50051", global = true)]
    server: String,
    /// CA certificate (PEM) to trust for an https:// server.
    #[arg(long, env = "THETA_CA", value_name = "FILE", global = true)]
    ca: Option<PathBuf>,
    /// Your secret key file (from `theta keygen`): signs commands, and signs every read with a
    /// fresh credential (reads need a role in the session; audits need auditor or owner;
    /// `theta stats` needs a service admin key).
    #[arg(long, env = "THETA_KEY", value_name = "FILE", global = true)]
    pub key: Option<PathBuf>,
}

impl Server {
    /// A history client for the server, with the `--key` file's key when one is given.
    pub(crate) async fn connect(&self) -> anyhow::Result<HistoryClient> {
        let ca = match &self.ca {
            Some(ca) => Some(std::fs::read(ca).with_context(|| format!("read {}", ca.display()))?),
            None => None,
        };
        let key = match &self.key {
            Some(path) => Some(read_key(path)?),
            None => None,
        };
        HistoryClient::connect(&self.server, ca, key).await.map_err(status)
    }

    /// The `--key` file's key, which `what` needs.
    pub(crate) fn signing_key(&self, what: &str) -> anyhow::Result<ed25519_dalek::SigningKey> {
        read_key(self.key.as_deref().with_context(|| format!("{what} needs --key FILE (or THETA_KEY)"))?)
    }

    /// A history client that holds a key, which `what` needs.
    pub(crate) async fn connect_with_key(&self, what: &str) -> anyhow::Result<HistoryClient> {
        if self.key.is_none() {
            bail!("{what} needs --key FILE (or THETA_KEY)");
        }
        self.connect().await
    }
}

fn session_id(s: &str) -> anyhow::Result<SessionId> {
    SessionId::from_hex(s).with_context(|| format!("session id {s:?} must be 32 hex digits"))
}

/// A history call's error for the CLI, with a hint where the fix is the caller's.
pub(crate) fn status(e: impl Into<HistoryError>) -> anyhow::Error {
    let e = e.into();
    let hint = match &e {
        HistoryError::Status(s)
            if s.code() == tonic::Code::Unauthenticated && s.message().contains("needs a credential") =>
        {
            " (pass --key FILE or set THETA_KEY: a key with a role in the session)"
        }
        _ => "",
    };
    anyhow::anyhow!("{e}{hint}")
}

fn receipt_line(r: &pb::Receipt) -> String {
    format!(
        "accepted: seq {} lamport {} entry {} (tree size {}, root {})",
        r.seq,
        r.lamport,
        hex::encode(&r.entry_hash),
        r.tree_size,
        hex::encode(&r.tree_root)
    )
}

/// `theta session create`.
/// Prints the bare session id on stdout (so `S=$(theta session create ...)` works) and the
/// receipt on stderr; with `json`, one JSON object on stdout instead.
pub async fn create_session(server: &Server, name: String, json: bool) -> anyhow::Result<()> {
    let client = server.connect_with_key("creating a session").await?;
    let (session, receipt) = client.create_session(name).await.map_err(status)?;
    if json {
        let mut j = receipt_json(&receipt);
        j["session"] = Json::from(session.to_string());
        println!("{j}");
    } else {
        println!("{session}");
        eprintln!("created session {session}");
        eprintln!("{}", receipt_line(&receipt));
    }
    Ok(())
}

fn receipt_json(r: &pb::Receipt) -> Json {
    serde_json::json!({
        "session": hex::encode(&r.session), "seq": r.seq, "lamport": r.lamport, "nonce": r.nonce,
        "entry_hash": hex::encode(&r.entry_hash), "tree_size": r.tree_size, "tree_root": hex::encode(&r.tree_root),
    })
}

/// `theta append`.
pub async fn append(server: &Server, session: &str, json: &str, json_out: bool) -> anyhow::Result<()> {
    let session = session_id(session)?;
    let j: Json = serde_json::from_str(json)
        .context("the command must be JSON, e.g. {\"kind\":\"Rename\",\"entity\":1,\"name\":\"x\"}")?;
    let (entity, component, base, command) = command_from_json(&j)?;
    let client = server.connect_with_key("appending").await?;
    let receipt = client.append(session, entity, component, base, command).await.map_err(status)?;
    if json_out {
        println!("{}", receipt_json(&receipt));
    } else {
        println!("{}", receipt_line(&receipt));
    }
    Ok(())
}

/// Options of `theta log`.
#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// Session id (32 hex digits).
    #[arg(long)]
    session: String,
    /// First seq.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Last seq (default: the head).
    #[arg(long)]
    to: Option<u64>,
    /// Only entries signed by this key (64 hex digits).
    #[arg(long)]
    author: Option<String>,
    /// Only entries whose scope is this entity.
    #[arg(long)]
    entity: Option<u64>,
    /// Only these command kinds (repeatable), e.g. --kind SetTransform.
    #[arg(long = "kind")]
    kinds: Vec<String>,
    /// Print JSON lines instead of text.
    #[arg(long)]
    json: bool,
}

/// `theta log`.
pub async fn log(server: &Server, a: LogArgs) -> anyhow::Result<()> {
    let session = session_id(&a.session)?;
    let author = match &a.author {
        Some(h) => {
            let mut k = [0u8; 32];
            hex::decode_to_slice(h, &mut k).context("--author must be 64 hex digits")?;
            k.to_vec()
        }
        None => Vec::new(),
    };
    let client = server.connect().await?;
    let req = pb::ReadLogRequest {
        session: session.0.to_vec(),
        from_seq: a.from,
        to_seq: a.to.unwrap_or(0),
        author,
        entity: a.entity.unwrap_or(0),
        kinds: a.kinds,
        batch_size: 4096,
        envelope_only: false,
    };
    let mut stream = client.read_log(&session, req).await.map_err(status)?;
    let started = Instant::now();
    let mut n = 0u64;
    let mut next_report = 100_000;
    use std::io::Write as _;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while let Some(batch) = stream.next().await {
        for e in batch.map_err(status)?.entries {
            n += 1;
            if a.json {
                let line = serde_json::json!({
                    "seq": e.seq, "kind": e.kind, "author": hex::encode(&e.author), "lamport": e.lamport, "nonce": e.nonce,
                    "entity": e.entity, "component": format!("{:#018x}", e.component), "receipt_time_ms": e.receipt_time_ms,
                    "entry_hash": hex::encode(&e.entry_hash), "envelope": hex::encode(&e.envelope),
                });
                writeln!(out, "{line}")?;
            } else {
                writeln!(
                    out,
                    "{:>8}  {:<17} entity {:<6} by {}  lamport {}  {}",
                    e.seq,
                    e.kind,
                    e.entity,
                    &hex::encode(&e.author)[..16],
                    e.lamport,
                    &hex::encode(&e.entry_hash)[..16]
                )?;
            }
            if n == next_report {
                next_report += 100_000;
                eprintln!("theta log: {n} entries ({:.0}/s)", n as f64 / started.elapsed().as_secs_f64());
            }
        }
    }
    out.flush()?;
    eprintln!("theta log: {n} entries in {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `theta audit verify`.
pub async fn verify(server: &Server, session: &str, from: u64, to: u64) -> anyhow::Result<()> {
    let session = session_id(session)?;
    let r = server.connect().await?.verify_log(&session, from, to).await.map_err(status)?;
    println!("entries checked  {}", r.entries_checked);
    println!("signatures       {}", if r.signatures_ok { "ok" } else { "FAILED" });
    println!("hash chain       {}", if r.chain_ok { "ok" } else { "FAILED" });
    println!(
        "Merkle tree      {} (size {}, root {})",
        if r.tree_ok { "ok" } else { "FAILED" },
        r.tree_size,
        hex::encode(&r.tree_root)
    );
    if r.first_bad_seq != 0 {
        bail!("first bad entry: seq {}: {}", r.first_bad_seq, r.first_bad_reason);
    }
    Ok(())
}

/// `theta audit prove`: fetch an entry and its inclusion proof, and check them here.
pub async fn prove(server: &Server, session: &str, seq: u64) -> anyhow::Result<()> {
    let session = session_id(session)?;
    let p = server.connect().await?.prove(&session, seq).await.map_err(status)?;
    println!(
        "entry {seq}: {} by {} (entry hash {}{})",
        p.entry.kind,
        &hex::encode(&p.entry.author)[..16],
        hex::encode(&p.entry.entry_hash),
        if p.hash_ok { "" } else { ", which its fields do NOT hash to" }
    );
    println!(
        "inclusion in tree of size {} with root {}: {} ({} hashes)",
        p.proof.tree_size,
        hex::encode(&p.proof.root),
        if p.verified() { "verified" } else { "FAILED" },
        p.proof.path.len()
    );
    if !p.verified() {
        bail!("the proof does not verify");
    }
    Ok(())
}

/// `theta stats`.
pub async fn stats(server: &Server) -> anyhow::Result<()> {
    let s = server.connect().await?.stats().await.map_err(status)?;
    println!("service key {}", hex::encode(&s.service_public_key));
    println!("sessions:");
    for x in &s.sessions {
        println!("  {}  {:>10} entries  {}", hex::encode(&x.session), x.seq, x.name);
    }
    println!("counters:");
    for c in &s.counters {
        println!("  {:<28} {}", c.name, c.value);
    }
    Ok(())
}
