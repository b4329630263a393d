//! Running the gateway: the gRPC server (with health and reflection), the metrics endpoint,
//! periodic checkpoints, and a graceful shutdown that answers every in-flight append.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use theta_proto::v1::admin_service_server::AdminServiceServer;
use theta_proto::v1::audit_service_server::AuditServiceServer;
use theta_proto::v1::log_service_server::LogServiceServer;
use theta_proto::v1::replay_service_server::ReplayServiceServer;
use theta_store::{Store, StoreConfig};
use tokio::net::TcpListener;
use tokio::sync::oneshot;
use tokio_stream::wrappers::TcpListenerStream;

use crate::grpc::Gateway;
use crate::history::{DEFAULT_CHECKPOINT_EVERY_ENTRIES, write_checkpoints};
use crate::metrics::Observability;

/// Headroom over the envelope guard for gRPC framing, so that slightly oversized envelopes
/// still reach the store's payload guard (and its counter) instead of tonic's limit.
pub const GRPC_HEADROOM_BYTES: usize = 4 * 1024;

/// TLS material for the gRPC endpoint (PEM files).
#[derive(Debug, Clone)]
pub struct TlsFiles {
    /// Certificate chain, PEM.
    pub cert: PathBuf,
    /// Private key, PEM.
    pub key: PathBuf,
}

/// gRPC calls one HTTP/2 connection may have open at once (`SETTINGS_MAX_CONCURRENT_STREAMS`);
/// a client opens more only as earlier ones end.
pub const GRPC_STREAMS_PER_CONNECTION: u32 = 256;

/// Everything `theta serve` needs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Data directory (sled database and service key). Default `./theta-data`.
    pub data_dir: PathBuf,
    /// gRPC listen address. Default `127.0.0.1:50051`.
    pub grpc_addr: SocketAddr,
    /// Prometheus endpoint address (`/metrics`, `/healthz`), for operators only; `None`
    /// disables it. Default `127.0.0.1:9464`.
    pub metrics_addr: Option<SocketAddr>,
    /// Public web address: the browser viewer page (`/`, `/viewer.js`) and WebRTC signalling
    /// (`POST /webrtc/offer`); `None` disables it. The same address as `metrics_addr` serves
    /// both on one port. Default `127.0.0.1:50053`.
    pub http_addr: Option<SocketAddr>,
    /// QUIC endpoint address (UDP); `None` disables it. Default `127.0.0.1:50052`. Its
    /// certificate is `quic-cert.der` in the data directory, made at first start.
    pub quic_addr: Option<SocketAddr>,
    /// Time a QUIC client has to complete the handshake, milliseconds. Default 5,000.
    pub handshake_timeout_ms: u64,
    /// TLS for gRPC; plaintext when `None` (the default, for loopback).
    pub tls: Option<TlsFiles>,
    /// Store settings.
    pub store: StoreConfig,
    /// Checkpoint spacing, entries. Default 10,000.
    pub checkpoint_every_entries: u64,
    /// How often sessions are checked for due checkpoints, milliseconds. Default 5,000.
    pub checkpoint_interval_ms: u64,
    /// WebRTC (signalling at `POST /webrtc/offer` on the web port); `None` disables it.
    /// Default: on, UDP on 127.0.0.1 only.
    pub webrtc: Option<crate::webrtc::WebRtcConfig>,
    /// How long a Subscribe client may stop reading (its buffer full) before its stream ends
    /// with `RESOURCE_EXHAUSTED` and the seq to resume from, milliseconds. Default 30,000.
    pub slow_subscriber_ms: u64,
    /// Read credentials, service admins and per-key read limits (see [`crate::auth`]).
    pub access: crate::auth::AccessConfig,
    /// Per-address limits on live connections (see [`crate::peers`]).
    pub addresses: crate::peers::AddressConfig,
    /// When live viewers see a command (see [`crate::live::Visibility`]). Default `Confirmed`.
    pub live_visibility: crate::live::Visibility,
    /// The least time between two live deltas of a session: commits within it leave together
    /// as one delta (zero: one delta per commit). Default [`crate::live::DEFAULT_PACING`].
    pub live_pacing: std::time::Duration,
}

