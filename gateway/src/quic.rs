//! The QUIC endpoint (ALPN `theta/1`): handshake on the control stream, signed commands on a
//! client-opened unidirectional stream, receipts and errors back on the control stream.
//!
//! TLS comes from the configured certificate or from a self-signed one made at first start and
//! kept in the data directory (`quic-cert.der`, `quic-key.der`); its SHA-256 fingerprint is
//! logged so clients can pin it. 0-RTT is never accepted (early data could be replayed).
//! Replication streams (snapshots and deltas to viewers) come with the streaming issue.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use theta_live::frame;
use theta_schemas::Message;
use theta_schemas::wire::{Capabilities, CommandReceipt, WireError};
use theta_store::{AppendError, Store};
use theta_transport::read_quic;
use tokio::sync::mpsc;

use std::sync::atomic::Ordering::Relaxed;
use theta_live::compress;

use crate::webrtc::bytes_in;
use theta_schemas::SessionId;

/// The ALPN protocol id.
pub const ALPN: &[u8] = b"theta/1";
/// Error codes on the control stream for rejected commands: 100 + the store's reason code.
pub const COMMAND_ERROR_BASE: u32 = 100;

/// Why the QUIC endpoint could not start.
#[derive(Debug, thiserror::Error)]
pub enum QuicError {
    /// Certificate files or generation failed.
    #[error("QUIC certificate: {0}")]
    Certificate(String),
    /// TLS configuration failed.
    #[error("QUIC TLS: {0}")]
    Tls(String),
    /// The socket could not be bound.
    #[error("bind QUIC on {addr}: {source}")]
    Bind {
        /// The address.
        addr: SocketAddr,
        /// Why.
        #[source]
        source: std::io::Error,
    },
}

/// The endpoint's certificate, its key, and the certificate's SHA-256 fingerprint (hex).
pub struct Identity {
    /// DER certificate.
    pub cert: CertificateDer<'static>,
    /// DER PKCS#8 private key.
    pub key: PrivatePkcs8KeyDer<'static>,
    /// SHA-256 of the DER certificate, hex.
    pub fingerprint: String,
}

/// Loads `quic-cert.der`/`quic-key.der` from `dir`, or makes a self-signed pair for
/// `localhost` and `127.0.0.1` and keeps it there.
pub fn load_or_create_identity(dir: &Path) -> Result<Identity, QuicError> {
    let (cert_path, key_path) = (dir.join("quic-cert.der"), dir.join("quic-key.der"));
    let err = |e: &dyn std::fmt::Display| QuicError::Certificate(e.to_string());
    let (cert, key) = if cert_path.exists() && key_path.exists() {
        (std::fs::read(&cert_path).map_err(|e| err(&e))?, std::fs::read(&key_path).map_err(|e| err(&e))?)
    } else {
        let made =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()]).map_err(|e| err(&e))?;
        let (cert, key) = (made.cert.der().to_vec(), made.signing_key.serialize_der());
        std::fs::create_dir_all(dir).map_err(|e| err(&e))?;
        std::fs::write(&cert_path, &cert).map_err(|e| err(&e))?;
        let mut opts = std::fs::OpenOptions::new();
        opts.write(true).create(true).truncate(true);
        #[cfg(unix)]
        std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
        std::io::Write::write_all(&mut opts.open(&key_path).map_err(|e| err(&e))?, &key).map_err(|e| err(&e))?;
        (cert, key)
    };
    let fingerprint = hex::encode(Sha256::digest(&cert));
    Ok(Identity { cert: CertificateDer::from(cert), key: PrivatePkcs8KeyDer::from(key), fingerprint })
}

/// A running QUIC endpoint.
pub struct QuicServer {
    /// The live projections and their viewers.
    pub hub: Arc<crate::live::LiveHub>,
    /// The bound address.
    pub addr: SocketAddr,
    /// The certificate fingerprint clients can pin.
    pub fingerprint: String,
    endpoint: quinn::Endpoint,
    task: tokio::task::JoinHandle<()>,
}

impl QuicServer {
    /// Closes every connection and stops accepting.
    pub async fn shutdown(self) {
        self.endpoint.close(0u32.into(), b"server shutting down");
        self.task.abort();
        let _ = tokio::time::timeout(Duration::from_secs(2), self.endpoint.wait_idle()).await;
    }
}

/// Starts the QUIC endpoint on `addr` with `identity`.
pub fn serve_quic(
    store: Arc<Store>,
    addr: SocketAddr,
    identity: Identity,
    handshake_timeout_ms: u64,
) -> Result<QuicServer, QuicError> {
    serve_quic_with(store, addr, identity, handshake_timeout_ms, Arc::new(crate::metrics::Observability::default()))
}

