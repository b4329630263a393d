//! The Rust client over QUIC: connect (pinning the server's certificate), handshake, submit
//! signed commands with automatic Lamport timestamps and nonces, and keep a mirror world from
//! the replication stream, checked against the server's state hash at every snapshot and delta.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ed25519_dalek::SigningKey;
use quinn::crypto::rustls::QuicClientConfig;
use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::{DigitallySignedStruct, SignatureScheme};
use sha2::{Digest, Sha256};
use theta_projector::{Assembler, Projection};
use theta_schemas::signing::author_key;
use theta_schemas::wire::{Capabilities, CommandReceipt, Heartbeat, Interest, Stats, Welcome, WireError};
use theta_schemas::{Command, CommandBody, ComponentId, EntityId, Envelope, MAX_ENVELOPE_BYTES, Message, SessionId};

use crate::compress::Decompressor;
use crate::frame::{self, Decoder};
use crate::handshake::{ClientHandshake, ClientStep, HandshakeError};

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
    /// The mirror diverged from the server (state hash mismatch).
    #[error("mirror out of sync: {0}")]
    OutOfSync(String),
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

struct Framed<S> {
    stream: S,
    decoder: Decoder,
    pending: std::collections::VecDeque<Vec<u8>>,
    bytes: u64,
}

impl<S> Framed<S> {
    fn new(stream: S) -> Framed<S> {
        Framed { stream, decoder: Decoder::new(MAX_ENVELOPE_BYTES), pending: Default::default(), bytes: 0 }
    }
}

impl Framed<quinn::RecvStream> {
    async fn next(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        loop {
            if let Some(f) = self.pending.pop_front() {
                return Ok(Some(f));
            }
            match self.stream.read_chunk(MAX_ENVELOPE_BYTES, true).await.map_err(conn_err)? {
                None => return Ok(None),
                Some(chunk) => {
                    self.bytes += chunk.bytes.len() as u64;
                    self.pending
                        .extend(self.decoder.push(&chunk.bytes).map_err(|e| ClientError::Protocol(e.to_string()))?)
                }
            }
        }
    }
}

