//! `theta serve`: run the log store as a service.
//!
//! Settings come from flags, then `THETA_*` environment variables, then an optional TOML file
//! (`--config`), then defaults. The TOML keys are the flag names with `_` for `-`:
//!
//! ```toml
//! data = "./theta-data"          # data directory
//! grpc_addr = "127.0.0.1:50051"  # gRPC listen address
//! metrics_addr = "127.0.0.1:9464" # private HTTP: Prometheus /metrics; or "off"
//! http_addr = "127.0.0.1:50053"  # public HTTP: the browser viewer (/) and WebRTC signalling; or "off"
//! quic_addr = "127.0.0.1:50052"  # QUIC (UDP) address, or "off"
//! webrtc_udp = "127.0.0.1:0"     # WebRTC UDP bind (signalling on the metrics port), or "off"
//! ice_servers = "stun:stun.example.org:3478"  # comma-separated STUN/TURN URLs
//! tls_cert = "cert.pem"          # gRPC TLS certificate chain (PEM), with tls_key
//! tls_key = "key.pem"
//! durability = "sync"            # sync | none | interval:MS
//! max_envelope_bytes = 65536     # bytes
//! rate_per_sec = 1000.0          # commands per second per author and session
//! rate_burst = 2000.0            # commands
//! max_lamport_skew = 100000      # Lamport ticks
//! checkpoint_every = 10000       # entries
//! cache_mib = 256                # sled page cache, MiB
//! block_cache_mib = 64           # decoded log blocks for point reads and proofs, MiB (0: off)
//! admins = ["03a1...b8"]          # service admin public keys (64 hex digits) or key files
//! admission = "admins"           # who may create sessions: admins | anyone | keys
//! creators = ["..."]             # with admission = "keys": who besides the admins
//! session_creations_per_min = 10 # per key
//! public_read = false            # serve reads without credentials (demos only)
//! reads_per_sec = 100.0          # gRPC reads per key per second
//! max_streams_per_key = 16       # streaming gRPC reads open at once per key
//! max_half_open_per_address = 32 # live handshakes open at once per IP address
//! max_connections_per_address = 256 # live connections per IP address
//! live_visibility = "confirmed"  # confirmed (durable only) | ordered (once sequenced)
//! live_pacing_us = 0             # least time between two deltas of a session (0: one per commit)
//! ```

use std::net::SocketAddr;
use std::path::PathBuf;

use std::collections::BTreeSet;

use anyhow::{Context as _, bail};
use serde::Deserialize;
use theta_gateway::auth::AccessConfig;
use theta_gateway::{ServeConfig, TlsFiles};
use theta_schemas::AuthorKey;
use theta_store::{Admission, Durability, StoreConfig};