/// Starts the QUIC endpoint, counting connections and refusals in `obs`.
pub fn serve_quic_with(
    store: Arc<Store>,
    addr: SocketAddr,
    identity: Identity,
    handshake_timeout_ms: u64,
    obs: Arc<crate::metrics::Observability>,
) -> Result<QuicServer, QuicError> {
    let hub = crate::live::LiveHub::new(store.clone());
    obs.attach_live(hub.clone());
    let limits = crate::peers::AddressLimits::new(crate::peers::AddressConfig::default());
    serve_quic_on(store, hub, addr, identity, handshake_timeout_ms, obs, limits)
}

/// Starts the QUIC endpoint fanning out through an existing hub (shared with WebRTC).
pub fn serve_quic_on(
    store: Arc<Store>,
    hub: Arc<crate::live::LiveHub>,
    addr: SocketAddr,
    identity: Identity,
    handshake_timeout_ms: u64,
    obs: Arc<crate::metrics::Observability>,
    limits: Arc<crate::peers::AddressLimits>,
) -> Result<QuicServer, QuicError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ServerConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(|e| QuicError::Tls(e.to_string()))?
        .with_no_client_auth()
        .with_single_cert(vec![identity.cert.clone()], PrivateKeyDer::Pkcs8(identity.key.clone_key()))
        .map_err(|e| QuicError::Tls(e.to_string()))?;
    tls.alpn_protocols = vec![ALPN.to_vec()];
    tls.max_early_data_size = 0; // never 0-RTT
    let crypto = QuicServerConfig::try_from(tls).map_err(|e| QuicError::Tls(e.to_string()))?;
    let config = quinn::ServerConfig::with_crypto(Arc::new(crypto));
    let endpoint = quinn::Endpoint::server(config, addr).map_err(|source| QuicError::Bind { addr, source })?;
    let bound = endpoint.local_addr().map_err(|source| QuicError::Bind { addr, source })?;
    let ep = endpoint.clone();
    let hub2 = hub.clone();
    let task = tokio::spawn(async move {
        while let Some(incoming) = ep.accept().await {
            // Per-address limits, before any handshake work is done for the peer.
            let permit = match limits.admit(incoming.remote_address().ip()) {
                Ok(p) => p,
                Err(reason) => {
                    obs.address_refused("quic", reason);
                    incoming.refuse();
                    continue;
                }
            };
            let (store, hub, obs) = (store.clone(), hub2.clone(), obs.clone());
            tokio::spawn(async move {
                // A peer that stalls its TLS handshake holds its half-open slot only this long.
                let limit = Duration::from_millis(handshake_timeout_ms);
                match tokio::time::timeout(limit, incoming).await {
                    Ok(Ok(conn)) => connection(store, hub, obs, conn, handshake_timeout_ms, permit).await,
                    Ok(Err(_)) => {}
                    Err(_) => obs.handshake_refused(6),
                }
            });
        }
    });
    Ok(QuicServer { hub, addr: bound, fingerprint: identity.fingerprint, endpoint, task })
}

/// What the server offers: zstd as a continuous stream, with a dictionary or per frame, interest
/// management, 16 KiB snapshot chunks, compact deltas; no datagrams.
pub fn server_capabilities() -> Capabilities {
    Capabilities {
        compression: vec![compress::ZSTD_STREAM.into(), compress::ZSTD_DICT.into(), compress::ZSTD.into()],
        interest_management: true,
        max_chunk_bytes: theta_projector::DEFAULT_CHUNK_BYTES as u32,
        datagrams: false,
        compact_deltas: true,
    }
}

/// Writes each payload `rx` brings framed on a QUIC send stream (the control stream), counting
/// bytes. Payloads already waiting are written together (up to 16 KiB), so a burst leaves in
/// as few packets as it fits.
async fn write_frames(
    mut stream: quinn::SendStream,
    mut rx: mpsc::Receiver<Vec<u8>>,
    stats: Arc<crate::metrics::ConnectionStats>,
) {
    while let Some(payload) = rx.recv().await {
        let mut bytes = frame::encode(&payload);
        while bytes.len() < 16 * 1024 {
            match rx.try_recv() {
                Ok(p) => frame::encode_into(&mut bytes, &p),
                Err(_) => break,
            }
        }
        if stream.write_all(&bytes).await.is_err() {
            return;
        }
        stats.bytes_out.fetch_add(bytes.len() as u64, Relaxed);
    }
    let _ = stream.finish();
}

