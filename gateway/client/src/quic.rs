//! The Rust client over QUIC: connect (pinning the server's certificate), handshake, submit
//! signed commands with automatic Lamport timestamps and nonces, and keep a mirror world from
//! the replication stream, checked against the server's state hash at every snapshot and delta.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::sync::mpsc;

use ed25519_dalek::SigningKey;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use theta_projector::Projection;
use theta_schemas::signing::author_key;
use theta_schemas::wire::{Capabilities, CommandReceipt, Heartbeat, Interest, Stats, Welcome, WireError};
use theta_schemas::{Command, CommandBody, ComponentId, EntityId, Envelope, Message, SessionId};

use crate::frame;
use crate::handshake::{ClientHandshake, ClientStep, CloseCode, HandshakeError};
use crate::mirror::{Mirror, MirrorError, Synced};
use theta_transport::read_quic;

/// The ALPN protocol id.
pub const ALPN: &[u8] = b"theta/1";

/// How the client trusts the server's certificate.
#[derive(Debug, Clone)]
pub enum Trust {
    /// Exactly the certificate with this SHA-256 fingerprint (as `theta serve` logs it).
    Fingerprint([u8; 32]),
    /// Certificates signed by (or equal to) this DER certificate, for the given server name.
    Certificate(Vec<u8>),
}

/// Where and how to connect.
#[derive(Debug, Clone)]
pub struct Options {
    /// The server's QUIC address.
    pub server: SocketAddr,
    /// The name the certificate must carry (with [`Trust::Certificate`]).
    pub server_name: String,
    /// Trust anchor.
    pub trust: Trust,
    /// The client's key.
    pub key: SigningKey,
    /// The session to join.
    pub session: SessionId,
    /// Offered capabilities.
    pub capabilities: Capabilities,
    /// Which transport to use.
    pub transport: TransportChoice,
    /// The server's WebRTC signalling URL, e.g. `http://127.0.0.1:50053/webrtc/offer` (for
    /// [`TransportChoice::WebRtc`] and the fallback of [`TransportChoice::Auto`]).
    pub webrtc_signal: Option<String>,
}

/// Which transport a client uses.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum TransportChoice {
    /// QUIC only.
    #[default]
    Quic,
    /// WebRTC data channels only.
    WebRtc,
    /// QUIC first; WebRTC when QUIC has not connected within the timeout.
    Auto {
        /// How long QUIC may take.
        quic_timeout: Duration,
    },
}

/// Why the client failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// Connecting or a stream failed.
    #[error("connection: {0}")]
    Connection(String),
    /// The handshake failed.
    #[error(transparent)]
    Handshake(#[from] HandshakeError),
    /// The server sent bad framing or bytes.
    #[error("protocol: {0}")]
    Protocol(String),
}

fn conn_err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Connection(e.to_string())
}

/// Something that happened on the connection.
#[derive(Debug, Clone, PartialEq)]
pub enum Event {
    /// A submitted command was accepted.
    Receipt(CommandReceipt),
    /// A submitted command was rejected (`code` = 100 + reason code, `nonce` = the command's).
    Rejected(WireError),
    /// The mirror reached `seq` and its state hash matches the server's.
    Synced {
        /// The mirror's seq.
        seq: u64,
        /// Whether this came from a (re)snapshot rather than a delta.
        snapshot: bool,
    },
    /// A heartbeat answer: the round-trip time.
    Rtt(Duration),
    /// The server's telemetry for this connection (once a second).
    Stats(Stats),
    /// The mirror diverged from the server's state hash and was replaced by a fresh snapshot
    /// over a new connection.
    Resynced {
        /// Why.
        reason: String,
    },
    /// The server's live stream of the session failed (close code 8); the client reconnected,
    /// keeping its mirror, and the server resumes it from its seq.
    Restarted {
        /// The server's reason.
        reason: String,
    },
}

/// What the client measured on its side of the connection.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Telemetry {
    /// Bytes received (frames, with headers).
    pub bytes_in: u64,
    /// Bytes sent.
    pub bytes_out: u64,
    /// Deltas applied to the mirror.
    pub deltas: u64,
    /// Snapshots applied.
    pub snapshots: u64,
    /// Last round trip from the client's heartbeats.
    pub rtt: Option<Duration>,
    /// Replication bytes received compressed, and their size decompressed.
    pub compressed_bytes: (u64, u64),
    /// Times the connection was re-established (resume or resync).
    pub reconnects: u64,
    /// Mirror mismatches repaired by a fresh snapshot.
    pub resyncs: u64,
    /// The server's last stats message.
    pub server: Option<Stats>,
    /// `quic`.
    pub transport: &'static str,
}

#[derive(Debug)]
struct Pinned {
    sha256: [u8; 32],
    provider: Arc<rustls::crypto::CryptoProvider>,
}