/// Options of `theta serve`.
#[derive(Debug, clap::Args)]
pub struct ServeArgs {
    /// TOML file with any of the settings below (flags and environment win over it).
    #[arg(long, env = "THETA_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Data directory: the sled database and the service key [default: ./theta-data].
    #[arg(long, env = "THETA_DATA", value_name = "DIR")]
    data: Option<PathBuf>,
    /// gRPC listen address [default: 127.0.0.1:50051].
    #[arg(long, env = "THETA_GRPC_ADDR", value_name = "ADDR")]
    grpc_addr: Option<SocketAddr>,
    /// Private HTTP address for operators: Prometheus `/metrics` (and `/healthz`); or "off"
    /// [default: 127.0.0.1:9464].
    #[arg(long, env = "THETA_METRICS_ADDR", value_name = "ADDR|off")]
    metrics_addr: Option<String>,
    /// Public HTTP address: the browser viewer page (`/`) and WebRTC signalling (`POST
    /// /webrtc/offer`); or "off". Give it the metrics address to serve both on one port
    /// [default: 127.0.0.1:50053].
    #[arg(long, env = "THETA_HTTP_ADDR", value_name = "ADDR|off")]
    http_addr: Option<String>,
    /// QUIC (UDP) listen address, or "off" [default: 127.0.0.1:50052].
    #[arg(long, env = "THETA_QUIC_ADDR", value_name = "ADDR|off")]
    quic_addr: Option<String>,
    /// WebRTC: UDP address to gather candidates on, or "off"; signalling is `POST
    /// /webrtc/offer` on the public HTTP port [default: 127.0.0.1:0].
    #[arg(long, env = "THETA_WEBRTC_UDP", value_name = "ADDR|off")]
    webrtc_udp: Option<String>,
    /// WebRTC: STUN/TURN server URLs, comma-separated (for peers beyond loopback).
    #[arg(long, env = "THETA_ICE_SERVERS", value_name = "URLS")]
    ice_servers: Option<String>,
    /// TLS certificate chain for gRPC (PEM); needs --tls-key.
    #[arg(long, env = "THETA_TLS_CERT", value_name = "FILE")]
    tls_cert: Option<PathBuf>,
    /// TLS private key for gRPC (PEM); needs --tls-cert.
    #[arg(long, env = "THETA_TLS_KEY", value_name = "FILE")]
    tls_key: Option<PathBuf>,
    /// When appends are acknowledged: sync (durable, default), interval:MS, or none.
    #[arg(long, env = "THETA_DURABILITY", value_name = "MODE")]
    durability: Option<String>,
    /// Largest accepted envelope, bytes [default: 65536].
    #[arg(long, env = "THETA_MAX_ENVELOPE_BYTES", value_name = "BYTES")]
    max_envelope_bytes: Option<usize>,
    /// Token-bucket rate per author and session, commands/s [default: 1000].
    #[arg(long, env = "THETA_RATE_PER_SEC", value_name = "N")]
    rate_per_sec: Option<f64>,
    /// Token-bucket burst per author and session, commands [default: 2000].
    #[arg(long, env = "THETA_RATE_BURST", value_name = "N")]
    rate_burst: Option<f64>,
    /// How far ahead of the session clock a Lamport timestamp may be [default: 100000].
    #[arg(long, env = "THETA_MAX_LAMPORT_SKEW", value_name = "TICKS")]
    max_lamport_skew: Option<u64>,
    /// Checkpoint spacing, entries [default: 10000].
    #[arg(long, env = "THETA_CHECKPOINT_EVERY", value_name = "ENTRIES")]
    checkpoint_every: Option<u64>,
    /// sled's page cache, MiB. sled counts pages by their size on disk, so the memory it takes
    /// is larger and moves in a sawtooth (docs/OPERATIONS.md, "Memory") [default: 256].
    #[arg(long, env = "THETA_CACHE_MIB", value_name = "MIB")]
    cache_mib: Option<u64>,
    /// Decoded log blocks kept for point reads (single entries, index hits, inclusion proofs),
    /// MiB; 0 turns the cache off [default: 64].
    #[arg(long, env = "THETA_BLOCK_CACHE_MIB", value_name = "MIB")]
    block_cache_mib: Option<u64>,
    /// A service admin key (repeatable): 64 hex digits of a public key, or a key file from
    /// `theta keygen` (only its public key is used). Admins call `Stats`, read the global
    /// rejection trail and, with the default admission, create sessions.
    #[arg(long = "admin", env = "THETA_ADMINS", value_name = "KEY", value_delimiter = ',')]
    admins: Vec<String>,
    /// Who may create sessions: admins (default), anyone, or keys (the admins and every --creator).
    #[arg(long, env = "THETA_ADMISSION", value_name = "admins|anyone|keys")]
    admission: Option<String>,
    /// With --admission keys: a key that may create sessions (repeatable; as for --admin).
    #[arg(long = "creator", env = "THETA_CREATORS", value_name = "KEY", value_delimiter = ',')]
    creators: Vec<String>,
    /// Sessions one key may create per minute [default: 10].
    #[arg(long, env = "THETA_SESSION_CREATIONS_PER_MIN", value_name = "N")]
    session_creations_per_min: Option<u32>,
    /// Serve every gRPC read without a credential (for demos: anyone who reaches the port reads
    /// every session; a warning is logged at start).
    #[arg(long, env = "THETA_PUBLIC_READ")]
    public_read: bool,
    /// gRPC reads per key per second (the burst is twice as many) [default: 100].
    #[arg(long, env = "THETA_READS_PER_SEC", value_name = "N")]
    reads_per_sec: Option<f64>,
    /// Streaming gRPC reads a key may have open at once [default: 16].
    #[arg(long, env = "THETA_MAX_STREAMS_PER_KEY", value_name = "N")]
    max_streams_per_key: Option<usize>,
    /// Live (QUIC and WebRTC) handshakes one IP address may have open at once [default: 32].
    #[arg(long, env = "THETA_MAX_HALF_OPEN_PER_ADDRESS", value_name = "N")]
    max_half_open_per_address: Option<usize>,
    /// Live connections one IP address may have open at once [default: 256].
    #[arg(long, env = "THETA_MAX_CONNECTIONS_PER_ADDRESS", value_name = "N")]
    max_connections_per_address: Option<usize>,
    /// When live viewers see a command: `confirmed` (once durable: what they see survives any
    /// crash) or `ordered` (once sequenced, a flush sooner; a crash can take back what they saw,
    /// and they then resync to the durable head) [default: confirmed].
    #[arg(long, env = "THETA_LIVE_VISIBILITY", value_name = "confirmed|ordered")]
    live_visibility: Option<String>,
    /// Least time between two live deltas of a session, microseconds: commits within it reach
    /// viewers together, as one delta. Fewer, larger deltas cost the server and every viewer
    /// less CPU and bytes under heavy editing, at up to this much more latency (at most 100000)
    /// [default: 0, one delta per commit].
    #[arg(long, env = "THETA_LIVE_PACING_US", value_name = "MICROSECONDS")]
    live_pacing_us: Option<u64>,
}

