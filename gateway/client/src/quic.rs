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
use theta_schemas::wire::{Capabilities, CommandReceipt, Heartbeat, Welcome, WireError};
use theta_schemas::{Command, CommandBody, ComponentId, EntityId, Envelope, MAX_ENVELOPE_BYTES, Message, SessionId};

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
}

impl Framed<quinn::RecvStream> {
    async fn next(&mut self) -> Result<Option<Vec<u8>>, ClientError> {
        loop {
            if let Some(f) = self.pending.pop_front() {
                return Ok(Some(f));
            }
            match self.stream.read_chunk(MAX_ENVELOPE_BYTES, true).await.map_err(conn_err)? {
                None => return Ok(None),
                Some(chunk) => self
                    .pending
                    .extend(self.decoder.push(&chunk.bytes).map_err(|e| ClientError::Protocol(e.to_string()))?),
            }
        }
    }
}

/// A connected, handshaken client.
pub struct Client {
    conn: quinn::Connection,
    control_tx: quinn::SendStream,
    control_rx: Framed<quinn::RecvStream>,
    commands: Option<quinn::SendStream>,
    replication: Option<Framed<quinn::RecvStream>>,
    welcome: Welcome,
    key: SigningKey,
    session: SessionId,
    lamport: u64,
    assembler: Assembler,
    mirror: Option<Projection>,
    _endpoint: quinn::Endpoint,
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

impl Client {
    /// Connects and completes the handshake.
    pub async fn connect(o: Options) -> Result<Client, ClientError> {
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
        let mut control_rx =
            Framed { stream: rx, decoder: Decoder::new(MAX_ENVELOPE_BYTES), pending: Default::default() };
        let (mut hs, hello) = ClientHandshake::start(o.key.clone(), o.session, o.capabilities.clone(), rand::random());
        control_tx.write_all(&frame::encode(&hello)).await.map_err(conn_err)?;
        let welcome = loop {
            let msg = control_rx
                .next()
                .await?
                .ok_or_else(|| ClientError::Connection("closed during the handshake".into()))?;
            match hs.on_message(&msg)? {
                ClientStep::Send(p) => control_tx.write_all(&frame::encode(&p)).await.map_err(conn_err)?,
                ClientStep::Done(w) => break w,
            }
        };
        Ok(Client {
            conn,
            control_tx,
            control_rx,
            commands: None,
            replication: None,
            lamport: welcome.lamport_clock,
            welcome,
            key: o.key,
            session: o.session,
            assembler: Assembler::new(),
            mirror: None,
            _endpoint: endpoint,
        })
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
        self.commands.as_mut().expect("opened").write_all(&frame::encode(&envelope)).await.map_err(conn_err)?;
        Ok(nonce)
    }

    /// Sends a heartbeat; its answer arrives as [`Event::Rtt`].
    pub async fn heartbeat(&mut self) -> Result<(), ClientError> {
        let hb = Message::Heartbeat(Heartbeat { sequence: 0, sent_at_us: now_us(), echo_us: 0 }).encode();
        self.control_tx.write_all(&frame::encode(&hb)).await.map_err(conn_err)
    }

    /// The next event: a receipt, a rejection, a mirror update or a round-trip time.
    pub async fn next_event(&mut self) -> Result<Event, ClientError> {
        loop {
            let replication = async {
                match self.replication.as_mut() {
                    Some(r) => r.next().await,
                    None => {
                        let s = self.conn.accept_uni().await.map_err(conn_err)?;
                        self.replication = Some(Framed {
                            stream: s,
                            decoder: Decoder::new(MAX_ENVELOPE_BYTES),
                            pending: Default::default(),
                        });
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
                        Message::Heartbeat(h) => return Ok(Event::Rtt(Duration::from_micros(now_us().saturating_sub(h.echo_us)))),
                        other => return Err(ClientError::Protocol(format!("unexpected {other:?} on the control stream"))),
                    }
                }
                frame = replication => {
                    let Some(bytes) = frame? else { return Err(ClientError::Connection("replication stream closed".into())) };
                    if bytes.is_empty() {
                        continue; // the stream was just accepted
                    }
                    if let Some(event) = self.on_replication(&bytes)? {
                        return Ok(event);
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
                Ok(Some(Event::Synced { seq: d.to_seq, snapshot: false }))
            }
            other => Err(ClientError::Protocol(format!("unexpected {other:?} on the replication stream"))),
        }
    }
}