impl ServerCertVerifier for Pinned {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        if Sha256::digest(end_entity.as_ref())[..] == self.sha256 {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(rustls::Error::General("server certificate does not match the pinned fingerprint".into()))
        }
    }
    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls12_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        rustls::crypto::verify_tls13_signature(message, cert, dss, &self.provider.signature_verification_algorithms)
    }
    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.provider.signature_verification_algorithms.supported_schemes()
    }
}

/// One connection's channels, whatever the transport: frame payloads in and out (the
/// transport does the framing and its guard).
pub(crate) struct Link {
    pub(crate) transport: &'static str,
    pub(crate) control_in: mpsc::Receiver<Result<Vec<u8>, crate::frame::FrameError>>,
    pub(crate) replication_in: mpsc::Receiver<Result<Vec<u8>, crate::frame::FrameError>>,
    pub(crate) control_out: mpsc::Sender<Vec<u8>>,
    pub(crate) commands_out: mpsc::Sender<Vec<u8>>,
    pub(crate) bytes_in: Arc<AtomicU64>,
    pub(crate) bytes_out: Arc<AtomicU64>,
    pub(crate) close: Box<dyn Fn() + Send + Sync>,
    pub(crate) tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Drop for Link {
    fn drop(&mut self) {
        (self.close)();
        for t in &self.tasks {
            t.abort();
        }
    }
}

/// A connected, handshaken client.
pub struct Client {
    options: Options,
    link: Link,
    welcome: Welcome,
    key: SigningKey,
    session: SessionId,
    lamport: u64,
    mirror: Mirror,
    interest: Option<Interest>,
    telemetry: Telemetry,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl Client {
    /// Connects and completes the handshake.
    pub async fn connect(o: Options) -> Result<Client, ClientError> {
        let (link, welcome) = open(&o, 0).await?;
        let mut mirror = Mirror::new();
        mirror.new_connection(&welcome.capabilities);
        Ok(Client {
            lamport: welcome.lamport_clock,
            telemetry: Telemetry { transport: link.transport, ..Telemetry::default() },
            link,
            welcome,
            key: o.key.clone(),
            session: o.session,
            mirror,
            interest: None,
            options: o,
        })
    }

    /// Re-establishes the connection (after a network failure, or on request), keeping the
    /// mirror: the server sends the deltas after the mirror's seq when it still has them,
    /// otherwise a fresh snapshot. The area of interest is restated.
    pub async fn reconnect(&mut self) -> Result<(), ClientError> {
        let resume = self.mirror.seq();
        self.reopen(resume).await
    }

    /// Closes the connection at once, keeping the mirror (see [`Client::reconnect`]).
    pub fn disconnect(&self) {
        (self.link.close)();
    }

    /// Drops the mirror and reconnects for a fresh snapshot.
    pub async fn resync(&mut self) -> Result<(), ClientError> {
        self.mirror.clear();
        self.telemetry.resyncs += 1;
        self.reopen(0).await
    }

    async fn reopen(&mut self, resume_seq: u64) -> Result<(), ClientError> {
        (self.link.close)();
        let (link, welcome) = open(&self.options, resume_seq).await?;
        self.lamport = self.lamport.max(welcome.lamport_clock);
        self.telemetry.bytes_in += self.link.bytes_in.load(Relaxed);
        self.telemetry.bytes_out += self.link.bytes_out.load(Relaxed);
        self.telemetry.transport = link.transport;
        (self.link, self.welcome) = (link, welcome);
        self.mirror.new_connection(&self.welcome.capabilities);
        self.telemetry.reconnects += 1;
        if let Some(i) = self.interest {
            self.send_control(Message::Interest(i)).await?;
        }
        Ok(())
    }

    /// States (or moves) the area of interest: only entities within `radius` metres of
    /// `center` are streamed. Needs the interest-management capability.
    pub async fn set_interest(&mut self, center: [f32; 3], radius: f32) -> Result<(), ClientError> {
        if !self.welcome.capabilities.interest_management {
            return Err(ClientError::Protocol("interest management was not negotiated".into()));
        }
        let i = Interest { center, radius };
        self.interest = Some(i);
        self.send_control(Message::Interest(i)).await
    }

    async fn send_control(&mut self, m: Message) -> Result<(), ClientError> {
        self.link
            .control_out
            .send(m.encode())
            .await
            .map_err(|_| ClientError::Connection("control channel closed".into()))
    }

    /// What the client measured, with the server's last stats.
    pub fn telemetry(&self) -> Telemetry {
        let mut t = self.telemetry.clone();
        t.bytes_in += self.link.bytes_in.load(Relaxed);
        t.bytes_out += self.link.bytes_out.load(Relaxed);
        t.compressed_bytes = self.mirror.compression();
        t
    }

    /// The server's welcome (role, head seq, agreed capabilities).
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The mirror world, once the first snapshot has arrived.
    pub fn mirror(&self) -> Option<&Projection> {
        self.mirror.projection()
    }

    /// The highest seq of the mirror the server said is durable (below the mirror's seq only
    /// under ordered visibility, see [`Mirror::durable_seq`]).
    pub fn durable_seq(&self) -> u64 {
        self.mirror.durable_seq()
    }

    /// Signs and sends a command with the next Lamport timestamp and a fresh random nonce;
    /// returns the nonce (receipts and rejections carry it).
    pub async fn submit(
        &mut self,
        entity: EntityId,
        component: ComponentId,
        base_version: u64,
        command: Command,
    ) -> Result<u64, ClientError> {
        self.lamport += 1;
        let nonce: u64 = rand::random();
        let body = CommandBody {
            session: self.session,
            author: author_key(&self.key),
            lamport: self.lamport,
            nonce,
            wall_clock_ms: now_us() / 1_000,
            entity,
            component,
            base_version,
            command,
        };
        let envelope = Envelope::sign(&body, &self.key).encode();
        self.link
            .commands_out
            .send(envelope)
            .await
            .map_err(|_| ClientError::Connection("command channel closed".into()))?;
        Ok(nonce)
    }

    /// Sends a heartbeat; its answer arrives as [`Event::Rtt`].
    pub async fn heartbeat(&mut self) -> Result<(), ClientError> {
        self.send_control(Message::Heartbeat(Heartbeat { sequence: 0, sent_at_us: now_us(), echo_us: 0 })).await
    }

    /// The next event: a receipt, a rejection, a mirror update or a round-trip time.
    /// Cancel-safe: dropping the future loses nothing (so it can race a timer).
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        loop {
            tokio::select! {
                control = self.link.control_in.recv() => {
                    let msg = control
                        .ok_or_else(|| ClientError::Connection("control channel closed".into()))?
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    match Message::decode(&msg).map_err(|e| ClientError::Protocol(e.to_string()))? {
                        Message::CommandReceipt(r) => {
                            self.lamport = self.lamport.max(r.lamport);
                            return Ok(Event::Receipt(r));
                        }
                        Message::Error(e) if e.nonce == 0 && e.code == CloseCode::LiveRestart as u32 => {
                            self.reconnect().await?;
                            return Ok(Event::Restarted { reason: e.reason });
                        }
                        Message::Error(e) => return Ok(Event::Rejected(e)),
                        Message::Heartbeat(h) if h.echo_us != 0 => {
                            let rtt = Duration::from_micros(now_us().saturating_sub(h.echo_us));
                            self.telemetry.rtt = Some(rtt);
                            return Ok(Event::Rtt(rtt));
                        }
                        Message::Heartbeat(h) => {
                            // The server measures its RTT from our echo.
                            let echo = Heartbeat { sequence: h.sequence, sent_at_us: now_us(), echo_us: h.sent_at_us };
                            self.send_control(Message::Heartbeat(echo)).await?;
                        }
                        Message::Stats(st) => {
                            self.telemetry.server = Some(st.clone());
                            return Ok(Event::Stats(st));
                        }
                        other => return Err(ClientError::Protocol(format!("unexpected {other:?} on the control stream"))),
                    }
                }
                frame = self.link.replication_in.recv() => {
                    let bytes = frame
                        .ok_or_else(|| ClientError::Connection("replication channel closed".into()))?
                        .map_err(|e| ClientError::Protocol(e.to_string()))?;
                    match self.mirror.handle_frame(bytes) {
                        Ok(Some(synced)) => {
                            let (seq, snapshot) = match synced {
                                Synced::Snapshot { seq } => {
                                    self.telemetry.snapshots += 1;
                                    (seq, true)
                                }
                                Synced::Delta { seq, .. } => {
                                    self.telemetry.deltas += 1;
                                    (seq, false)
                                }
                            };
                            return Ok(Event::Synced { seq, snapshot });
                        }
                        Ok(None) => {}
                        Err(MirrorError::OutOfSync(reason)) => {
                            self.resync().await?;
                            return Ok(Event::Resynced { reason });
                        }
                        Err(MirrorError::Protocol(e)) => return Err(ClientError::Protocol(e)),
                    }
                }
            }
        }
    }
}

/// Opens a link on the chosen transport and runs the handshake over it.
async fn open(o: &Options, resume_seq: u64) -> Result<(Link, Welcome), ClientError> {
    let mut link = match o.transport {
        TransportChoice::Quic => open_quic(o).await?,
        TransportChoice::WebRtc => crate::webrtc::open(o).await?,
        TransportChoice::Auto { quic_timeout } => match tokio::time::timeout(quic_timeout, open_quic(o)).await {
            Ok(Ok(link)) => link,
            _ if o.webrtc_signal.is_some() => crate::webrtc::open(o).await?,
            Ok(Err(e)) => return Err(e),
            Err(_) => {
                return Err(ClientError::Connection(
                    "QUIC did not connect in time and no WebRTC fallback is set".into(),
                ));
            }
        },
    };
    let (mut hs, hello) =
        ClientHandshake::resume(o.key.clone(), o.session, o.capabilities.clone(), rand::random(), resume_seq);
    link.control_out.send(hello).await.map_err(|_| ClientError::Connection("closed during the handshake".into()))?;
    let welcome = loop {
        let msg = link
            .control_in
            .recv()
            .await
            .ok_or_else(|| ClientError::Connection("closed during the handshake".into()))?
            .map_err(|e| ClientError::Protocol(e.to_string()))?;
        match hs.on_message(&msg)? {
            ClientStep::Send(p) => link
                .control_out
                .send(p)
                .await
                .map_err(|_| ClientError::Connection("closed during the handshake".into()))?,
            ClientStep::Done(w) => break w,
        }
    };
    Ok((link, welcome))
}

/// Connects over QUIC: the control stream (bidirectional), a command stream and the server's
/// replication stream, each pumped through the link's channels.
async fn open_quic(o: &Options) -> Result<Link, ClientError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let builder = rustls::ClientConfig::builder_with_provider(provider.clone())
        .with_protocol_versions(&[&rustls::version::TLS13])
        .map_err(conn_err)?;
    let mut tls = match &o.trust {
        Trust::Fingerprint(sha256) => builder
            .dangerous()
            .with_custom_certificate_verifier(Arc::new(Pinned { sha256: *sha256, provider }))
            .with_no_client_auth(),
        Trust::Certificate(der) => {
            let mut roots = rustls::RootCertStore::empty();
            roots.add(CertificateDer::from(der.clone())).map_err(conn_err)?;
            builder.with_root_certificates(roots).with_no_client_auth()
        }
    };
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let bind: SocketAddr = if o.server.is_ipv4() { "0.0.0.0:0" } else { "[::]:0" }.parse().expect("address");
    let mut endpoint = quinn::Endpoint::client(bind).map_err(conn_err)?;
    endpoint.set_default_client_config(quinn::ClientConfig::new(Arc::new(
        QuicClientConfig::try_from(tls).map_err(conn_err)?,
    )));
    let conn = endpoint.connect(o.server, &o.server_name).map_err(conn_err)?.await.map_err(conn_err)?;
    let (mut control_tx, control_rx) = conn.open_bi().await.map_err(conn_err)?;
    let (bytes_in, bytes_out) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (control_in_tx, control_in) = mpsc::channel(256);
    let (replication_in_tx, replication_in) = mpsc::channel(256);
    let (control_out, mut control_out_rx) = mpsc::channel::<Vec<u8>>(64);
    let (commands_out, mut commands_out_rx) = mpsc::channel::<Vec<u8>>(256);
    let mut tasks = Vec::new();
    tasks.push(tokio::spawn(read_quic(control_rx, control_in_tx, bytes_in.clone())));
    // The server opens the replication stream right after the welcome.
    let (c, b) = (conn.clone(), bytes_in.clone());
    tasks.push(tokio::spawn(async move {
        let Ok(stream) = c.accept_uni().await else { return };
        read_quic(stream, replication_in_tx, b).await;
    }));
    let b = bytes_out.clone();
    tasks.push(tokio::spawn(async move {
        while let Some(p) = control_out_rx.recv().await {
            let bytes = frame::encode(&p);
            if control_tx.write_all(&bytes).await.is_err() {
                return;
            }
            b.fetch_add(bytes.len() as u64, Relaxed);
        }
    }));
    let (c, b) = (conn.clone(), bytes_out.clone());
    tasks.push(tokio::spawn(async move {
        let Some(first) = commands_out_rx.recv().await else { return };
        let Ok(mut stream) = c.open_uni().await else { return };
        let mut next = Some(first);
        while let Some(p) = next {
            let bytes = frame::encode(&p);
            if stream.write_all(&bytes).await.is_err() {
                return;
            }
            b.fetch_add(bytes.len() as u64, Relaxed);
            next = commands_out_rx.recv().await;
        }
    }));
    let close_conn = conn.clone();
    Ok(Link {
        transport: "quic",
        control_in,
        replication_in,
        control_out,
        commands_out,
        bytes_in,
        bytes_out,
        close: Box::new(move || {
            close_conn.close(0u32.into(), b"client closed");
            let _ = &endpoint;
        }),
        tasks,
    })
}