/// The TOML file's shape.
#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct FileConfig {
    data: Option<PathBuf>,
    grpc_addr: Option<SocketAddr>,
    metrics_addr: Option<String>,
    http_addr: Option<String>,
    quic_addr: Option<String>,
    webrtc_udp: Option<String>,
    ice_servers: Option<String>,
    tls_cert: Option<PathBuf>,
    tls_key: Option<PathBuf>,
    durability: Option<String>,
    max_envelope_bytes: Option<usize>,
    rate_per_sec: Option<f64>,
    rate_burst: Option<f64>,
    max_lamport_skew: Option<u64>,
    checkpoint_every: Option<u64>,
    cache_mib: Option<u64>,
    block_cache_mib: Option<u64>,
    admins: Option<Vec<String>>,
    admission: Option<String>,
    creators: Option<Vec<String>>,
    session_creations_per_min: Option<u32>,
    public_read: Option<bool>,
    reads_per_sec: Option<f64>,
    max_streams_per_key: Option<usize>,
    max_half_open_per_address: Option<usize>,
    max_connections_per_address: Option<usize>,
    live_visibility: Option<String>,
    live_pacing_us: Option<u64>,
}

/// A key given as 64 hex digits of a public key, or as a `theta keygen` file.
fn public_key(s: &str) -> anyhow::Result<AuthorKey> {
    let mut k = [0u8; 32];
    if s.len() == 64 && hex::decode_to_slice(s, &mut k).is_ok() {
        theta_schemas::signing::public_key(&k).with_context(|| format!("admin/creator key {s}"))?;
        return Ok(AuthorKey(k));
    }
    let secret = crate::cli::read_key(std::path::Path::new(s))
        .with_context(|| format!("{s:?} is neither 64 hex digits of a public key nor a key file"))?;
    Ok(theta_schemas::signing::author_key(&secret))
}

fn keys(list: &[String]) -> anyhow::Result<BTreeSet<AuthorKey>> {
    list.iter().map(|k| public_key(k.trim())).collect()
}

fn durability(s: &str) -> anyhow::Result<Durability> {
    Ok(match s {
        "sync" => Durability::Sync,
        "none" => Durability::None,
        other => match other.strip_prefix("interval:") {
            Some(ms) => Durability::IntervalMs(
                ms.parse().with_context(|| format!("durability {other:?}: MS must be a number"))?,
            ),
            None => bail!("durability must be sync, none or interval:MS, not {other:?}"),
        },
    })
}