impl Default for ServeConfig {
    fn default() -> Self {
        ServeConfig {
            data_dir: PathBuf::from("theta-data"),
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 50051)),
            metrics_addr: Some(SocketAddr::from(([127, 0, 0, 1], 9464))),
            http_addr: Some(SocketAddr::from(([127, 0, 0, 1], 50053))),
            quic_addr: Some(SocketAddr::from(([127, 0, 0, 1], 50052))),
            handshake_timeout_ms: 5_000,
            tls: None,
            store: StoreConfig::default(),
            checkpoint_every_entries: DEFAULT_CHECKPOINT_EVERY_ENTRIES,
            checkpoint_interval_ms: 5_000,
            slow_subscriber_ms: 30_000,
            webrtc: Some(crate::webrtc::WebRtcConfig::default()),
            access: crate::auth::AccessConfig::default(),
            addresses: crate::peers::AddressConfig::default(),
            live_visibility: crate::live::Visibility::Confirmed,
            live_pacing: crate::live::DEFAULT_PACING,
        }
    }
}

impl ServeConfig {
    /// The default configuration with its data in `data_dir` and every endpoint (gRPC,
    /// metrics, HTTP, QUIC) on 127.0.0.1 at a port the OS picks ([`Running`] says which):
    /// for tests, demos and programs that embed a server.
    pub fn loopback(data_dir: impl Into<PathBuf>) -> ServeConfig {
        let any = SocketAddr::from(([127, 0, 0, 1], 0));
        ServeConfig {
            data_dir: data_dir.into(),
            grpc_addr: any,
            metrics_addr: Some(any),
            http_addr: Some(any),
            quic_addr: Some(any),
            ..ServeConfig::default()
        }
    }
}

/// Why the server could not start.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    /// The store could not be opened.
    #[error("open store in {dir}: {source}")]
    Store {
        /// The data directory.
        dir: String,
        /// Why.
        #[source]
        source: theta_store::OpenError,
    },
    /// The QUIC endpoint could not start.
    #[error(transparent)]
    Quic(#[from] crate::quic::QuicError),
    /// A listen address could not be bound.
    #[error("bind {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// TLS files could not be read or used.
    #[error("TLS: {0}")]
    Tls(String),
    /// The reflection service could not be built.
    #[error("reflection: {0}")]
    Reflection(String),
}

/// A running gateway.
pub struct Running {
    /// The bound gRPC address (useful with port 0).
    pub grpc_addr: SocketAddr,
    /// The bound metrics address.
    pub metrics_addr: Option<SocketAddr>,
    /// The bound public web address (page and WebRTC signalling).
    pub http_addr: Option<SocketAddr>,
    /// The bound QUIC address.
    pub quic_addr: Option<SocketAddr>,
    /// SHA-256 fingerprint of the QUIC certificate (hex), for clients to pin.
    pub quic_fingerprint: Option<String>,
    /// The WebRTC signalling URL (`http://…/webrtc/offer`), when WebRTC and the HTTP port are on.
    pub webrtc_signal: Option<String>,
    /// The WebRTC endpoint.
    pub webrtc: Option<Arc<crate::webrtc::WebRtcEndpoint>>,
    quic: Option<crate::quic::QuicServer>,
    store: Arc<Store>,
    closing: tokio::sync::watch::Sender<bool>,
    stop: Option<oneshot::Sender<()>>,
    server: tokio::task::JoinHandle<Result<(), tonic::transport::Error>>,
    background: Vec<tokio::task::JoinHandle<()>>,
}

impl Running {
    /// The store behind the server.
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Stops accepting calls, lets in-flight ones finish, answers and flushes every queued
    /// append, and closes the store.
    pub async fn shutdown(mut self) {
        let _ = self.closing.send(true);
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        let _ = tokio::time::timeout(Duration::from_secs(10), &mut self.server).await;
        if let Some(q) = self.quic.take() {
            q.shutdown().await;
        }
        if let Some(w) = self.webrtc.take() {
            w.shutdown().await;
        }
        for b in &self.background {
            b.abort();
        }
        let store = self.store.clone();
        let _ = tokio::task::spawn_blocking(move || store.close()).await;
    }
}

