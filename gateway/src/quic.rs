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
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use quinn::crypto::rustls::QuicServerConfig;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use sha2::{Digest, Sha256};
use theta_client::frame::{self, Decoder};
use theta_client::handshake::{Reject, ServerHandshake, ServerStep};
use theta_schemas::wire::{Capabilities, CommandReceipt, Heartbeat, WireError};
use theta_schemas::{Envelope, MAX_ENVELOPE_BYTES, Message};
use theta_store::{AppendError, ReadError, Store};
use tokio::sync::mpsc;

use crate::live::{Subscription, ViewerOptions};
use std::sync::atomic::Ordering::Relaxed;
use theta_client::compress::{self, Encoding};
use theta_projector::interest::Area;
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

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
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
            let (store, hub, obs) = (store.clone(), hub2.clone(), obs.clone());
            tokio::spawn(async move {
                if let Ok(conn) = incoming.await {
                    connection(store, hub, obs, conn, handshake_timeout_ms).await;
                }
            });
        }
    });
    Ok(QuicServer { hub, addr: bound, fingerprint: identity.fingerprint, endpoint, task })
}

/// What the server offers: zstd as a continuous stream, with a dictionary or per frame, interest management, 16 KiB
/// snapshot chunks; no datagrams.
pub fn server_capabilities() -> Capabilities {
    Capabilities {
        compression: vec![compress::ZSTD_STREAM.into(), compress::ZSTD_DICT.into(), compress::ZSTD.into()],
        interest_management: true,
        max_chunk_bytes: theta_projector::DEFAULT_CHUNK_BYTES as u32,
        datagrams: false,
    }
}