impl ServeArgs {
    /// Validates the settings into a checked configuration.
    pub fn resolve(self) -> anyhow::Result<ServeConfig> {
        let file: FileConfig = match &self.config {
            Some(p) => {
                let text = std::fs::read_to_string(p).with_context(|| format!("read config {}", p.display()))?;
                toml::from_str(&text).with_context(|| format!("parse config {}", p.display()))?
            }
            None => FileConfig::default(),
        };
        let d = ServeConfig::default();
        let s = StoreConfig::default();
        let metrics = self.metrics_addr.or(file.metrics_addr);
        let metrics_addr = match metrics.as_deref() {
            None => d.metrics_addr,
            Some("off") => None,
            Some(a) => Some(a.parse().with_context(|| format!("metrics address {a:?}"))?),
        };
        let http_addr = match self.http_addr.or(file.http_addr).as_deref() {
            None => d.http_addr,
            Some("off") => None,
            Some(a) => Some(a.parse().with_context(|| format!("HTTP address {a:?}"))?),
        };
        let quic_addr = match self.quic_addr.or(file.quic_addr).as_deref() {
            None => d.quic_addr,
            Some("off") => None,
            Some(a) => Some(a.parse().with_context(|| format!("QUIC address {a:?}"))?),
        };
        let ice_servers: Vec<String> = self
            .ice_servers
            .or(file.ice_servers)
            .map(|s| s.split(',').map(|u| u.trim().to_string()).filter(|u| !u.is_empty()).collect())
            .unwrap_or_default();
        let webrtc = match self.webrtc_udp.or(file.webrtc_udp).as_deref() {
            Some("off") => None,
            udp => {
                let mut w = d.webrtc.clone().unwrap_or_default();
                if let Some(a) = udp {
                    let _: SocketAddr = a.parse().with_context(|| format!("WebRTC UDP address {a:?}"))?;
                    w.udp_addrs = vec![a.to_string()];
                }
                w.ice_servers = ice_servers;
                Some(w)
            }
        };
        let tls = match (self.tls_cert.or(file.tls_cert), self.tls_key.or(file.tls_key)) {
            (Some(cert), Some(key)) => Some(TlsFiles { cert, key }),
            (None, None) => None,
            _ => bail!("TLS needs both --tls-cert and --tls-key"),
        };
        let admins = keys(&if self.admins.is_empty() { file.admins.unwrap_or_default() } else { self.admins })?;
        let creators = keys(&if self.creators.is_empty() { file.creators.unwrap_or_default() } else { self.creators })?;
        let admission = match self.admission.or(file.admission).as_deref().unwrap_or("admins") {
            "admins" if creators.is_empty() => Admission::Keys(admins.clone()),
            "anyone" if creators.is_empty() => Admission::Anyone,
            "keys" => Admission::Keys(admins.iter().chain(&creators).copied().collect()),
            "admins" | "anyone" => bail!("--creator needs --admission keys"),
            other => bail!("admission must be admins, anyone or keys, not {other:?}"),
        };
        let a = AccessConfig::default();
        let access = AccessConfig {
            admins,
            public_read: self.public_read || file.public_read.unwrap_or(false),
            reads_per_sec: self.reads_per_sec.or(file.reads_per_sec).unwrap_or(a.reads_per_sec),
            max_streams_per_key: self.max_streams_per_key.or(file.max_streams_per_key).unwrap_or(a.max_streams_per_key),
            ..a
        };
        if access.reads_per_sec.is_nan() || access.reads_per_sec <= 0.0 || access.max_streams_per_key == 0 {
            bail!("reads_per_sec and max_streams_per_key must be positive");
        }
        let access = AccessConfig { reads_burst: (access.reads_per_sec * 2.0).max(1.0), ..access };
        let ad = d.addresses;
        let addresses = theta_gateway::peers::AddressConfig {
            max_half_open_per_address: self
                .max_half_open_per_address
                .or(file.max_half_open_per_address)
                .unwrap_or(ad.max_half_open_per_address),
            max_connections_per_address: self
                .max_connections_per_address
                .or(file.max_connections_per_address)
                .unwrap_or(ad.max_connections_per_address),
        };
        if addresses.max_half_open_per_address == 0 || addresses.max_connections_per_address == 0 {
            bail!("max_half_open_per_address and max_connections_per_address must be positive");
        }
        let store = StoreConfig {
            admission,
            session_creations_per_min: self
                .session_creations_per_min
                .or(file.session_creations_per_min)
                .unwrap_or(s.session_creations_per_min),
            durability: match self.durability.or(file.durability) {
                Some(m) => durability(&m)?,
                None => s.durability,
            },
            max_envelope_bytes: self.max_envelope_bytes.or(file.max_envelope_bytes).unwrap_or(s.max_envelope_bytes),
            rate_per_sec: self.rate_per_sec.or(file.rate_per_sec).unwrap_or(s.rate_per_sec),
            rate_burst: self.rate_burst.or(file.rate_burst).unwrap_or(s.rate_burst),
            max_lamport_skew: self.max_lamport_skew.or(file.max_lamport_skew).unwrap_or(s.max_lamport_skew),
            cache_capacity_bytes: match self.cache_mib.or(file.cache_mib) {
                Some(0) => bail!("cache_mib must be at least 1"),
                Some(mib) => mib.checked_mul(1 << 20).context("cache_mib is too large")?,
                None => s.cache_capacity_bytes,
            },
            block_cache_bytes: match self.block_cache_mib.or(file.block_cache_mib) {
                Some(mib) => usize::try_from(mib)
                    .ok()
                    .and_then(|m| m.checked_mul(1 << 20))
                    .context("block_cache_mib is too large")?,
                None => s.block_cache_bytes,
            },
            ..s
        };
        if store.max_envelope_bytes == 0 || store.max_envelope_bytes > theta_schemas::MAX_ENVELOPE_BYTES {
            bail!("max_envelope_bytes must be 1..={}", theta_schemas::MAX_ENVELOPE_BYTES);
        }
        if !(store.rate_per_sec > 0.0 && store.rate_burst >= 1.0) {
            bail!("rate_per_sec must be positive and rate_burst at least 1");
        }
        let checkpoint_every_entries =
            self.checkpoint_every.or(file.checkpoint_every).unwrap_or(d.checkpoint_every_entries);
        if checkpoint_every_entries == 0 {
            bail!("checkpoint_every must be positive");
        }
        let live_visibility = match self.live_visibility.or(file.live_visibility) {
            Some(v) => v.parse().map_err(|e: String| anyhow::anyhow!(e))?,
            None => d.live_visibility,
        };
        let live_pacing = match self.live_pacing_us.or(file.live_pacing_us) {
            Some(us) if us > 100_000 => bail!("live_pacing_us is {us}: at most 100000 (0.1 s)"),
            Some(us) => std::time::Duration::from_micros(us),
            None => d.live_pacing,
        };
        Ok(ServeConfig {
            data_dir: self.data.or(file.data).unwrap_or(d.data_dir),
            grpc_addr: self.grpc_addr.or(file.grpc_addr).unwrap_or(d.grpc_addr),
            metrics_addr,
            http_addr,
            quic_addr,
            webrtc,
            tls,
            store,
            checkpoint_every_entries,
            access,
            addresses,
            live_visibility,
            live_pacing,
            ..d
        })
    }
}