/// Opens the store in `config.data_dir` and starts serving.
pub async fn start(config: ServeConfig) -> Result<Running, ServeError> {
    let (dir, store_config) = (config.data_dir.clone(), config.store.clone());
    let store = tokio::task::spawn_blocking(move || Store::open(&dir, store_config))
        .await
        .expect("open task")
        .map_err(|source| ServeError::Store { dir: config.data_dir.display().to_string(), source })?;
    start_with_store(Arc::new(store), &config).await
}

/// Starts serving an already opened store.
pub async fn start_with_store(store: Arc<Store>, config: &ServeConfig) -> Result<Running, ServeError> {
    let obs = Arc::new(Observability::default());
    let access = Arc::new(crate::auth::Access::new(config.access.clone()));
    obs.attach_access(access.clone());
    let (closing_tx, closing) = tokio::sync::watch::channel(false);
    let gw =
        Gateway::new(store.clone(), obs.clone(), closing, Duration::from_millis(config.slow_subscriber_ms), access);
    let limit = store.config().max_envelope_bytes + GRPC_HEADROOM_BYTES;

    let (health, health_service) = tonic_health::server::health_reporter();
    health.set_serving::<LogServiceServer<Gateway>>().await;
    health.set_serving::<ReplayServiceServer<Gateway>>().await;
    health.set_serving::<AuditServiceServer<Gateway>>().await;
    health.set_serving::<AdminServiceServer<Gateway>>().await;
    // Reflection v1 and v1alpha: older grpcurl and evans releases only speak v1alpha.
    let reflection_builder = || {
        tonic_reflection::server::Builder::configure()
            .register_encoded_file_descriptor_set(theta_proto::FILE_DESCRIPTOR_SET)
            .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
    };
    let reflection = reflection_builder().build_v1().map_err(|e| ServeError::Reflection(e.to_string()))?;
    let reflection_alpha = reflection_builder().build_v1alpha().map_err(|e| ServeError::Reflection(e.to_string()))?;

    let listener = TcpListener::bind(config.grpc_addr)
        .await
        .map_err(|source| ServeError::Bind { addr: config.grpc_addr, source })?;
    let grpc_addr = listener.local_addr().map_err(|source| ServeError::Bind { addr: config.grpc_addr, source })?;

    // HTTP/2 bounds per connection: tonic's default lifts hyper's stream limit altogether, so a
    // client could hold any number of calls (each a task) on one connection. Dead peers (a
    // network that vanished without a FIN) are found by keep-alive pings instead of holding
    // their calls, and their keys' stream slots, for good.
    let mut builder = tonic::transport::Server::builder()
        .max_concurrent_streams(GRPC_STREAMS_PER_CONNECTION)
        .http2_max_pending_accept_reset_streams(Some(20))
        .http2_keepalive_interval(Some(std::time::Duration::from_secs(30)))
        .http2_keepalive_timeout(Some(std::time::Duration::from_secs(20)))
        .tcp_keepalive(Some(std::time::Duration::from_secs(60)));
    if let Some(tls) = &config.tls {
        let cert = std::fs::read(&tls.cert).map_err(|e| ServeError::Tls(format!("{}: {e}", tls.cert.display())))?;
        let key = std::fs::read(&tls.key).map_err(|e| ServeError::Tls(format!("{}: {e}", tls.key.display())))?;
        let identity = tonic::transport::Identity::from_pem(cert, key);
        builder = builder
            .tls_config(tonic::transport::ServerTlsConfig::new().identity(identity))
            .map_err(|e| ServeError::Tls(e.to_string()))?;
    }
    let router = builder
        .layer(crate::calls::CountErrors::new(obs.clone(), limit))
        .add_service(health_service)
        .add_service(reflection)
        .add_service(reflection_alpha)
        .add_service(LogServiceServer::new(gw.clone()).max_decoding_message_size(limit))
        .add_service(ReplayServiceServer::new(gw.clone()).max_decoding_message_size(limit))
        .add_service(AuditServiceServer::new(gw.clone()).max_decoding_message_size(limit))
        .add_service(AdminServiceServer::new(gw).max_decoding_message_size(limit));
    let (stop, stopped) = oneshot::channel::<()>();
    let server = tokio::spawn(router.serve_with_incoming_shutdown(TcpListenerStream::new(listener), async {
        let _ = stopped.await;
    }));

    let mut background = Vec::new();
    // One live hub fans out to viewers on every transport.
    let hub = crate::live::LiveHub::with_options(store.clone(), crate::live::IDLE_RETIRE, config.live_visibility);
    // Watched sessions are checkpointed by their live projection (one fold of the log); the
    // periodic pass below folds only the sessions nobody watches.
    hub.set_checkpoint_every(config.checkpoint_every_entries);
    hub.set_pacing(config.live_pacing);
    obs.attach_live(hub.clone());
    // One set of per-address limits for both live transports.
    let limits = crate::peers::AddressLimits::new(config.addresses);
    let webrtc = config.webrtc.clone().map(|mut w| {
        w.handshake_timeout_ms = config.handshake_timeout_ms;
        crate::webrtc::WebRtcEndpoint::new(store.clone(), hub.clone(), obs.clone(), w, limits.clone())
    });
    // The metrics port and the public web port; one listener when they are the same address.
    use crate::http::Routes;
    // (Port 0 twice means two ephemeral ports, not one.)
    let shared = config.metrics_addr.is_some_and(|a| a.port() != 0) && config.metrics_addr == config.http_addr;
    let mut bind_http = |addr: Option<SocketAddr>, routes: Routes| -> Result<Option<SocketAddr>, ServeError> {
        let Some(addr) = addr else { return Ok(None) };
        let l = std::net::TcpListener::bind(addr).map_err(|source| ServeError::Bind { addr, source })?;
        l.set_nonblocking(true).map_err(|source| ServeError::Bind { addr, source })?;
        let bound = l.local_addr().map_err(|source| ServeError::Bind { addr, source })?;
        let l = TcpListener::from_std(l).map_err(|source| ServeError::Bind { addr, source })?;
        background.push(tokio::spawn(crate::http::serve_http(l, routes, obs.clone(), store.clone(), webrtc.clone())));
        Ok(Some(bound))
    };
    let (metrics_addr, http_addr) = if shared {
        let a = bind_http(config.metrics_addr, Routes::ALL)?;
        (a, a)
    } else {
        (bind_http(config.metrics_addr, Routes::METRICS)?, bind_http(config.http_addr, Routes::WEB)?)
    };
    background.push(tokio::spawn(checkpoint_loop(
        store.clone(),
        config.checkpoint_every_entries,
        config.checkpoint_interval_ms,
    )));
    let quic = match config.quic_addr {
        Some(addr) => {
            let identity = crate::quic::load_or_create_identity(&config.data_dir)?;
            Some(crate::quic::serve_quic_on(
                store.clone(),
                hub.clone(),
                addr,
                identity,
                config.handshake_timeout_ms,
                obs.clone(),
                limits.clone(),
            )?)
        }
        None => None,
    };
    let webrtc_signal = http_addr.filter(|_| webrtc.is_some()).map(|a| format!("http://{a}/webrtc/offer"));
    Ok(Running {
        grpc_addr,
        metrics_addr,
        http_addr,
        webrtc_signal,
        webrtc,
        quic_addr: quic.as_ref().map(|q| q.addr),
        quic_fingerprint: quic.as_ref().map(|q| q.fingerprint.clone()),
        quic,
        store,
        closing: closing_tx,
        stop: Some(stop),
        server,
        background,
    })
}

/// Writes due checkpoints of every session, periodically.
async fn checkpoint_loop(store: Arc<Store>, every: u64, interval_ms: u64) {
    // The first pass comes one interval after start, not at once: a restarted server serves
    // before it folds sessions for their checkpoints.
    let period = Duration::from_millis(interval_ms.max(100));
    let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + period, period);
    loop {
        tick.tick().await;
        let store = store.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for head in store.sessions() {
                let last = store.checkpoint_at_or_below(&head.session, head.seq).ok().flatten().map_or(0, |(s, _)| s);
                if head.seq >= last + every {
                    let _ = write_checkpoints(&store, &head.session, every);
                }
            }
        })
        .await;
    }
}