/// A connected, handshaken client.
pub struct Client {
    options: Options,
    conn: quinn::Connection,
    control_tx: tokio::sync::mpsc::Sender<Vec<u8>>,
    control_rx: Framed<quinn::RecvStream>,
    commands: Option<quinn::SendStream>,
    replication: Option<Framed<quinn::RecvStream>>,
    welcome: Welcome,
    key: SigningKey,
    session: SessionId,
    lamport: u64,
    assembler: Assembler,
    mirror: Option<Projection>,
    decompressor: Decompressor,
    interest: Option<Interest>,
    telemetry: Telemetry,
    _endpoint: quinn::Endpoint,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl Client {
    /// Connects and completes the handshake.
    pub async fn connect(o: Options) -> Result<Client, ClientError> {
        let (endpoint, conn, control_tx, control_rx, welcome) = open(&o, 0).await?;
        Ok(Client {
            lamport: welcome.lamport_clock,
            conn,
            control_tx,
            control_rx,
            commands: None,
            replication: None,
            welcome,
            key: o.key.clone(),
            session: o.session,
            assembler: Assembler::new(),
            mirror: None,
            decompressor: Decompressor::new(),
            interest: None,
            telemetry: Telemetry { transport: "quic", ..Telemetry::default() },
            options: o,
            _endpoint: endpoint,
        })
    }

    /// Re-establishes the connection (after a network failure, or on request), keeping the
    /// mirror: the server sends the deltas after the mirror's seq when it still has them,
    /// otherwise a fresh snapshot. The area of interest is restated.
    pub async fn reconnect(&mut self) -> Result<(), ClientError> {
        let resume = self.mirror.as_ref().map_or(0, |m| m.seq());
        self.reopen(resume).await
    }

    /// Closes the connection at once, keeping the mirror (see [`Client::reconnect`]).
    pub fn disconnect(&self) {
        self.conn.close(0u32.into(), b"client disconnected");
    }

    /// Drops the mirror and reconnects for a fresh snapshot.
    pub async fn resync(&mut self) -> Result<(), ClientError> {
        self.mirror = None;
        self.telemetry.resyncs += 1;
        self.reopen(0).await
    }

    async fn reopen(&mut self, resume_seq: u64) -> Result<(), ClientError> {
        self.conn.close(0u32.into(), b"reconnecting");
        let (endpoint, conn, control_tx, control_rx, welcome) = open(&self.options, resume_seq).await?;
        self.lamport = self.lamport.max(welcome.lamport_clock);
        self.telemetry.bytes_in += self.control_rx.bytes + self.replication.as_ref().map_or(0, |r| r.bytes);
        (self._endpoint, self.conn, self.control_tx, self.control_rx, self.welcome) =
            (endpoint, conn, control_tx, control_rx, welcome);
        self.commands = None;
        self.replication = None;
        self.assembler = Assembler::new();
        self.decompressor = Decompressor::new();
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
        let bytes = frame::encode(&m.encode());
        self.telemetry.bytes_out += bytes.len() as u64;
        self.control_tx.send(bytes).await.map_err(|_| ClientError::Connection("control stream closed".into()))
    }

    /// What the client measured, with the server's last stats.
    pub fn telemetry(&self) -> Telemetry {
        let mut t = self.telemetry.clone();
        t.bytes_in += self.control_rx.bytes + self.replication.as_ref().map_or(0, |r| r.bytes);
        t.compressed_bytes = (self.decompressor.compressed_bytes, self.decompressor.raw_bytes);
        t
    }

    /// The server's welcome (role, head seq, agreed capabilities).
    pub fn welcome(&self) -> &Welcome {
        &self.welcome
    }

    /// The mirror world, once the first snapshot has arrived.
    pub fn mirror(&self) -> Option<&Projection> {
        self.mirror.as_ref()
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
        if self.commands.is_none() {
            self.commands = Some(self.conn.open_uni().await.map_err(conn_err)?);
        }
        let bytes = frame::encode(&envelope);
        self.telemetry.bytes_out += bytes.len() as u64;
        self.commands.as_mut().expect("opened").write_all(&bytes).await.map_err(conn_err)?;
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
            let replication = async {
                match self.replication.as_mut() {
                    Some(r) => r.next().await,
                    None => {
                        let s = self.conn.accept_uni().await.map_err(conn_err)?;
                        self.replication = Some(Framed::new(s));
                        Ok(Some(Vec::new()))
                    }
                }
            };
            tokio::select! {
                control = self.control_rx.next() => {
                    let msg = control?.ok_or_else(|| ClientError::Connection("control stream closed".into()))?;
                    match Message::decode(&msg).map_err(|e| ClientError::Protocol(e.to_string()))? {
                        Message::CommandReceipt(r) => {
                            self.lamport = self.lamport.max(r.lamport);
                            return Ok(Event::Receipt(r));
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
                frame = replication => {
                    let Some(bytes) = frame? else { return Err(ClientError::Connection("replication stream closed".into())) };
                    if bytes.is_empty() {
                        continue; // the stream was just accepted
                    }
                    let Some(bytes) = self.decompressor.open(bytes).map_err(|e| ClientError::Protocol(e.to_string()))? else {
                        continue; // a dictionary
                    };
                    match self.on_replication(&bytes) {
                        Ok(Some(event)) => return Ok(event),
                        Ok(None) => {}
                        Err(ClientError::OutOfSync(reason)) => {
                            self.resync().await?;
                            return Ok(Event::Resynced { reason });
                        }
                        Err(e) => return Err(e),
                    }
                }
            }
        }
    }

    fn on_replication(&mut self, bytes: &[u8]) -> Result<Option<Event>, ClientError> {
        match Message::decode(bytes).map_err(|e| ClientError::Protocol(e.to_string()))? {
            Message::SnapshotChunk(c) => {
                if c.chunk_index == 0 {
                    self.assembler = Assembler::new();
                }
                match self.assembler.add(c).map_err(|e| ClientError::OutOfSync(e.to_string()))? {
                    Some(p) => {
                        let seq = p.seq();
                        self.telemetry.snapshots += 1;
                        self.mirror = Some(p);
                        self.assembler = Assembler::new();
                        Ok(Some(Event::Synced { seq, snapshot: true }))
                    }
                    None => Ok(None),
                }
            }
            Message::Delta(d) => {
                let mirror =
                    self.mirror.as_mut().ok_or_else(|| ClientError::Protocol("delta before any snapshot".into()))?;
                mirror.apply_delta(&d).map_err(|e| ClientError::OutOfSync(e.to_string()))?;
                self.telemetry.deltas += 1;
                Ok(Some(Event::Synced { seq: d.to_seq, snapshot: false }))
            }
            other => Err(ClientError::Protocol(format!("unexpected {other:?} on the replication stream"))),
        }
    }
}

type Opened =
    (quinn::Endpoint, quinn::Connection, tokio::sync::mpsc::Sender<Vec<u8>>, Framed<quinn::RecvStream>, Welcome);

/// Connects, opens the control stream and runs the handshake.
async fn open(o: &Options, resume_seq: u64) -> Result<Opened, ClientError> {
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
    let (mut control_tx, rx) = conn.open_bi().await.map_err(conn_err)?;
    let mut control_rx = Framed::new(rx);
    let (mut hs, hello) =
        ClientHandshake::resume(o.key.clone(), o.session, o.capabilities.clone(), rand::random(), resume_seq);
    control_tx.write_all(&frame::encode(&hello)).await.map_err(conn_err)?;
    let welcome = loop {
        let msg =
            control_rx.next().await?.ok_or_else(|| ClientError::Connection("closed during the handshake".into()))?;
        match hs.on_message(&msg)? {
            ClientStep::Send(p) => control_tx.write_all(&frame::encode(&p)).await.map_err(conn_err)?,
            ClientStep::Done(w) => break w,
        }
    };
    // After the handshake one task owns the control stream's writing side, so that
    // `next_event` (which echoes heartbeats) stays cancel-safe.
    let (tx, mut rx) = tokio::sync::mpsc::channel::<Vec<u8>>(64);
    tokio::spawn(async move {
        while let Some(bytes) = rx.recv().await {
            if control_tx.write_all(&bytes).await.is_err() {
                return;
            }
        }
    });
    Ok((endpoint, conn, tx, control_rx, welcome))
}