/// A connection's replication stream (server unidirectional), opened with the first write;
/// the viewer's subscription writes to it directly, each burst in one write.
struct Replication {
    conn: quinn::Connection,
    stream: Option<quinn::SendStream>,
    stats: Arc<crate::metrics::ConnectionStats>,
}

#[async_trait::async_trait]
impl crate::link::ReplicationSink for Replication {
    async fn write(&mut self, payloads: &[Vec<u8>]) -> bool {
        if self.stream.is_none() {
            self.stream = self.conn.open_uni().await.ok();
        }
        let Some(stream) = self.stream.as_mut() else { return false };
        let mut bytes = Vec::with_capacity(payloads.iter().map(|p| p.len() + 4).sum());
        for p in payloads {
            frame::encode_into(&mut bytes, p);
        }
        if stream.write_all(&bytes).await.is_err() {
            return false;
        }
        self.stats.bytes_out.fetch_add(bytes.len() as u64, Relaxed);
        true
    }
}

/// One QUIC connection: the control stream (first bidirectional), command streams (client
/// unidirectional), the replication stream (server unidirectional, opened on first use),
/// adapted to a [`crate::link::Link`] and driven by [`crate::link::drive`].
async fn connection(
    store: Arc<Store>,
    hub: Arc<crate::live::LiveHub>,
    obs: Arc<crate::metrics::Observability>,
    conn: quinn::Connection,
    timeout_ms: u64,
    address: crate::peers::AddressPermit,
) {
    // A peer that never opens its control stream is closed like one that never says Hello.
    let control = tokio::time::timeout(Duration::from_millis(timeout_ms), conn.accept_bi()).await;
    let (control_tx, control_rx) = match control {
        Ok(Ok(streams)) => streams,
        Ok(Err(_)) => return,
        Err(_) => {
            obs.handshake_refused(6);
            conn.close(6u32.into(), b"handshake timeout");
            return;
        }
    };
    let stats = obs.new_connection("quic");
    let (control_in_tx, control_in) = mpsc::channel(64);
    let (commands_in_tx, commands_in) = mpsc::channel(256);
    let (control_out, control_out_rx) = mpsc::channel(1_024);
    let mut tasks = vec![
        tokio::spawn(read_quic(control_rx, control_in_tx, bytes_in(&stats))),
        tokio::spawn(write_frames(control_tx, control_out_rx, stats.clone())),
    ];
    {
        let (conn, stats) = (conn.clone(), stats.clone());
        tasks.push(tokio::spawn(async move {
            while let Ok(stream) = conn.accept_uni().await {
                tokio::spawn(read_quic(stream, commands_in_tx.clone(), bytes_in(&stats)));
            }
        }));
    }
    let close_conn = conn.clone();
    let link = crate::link::Link {
        transport: "quic",
        control_in,
        commands_in,
        control_out,
        replication: Box::new(Replication { conn: conn.clone(), stream: None, stats: stats.clone() }),
        stats,
        close: Arc::new(move |code, reason| close_conn.close(code.into(), reason.as_bytes())),
        address: Some(address),
    };
    crate::link::drive(store, hub, obs, link, timeout_ms).await;
    for t in tasks {
        t.abort();
    }
}

/// Submits one command envelope received live through the store's checks; its receipt or typed
/// error goes to `out` (the control stream), matched by nonce. Waits for room on `out` first.
pub async fn submit_command(store: &Store, session: SessionId, envelope: Vec<u8>, out: &mpsc::Sender<Vec<u8>>) {
    // A slot on the control stream is taken before the command goes in, so its receipt or
    // error always has room: a client that stops reading its control stream stops having its
    // commands read (backpressure), and never loses an answer. The store decodes the command
    // once (its verify stage): it refuses one naming another session than the connection's,
    // and answers with the command's nonce.
    let Ok(slot) = out.clone().reserve_owned().await else { return };
    store.submit_in(session, envelope, move |r, nonce| {
        let msg = match r {
            Ok(r) => Message::CommandReceipt(CommandReceipt {
                nonce: r.nonce,
                seq: r.seq,
                lamport: r.lamport,
                entry_hash: r.entry_hash,
                tree_size: r.tree_size,
                tree_root: r.tree_root,
            }),
            Err(e) => Message::Error(command_error(&e, nonce)),
        };
        slot.send(msg.encode());
    });
}

/// A rejected command as an error message on the control stream.
pub fn command_error(e: &AppendError, nonce: u64) -> WireError {
    WireError { code: COMMAND_ERROR_BASE + e.code() as u32, reason: format!("{}: {e}", e.code().counter()), nonce }
}