/// Runs the server until SIGINT or SIGTERM.
pub fn run(args: ServeArgs) -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_env("THETA_LOG").unwrap_or_else(|_| "info".into()))
        .with_writer(std::io::stderr)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .init();
    let config = args.resolve()?;
    let rt = tokio::runtime::Runtime::new().context("start the async runtime")?;
    rt.block_on(async move {
        let running = theta_gateway::start(config.clone()).await?;
        let store = running.store().clone();
        tracing::info!(
            data = %config.data_dir.display(),
            grpc = %running.grpc_addr,
            metrics = ?running.metrics_addr,
            http = ?running.http_addr,
            quic = ?running.quic_addr,
            quic_cert_sha256 = running.quic_fingerprint.as_deref().unwrap_or("-"),
            webrtc_signal = running.webrtc_signal.as_deref().unwrap_or("-"),
            tls = config.tls.is_some(),
            sessions = store.sessions().len(),
            service_key = %hex::encode(store.service_public_key()),
            "theta serving"
        );
        if config.access.public_read {
            tracing::warn!("--public-read: every gRPC read is served without a credential; anyone who reaches {} reads every session", running.grpc_addr);
        }
        if config.access.admins.is_empty() {
            tracing::warn!("no service admin key (--admin): Stats and the global rejection trail are refused to everyone");
        }
        match &config.store.admission {
            Admission::Keys(k) if k.is_empty() => tracing::warn!(
                "nobody may create sessions: pass --admin KEY (e.g. --admin owner.key) or --admission anyone"
            ),
            Admission::Keys(k) => tracing::info!(keys = k.len(), "sessions may be created by the listed keys"),
            Admission::Anyone => tracing::warn!("--admission anyone: any key may create sessions"),
        }
        if let (Some(addr), Some(_)) = (running.http_addr, &running.webrtc_signal) {
            tracing::info!("browser viewer: http://{addr}/?session=SESSION_ID#key=VIEWER_SECRET_KEY (or no key: the page makes one and says how to grant it)");
        }
        for (session, seq, why) in store.corrupted() {
            tracing::error!(%session, seq, %why, "session failed verification and is not served");
        }
        shutdown_signal().await;
        tracing::info!(queued = store.metrics().queue_depth, "shutting down: answering queued appends and flushing");
        running.shutdown().await;
        tracing::info!("stopped");
        anyhow::Ok(())
    })
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = ctrl_c => {}
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    let _ = ctrl_c.await;
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[derive(Debug, Parser)]
    struct Wrap {
        #[command(flatten)]
        args: ServeArgs,
    }

    fn resolve(argv: &[&str]) -> anyhow::Result<ServeConfig> {
        Wrap::try_parse_from(std::iter::once("serve").chain(argv.iter().copied()))?.args.resolve()
    }

    #[test]
    fn defaults_file_and_flags_in_that_order() {
        let d = resolve(&[]).unwrap();
        assert_eq!(d.grpc_addr, "127.0.0.1:50051".parse::<std::net::SocketAddr>().unwrap());
        assert_eq!(d.metrics_addr, Some("127.0.0.1:9464".parse::<std::net::SocketAddr>().unwrap()));
        assert_eq!(d.http_addr, Some("127.0.0.1:50053".parse::<std::net::SocketAddr>().unwrap()));
        assert_eq!(d.store.durability, Durability::Sync);
        assert_eq!(d.data_dir, PathBuf::from("theta-data"));

        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("theta.toml");
        std::fs::write(
            &file,
            "data = \"/srv/theta\"\ngrpc_addr = \"127.0.0.1:7000\"\nmetrics_addr = \"off\"\ndurability = \"interval:20\"\nrate_per_sec = 50.0\n",
        )
        .unwrap();
        let f = resolve(&["--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(f.data_dir, PathBuf::from("/srv/theta"));
        assert_eq!(f.grpc_addr, "127.0.0.1:7000".parse::<std::net::SocketAddr>().unwrap());
        assert_eq!(f.metrics_addr, None);
        assert_eq!(f.store.durability, Durability::IntervalMs(20));
        assert_eq!(f.store.rate_per_sec, 50.0);
        // A flag wins over the file.
        let g = resolve(&["--config", file.to_str().unwrap(), "--grpc-addr", "127.0.0.1:7001", "--durability", "none"])
            .unwrap();
        assert_eq!(g.grpc_addr, "127.0.0.1:7001".parse::<std::net::SocketAddr>().unwrap());
        assert_eq!(g.store.durability, Durability::None);
    }

    #[test]
    fn bad_settings_are_clear_errors() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("bad.toml");
        std::fs::write(&file, "grpc_adr = \"127.0.0.1:1\"\n").unwrap();
        let e = resolve(&["--config", file.to_str().unwrap()]).unwrap_err();
        assert!(format!("{e:#}").contains("unknown field `grpc_adr`"), "{e:#}");
        let e = resolve(&["--durability", "sometimes"]).unwrap_err();
        assert!(e.to_string().contains("sync, none or interval:MS"), "{e}");
        let e = resolve(&["--tls-cert", "a.pem"]).unwrap_err();
        assert!(e.to_string().contains("both --tls-cert and --tls-key"), "{e}");
        let e = resolve(&["--max-envelope-bytes", "70000"]).unwrap_err();
        assert!(e.to_string().contains("max_envelope_bytes"), "{e}");
        assert!(resolve(&["--grpc-addr", "not an address"]).is_err());
        let e = resolve(&["--admission", "everyone"]).unwrap_err();
        assert!(e.to_string().contains("admins, anyone or keys"), "{e}");
        let key = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8";
        let e = resolve(&["--creator", key]).unwrap_err();
        assert!(e.to_string().contains("--creator needs --admission keys"), "{e}");
        let e = resolve(&["--admin", "nonsense.key"]).unwrap_err();
        assert!(format!("{e:#}").contains("neither 64 hex digits of a public key nor a key file"), "{e:#}");
        // A small-order key is no admin.
        let weak = "0100000000000000000000000000000000000000000000000000000000000000";
        assert!(resolve(&["--admin", weak]).is_err());
        let e = resolve(&["--live-visibility", "eventually"]).unwrap_err();
        assert!(e.to_string().contains("expected confirmed or ordered"), "{e}");
    }

    #[test]
    fn live_visibility_is_confirmed_unless_chosen() {
        use theta_gateway::live::Visibility;
        assert_eq!(resolve(&[]).unwrap().live_visibility, Visibility::Confirmed);
        assert_eq!(resolve(&["--live-visibility", "ordered"]).unwrap().live_visibility, Visibility::Ordered);
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("theta.toml");
        std::fs::write(&file, "live_visibility = \"ordered\"\n").unwrap();
        let f = resolve(&["--config", file.to_str().unwrap()]).unwrap();
        assert_eq!(f.live_visibility, Visibility::Ordered);
        let g = resolve(&["--config", file.to_str().unwrap(), "--live-visibility", "confirmed"]).unwrap();
        assert_eq!(g.live_visibility, Visibility::Confirmed);
    }

    #[test]
    fn live_pacing_is_off_unless_chosen_and_bounded() {
        use std::time::Duration;
        assert_eq!(resolve(&[]).unwrap().live_pacing, Duration::ZERO);
        assert_eq!(resolve(&["--live-pacing-us", "1500"]).unwrap().live_pacing, Duration::from_micros(1_500));
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("theta.toml");
        std::fs::write(&file, "live_pacing_us = 2000\n").unwrap();
        assert_eq!(resolve(&["--config", file.to_str().unwrap()]).unwrap().live_pacing, Duration::from_millis(2));
        let e = resolve(&["--live-pacing-us", "5000000"]).unwrap_err();
        assert!(e.to_string().contains("at most 100000"), "{e}");
    }

    #[test]
    fn access_settings_secure_by_default() {
        let d = resolve(&[]).unwrap();
        assert_eq!(
            d.store.admission,
            Admission::Keys(BTreeSet::new()),
            "nobody creates sessions until an admin is named"
        );
        assert!(!d.access.public_read);
        assert!(d.access.admins.is_empty());
        let key = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8";
        let a = resolve(&["--admin", key]).unwrap();
        let k = public_key(key).unwrap();
        assert_eq!(a.store.admission, Admission::Keys([k].into()));
        assert!(a.access.admins.contains(&k));
        // RFC 8032's first test key.
        let other = "d75a980182b10ab7d54bfed3c964073a0ee172f3daa62325af021a68f707511a";
        let keys = resolve(&["--admin", key, "--admission", "keys", "--creator", other]).unwrap();
        assert_eq!(keys.store.admission, Admission::Keys([k, public_key(other).unwrap()].into()));
        assert_eq!(keys.access.admins.len(), 1, "a creator is no admin");
        let open = resolve(&["--admission", "anyone", "--public-read"]).unwrap();
        assert_eq!(open.store.admission, Admission::Anyone);
        assert!(open.access.public_read);
        // An admin given as a key file: only its public key is used.
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("owner.key");
        std::fs::write(&file, "000102030405060708090a0b0c0d0e0f101112131415161718191a1b1c1d1e1f\n").unwrap();
        let f = resolve(&["--admin", file.to_str().unwrap()]).unwrap();
        assert!(f.access.admins.contains(&k), "the key file's public key is the vector key");
    }
}
