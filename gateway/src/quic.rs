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

fn server_capabilities() -> Capabilities {
    Capabilities { compression: vec![], interest_management: false, max_chunk_bytes: 16 * 1024, datagrams: false }
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
        let frames = match decoder.push(&chunk.bytes) {
            Ok(f) => f,
            Err(e) => {
                let reject = Reject::Unexpected("oversized or empty frame");
                let _ = control_tx.write_all(&frame::encode(&reject.to_frame())).await;
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
    // One writer owns the control stream; receipts and errors queue to it (bounded).
    let (out_tx, mut out_rx) = mpsc::channel::<Vec<u8>>(1_024);
    let writer = tokio::spawn(async move {
        while let Some(payload) = out_rx.recv().await {
            if control_tx.write_all(&frame::encode(&payload)).await.is_err() {
                break;
            }
        }
    });
    // Replication: a server-opened stream with the snapshot, then deltas in seq order.
    if let Ok(mut frames) = hub.subscribe(accepted.session) {
        let conn = conn.clone();
        tokio::spawn(async move {
            let Ok(mut stream) = conn.open_uni().await else { return };
            while let Some(payload) = frames.recv().await {
                if stream.write_all(&frame::encode(&payload)).await.is_err() {
                    return;
                }
            }
        });
    }
    // The client's heartbeats on the control stream are answered with an echo of their
    // timestamp, so both sides can measure the round trip.
    {
        let (out_tx, conn) = (out_tx.clone(), conn.clone());
        tokio::spawn(async move {
            let mut decoder = Decoder::new(MAX_ENVELOPE_BYTES);
            let mut sequence = 0u64;
            while let Ok(Some(chunk)) = control_rx.read_chunk(MAX_ENVELOPE_BYTES, true).await {
                let Ok(frames) = decoder.push(&chunk.bytes) else {
                    conn.close(7u32.into(), b"bad frame on the control stream");
                    return;
                };
                for f in frames {
                    match Message::decode(&f) {
                        Ok(Message::Heartbeat(h)) => {
                            sequence += 1;
                            let now_us =
                                SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64);
                            let reply = Heartbeat { sequence, sent_at_us: now_us, echo_us: h.sent_at_us };
                            if out_tx.send(Message::Heartbeat(reply).encode()).await.is_err() {
                                return;
                            }
                        }
                        _ => {
                            conn.close(7u32.into(), b"unexpected message on the control stream");
                            return;
                        }
                    }
                }
            }
        });
    }
    // Commands arrive on unidirectional streams opened by the client.
    while let Ok(mut stream) = conn.accept_uni().await {
        let (store, out_tx, conn) = (store.clone(), out_tx.clone(), conn.clone());
        let session = accepted.session;
        tokio::spawn(async move {
            let mut decoder = Decoder::new(MAX_ENVELOPE_BYTES);
            loop {
                let chunk = match stream.read_chunk(MAX_ENVELOPE_BYTES, true).await {
                    Ok(Some(c)) => c,
                    _ => return,
                };
                let frames = match decoder.push(&chunk.bytes) {
                    Ok(f) => f,
                    Err(e) => {
                        conn.close(7u32.into(), e.to_string().as_bytes());
                        return;
                    }
                };
                for envelope in frames {
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
                        let _ = out_tx.send(Message::Error(e).encode()).await;
                        continue;
                    }
                    let out = out_tx.clone();
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
            }
        });
    }
    drop(out_tx);
    let _ = writer.await;
}

/// A rejected command as an error message on the control stream.
pub fn command_error(e: &AppendError, nonce: u64) -> WireError {
    WireError { code: COMMAND_ERROR_BASE + e.code() as u32, reason: format!("{}: {e}", e.code().counter()), nonce }
}