/// One connection: handshake, then commands.
async fn connection(
    store: Arc<Store>,
    hub: Arc<crate::live::LiveHub>,
    obs: Arc<crate::metrics::Observability>,
    conn: quinn::Connection,
    timeout_ms: u64,
) {
    let Ok((mut control_tx, mut control_rx)) = conn.accept_bi().await else { return };
    let mut hs = ServerHandshake::new(server_capabilities(), rand::random(), now_ms(), timeout_ms);
    let mut decoder = Decoder::new(MAX_ENVELOPE_BYTES);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    let mut hello_bytes = 0u64;
    let accepted = loop {
        let chunk = match tokio::time::timeout_at(deadline, control_rx.read_chunk(MAX_ENVELOPE_BYTES, true)).await {
            Err(_) => {
                if let Some(ServerStep::Close { error, .. }) = hs.poll_timeout(now_ms() + timeout_ms + 1) {
                    let _ = control_tx.write_all(&frame::encode(&error)).await;
                }
                conn.close(6u32.into(), b"handshake timeout");
                return;
            }
            Ok(Ok(Some(c))) => c,
            Ok(_) => return,
        };
        hello_bytes += chunk.bytes.len() as u64;
        let frames = match decoder.push(&chunk.bytes) {
            Ok(f) => f,
            Err(e) => {
                let reject = Reject::Unexpected("oversized or empty frame");
                let _ = control_tx.write_all(&frame::encode(&reject.to_frame())).await;
                obs.handshake_refused(7);
                conn.close(7u32.into(), e.to_string().as_bytes());
                return;
            }
        };
        let mut done = None;
        for f in frames {
            let step =
                hs.on_message(&f, now_ms(), |session, key| match (store.role(session, key), store.head(session)) {
                    (Ok((role, _)), Ok(head)) => Ok((role, head.seq, head.clock)),
                    (Err(ReadError::UnknownSession { .. }), _) | (_, Err(_)) | (Err(_), _) => {
                        Err(Reject::UnknownSession(*session))
                    }
                });
            match step {
                ServerStep::Send(bytes) => {
                    if control_tx.write_all(&frame::encode(&bytes)).await.is_err() {
                        return;
                    }
                }
                ServerStep::Done { welcome, accepted } => {
                    if control_tx.write_all(&frame::encode(&welcome)).await.is_err() {
                        return;
                    }
                    obs.quic_connected();
                    done = Some(accepted);
                    break;
                }
                ServerStep::Close { error, reject } => {
                    obs.handshake_refused(reject.code() as u32);
                    let _ = control_tx.write_all(&frame::encode(&error)).await;
                    let _ = control_tx.finish();
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    conn.close((reject.code() as u32).into(), reject.to_string().as_bytes());
                    return;
                }
            }
        }
        if let Some(a) = done {
            break a;
        }
    };
    let guard = obs.register_connection("quic", accepted.role);
    let stats = guard.stats.clone();
    stats.bytes_in.fetch_add(hello_bytes, Relaxed);
    // One writer owns the control stream; receipts, errors, heartbeats and stats queue to it.
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(1_024);
    let writer = {
        let stats = stats.clone();
        tokio::spawn(async move {
            while let Some(payload) = out_rx.recv().await {
                let bytes = frame::encode(&payload);
                if control_tx.write_all(&bytes).await.is_err() {
                    break;
                }
                stats.bytes_out.fetch_add(bytes.len() as u64, Relaxed);
            }
        })
    };
    let mut tasks = Vec::new();
    // Replication: a server-opened stream with the snapshot, then deltas in seq order.
    let options = ViewerOptions {
        encoding: Encoding::from_agreed(&accepted.capabilities.compression),
        interest: accepted.capabilities.interest_management,
        resume_seq: accepted.resume_seq,
        max_chunk_bytes: accepted.capabilities.max_chunk_bytes as usize,
    };
    let viewer = hub.subscribe_with(accepted.session, options).ok();
    let viewer_id = viewer.as_ref().map(|v| v.id);
    if let Some(Subscription { frames: mut queue, stats: vstats, .. }) = viewer {
        let _ = stats.viewer.set(vstats);
        let (conn, stats) = (conn.clone(), stats.clone());
        tasks.push(tokio::spawn(async move {
            let Ok(mut stream) = conn.open_uni().await else { return };
            while let Some(payload) = queue.recv().await {
                stats.queue_depth.store(queue.len() as u64, Relaxed);
                let bytes = frame::encode(&payload);
                if stream.write_all(&bytes).await.is_err() {
                    return;
                }
                stats.bytes_out.fetch_add(bytes.len() as u64, Relaxed);
            }
        }));
    }
    // Once a second: a heartbeat (the client echoes it: the server's RTT) and the stats message.
    {
        let (out_tx, stats) = (out_tx.clone(), stats.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(STATS_INTERVAL);
            let mut sequence = 0u64;
            loop {
                tick.tick().await;
                sequence += 1;
                let hb = Heartbeat { sequence, sent_at_us: now_us(), echo_us: 0 };
                let st = stats.sample();
                if out_tx.send(Message::Heartbeat(hb).encode()).await.is_err()
                    || out_tx.send(Message::Stats(st).encode()).await.is_err()
                {
                    return;
                }
            }
        }));
    }
    // The control stream after the handshake: heartbeats (answered with an echo, or an echo of
    // ours giving the RTT) and interest updates.
    {
        let (out_tx, conn, stats, hub, obs) = (out_tx.clone(), conn.clone(), stats.clone(), hub.clone(), obs.clone());
        let session = accepted.session;
        tasks.push(tokio::spawn(async move {
            let mut decoder = Decoder::new(MAX_ENVELOPE_BYTES);
            let mut sequence = 0u64;
            while let Ok(Some(chunk)) = control_rx.read_chunk(MAX_ENVELOPE_BYTES, true).await {
                stats.bytes_in.fetch_add(chunk.bytes.len() as u64, Relaxed);
                let Ok(frames) = decoder.push(&chunk.bytes) else {
                    obs.protocol_violation();
                    conn.close(7u32.into(), b"bad frame on the control stream");
                    return;
                };
                for f in frames {
                    match Message::decode(&f) {
                        Ok(Message::Heartbeat(h)) if h.echo_us != 0 => {
                            stats.rtt_us.store(now_us().saturating_sub(h.echo_us), Relaxed);
                        }
                        Ok(Message::Heartbeat(h)) => {
                            sequence += 1;
                            let reply = Heartbeat { sequence, sent_at_us: now_us(), echo_us: h.sent_at_us };
                            if out_tx.send(Message::Heartbeat(reply).encode()).await.is_err() {
                                return;
                            }
                        }
                        Ok(Message::Interest(i)) if viewer_id.is_some() && options.interest => {
                            let area = Area { center: i.center, radius: i.radius };
                            hub.set_interest(session, viewer_id.expect("viewer"), area);
                        }
                        _ => {
                            obs.protocol_violation();
                            conn.close(7u32.into(), b"unexpected message on the control stream");
                            return;
                        }
                    }
                }
            }
        }));
    }
    // Commands arrive on unidirectional streams opened by the client.
    while let Ok(mut stream) = conn.accept_uni().await {
        let (store, out_tx, conn, stats) = (store.clone(), out_tx.clone(), conn.clone(), stats.clone());
        let obs = obs.clone();
        let session = accepted.session;
        tasks.push(tokio::spawn(async move {
            let mut decoder = Decoder::new(MAX_ENVELOPE_BYTES);
            loop {
                let chunk = match stream.read_chunk(MAX_ENVELOPE_BYTES, true).await {
                    Ok(Some(c)) => c,
                    _ => return,
                };
                stats.bytes_in.fetch_add(chunk.bytes.len() as u64, Relaxed);
                let frames = match decoder.push(&chunk.bytes) {
                    Ok(f) => f,
                    Err(e) => {
                        obs.protocol_violation();
                        conn.close(7u32.into(), e.to_string().as_bytes());
                        return;
                    }
                };
                for envelope in frames {
                    submit_command(&store, session, envelope, &out_tx).await;
                }
            }
        }));
    }
    for t in tasks {
        t.abort();
    }
    drop(out_tx);
    let _ = writer.await;
    drop(guard);
}

/// Seconds between the server's heartbeats and stats messages.
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Submits one command envelope received live through the store's checks; its receipt or typed
/// error goes to `out` (the control stream), matched by nonce.
pub async fn submit_command(store: &Store, session: SessionId, envelope: Vec<u8>, out: &mpsc::Sender<Vec<u8>>) {
    let (nonce, named) = match Envelope::open(&envelope) {
        Ok((_, b)) => (b.nonce, Some(b.session)),
        Err(_) => (0, None),
    };
    if named.is_some_and(|s| s != session) {
        let e = WireError {
            code: COMMAND_ERROR_BASE + 2,
            reason: "command names another session than the handshake".into(),
            nonce,
        };
        let _ = out.send(Message::Error(e).encode()).await;
        return;
    }
    let out = out.clone();
    store.submit(envelope, move |r| {
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
        let _ = out.try_send(msg.encode());
    });
}

/// A rejected command as an error message on the control stream.
pub fn command_error(e: &AppendError, nonce: u64) -> WireError {
    WireError { code: COMMAND_ERROR_BASE + e.code() as u32, reason: format!("{}: {e}", e.code().counter()), nonce }
}
