//! The handshake, as two sans-IO state machines (docs/PROTOCOL.md, "Handshake").
//!
//! ```text
//! client                                   server
//!   │ Hello {version, schema hash, client nonce,│
//!   │        public key, session, capabilities} │
//!   │ ─────────────────────────────────────────▶│ checks version and schema hash
//!   │          Challenge {server nonce, caps}   │
//!   │ ◀─────────────────────────────────────────│
//!   │ Proof {Ed25519 over the transcript}       │
//!   │ ─────────────────────────────────────────▶│ checks the proof, then session and role
//!   │   Welcome {caps ∩, session, role, head}   │
//!   │ ◀─────────────────────────────────────────│   (or Error {code, reason} and close)
//! ```
//!
//! The proof signs `"theta/handshake/v1\0" || SHA-256(len(hello) || hello || len(challenge) ||
//! challenge)`, lengths as u32 LE over the exact frame payloads sent, so it binds both nonces,
//! the key, the session and both capability sets. The server looks up the session and role only
//! after the proof, so unauthenticated clients learn nothing about sessions.

use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha256};
use theta_schemas::signing::{self, author_key, verifying_key};
use theta_schemas::wire::{Capabilities, Challenge, Hello, Proof, Welcome, WireError};
use theta_schemas::{AuthorKey, DecodeError, Message, PROTOCOL_VERSION, Role, SessionId};

/// Domain prefix of handshake proofs.
pub const PROOF_DOMAIN: &[u8] = b"theta/handshake/v1\0";

/// Stable close codes carried in `Error.code` (docs/PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u32)]
pub enum CloseCode {
    /// Protocol versions differ.
    VersionMismatch = 1,
    /// Schema hashes differ.
    SchemaMismatch = 2,
    /// The proof does not verify, or the key is invalid or weak.
    BadProof = 3,
    /// No such session.
    UnknownSession = 4,
    /// The key has no role in the session.
    NoRole = 5,
    /// The handshake took too long.
    Timeout = 6,
    /// A message that does not decode, or not the one expected now.
    ProtocolViolation = 7,
    /// After the welcome: the server's live stream of the session failed and is restarted;
    /// reconnect (the mirror resumes from its seq).
    LiveRestart = 8,
}

/// Why the server refused a handshake.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Reject {
    /// The client speaks another protocol version.
    #[error("protocol version {client} is not {server}")]
    VersionMismatch {
        /// The client's.
        client: u32,
        /// The server's.
        server: u32,
    },
    /// The client was built from another schema catalog.
    #[error("schema hash mismatch: the client's catalog differs from the server's")]
    SchemaMismatch,
    /// The proof does not verify (or the key is invalid or weak).
    #[error("handshake proof rejected")]
    BadProof,
    /// No such session.
    #[error("unknown session {0}")]
    UnknownSession(SessionId),
    /// The key has no role in the session.
    #[error("the key has no role in the session")]
    NoRole,
    /// The handshake did not complete in time.
    #[error("handshake timed out after {0} ms")]
    Timeout(u64),
    /// Bytes that do not decode.
    #[error("malformed handshake message: {0}")]
    Malformed(#[source] DecodeError),
    /// A valid message at the wrong moment.
    #[error("unexpected {0} during the handshake")]
    Unexpected(&'static str),
}

impl Reject {
    /// The close code.
    pub fn code(&self) -> CloseCode {
        match self {
            Reject::VersionMismatch { .. } => CloseCode::VersionMismatch,
            Reject::SchemaMismatch => CloseCode::SchemaMismatch,
            Reject::BadProof => CloseCode::BadProof,
            Reject::UnknownSession(_) => CloseCode::UnknownSession,
            Reject::NoRole => CloseCode::NoRole,
            Reject::Timeout(_) => CloseCode::Timeout,
            Reject::Malformed(_) | Reject::Unexpected(_) => CloseCode::ProtocolViolation,
        }
    }

    /// The error frame payload to send before closing.
    pub fn to_frame(&self) -> Vec<u8> {
        Message::Error(WireError { code: self.code() as u32, reason: self.to_string(), nonce: 0 }).encode()
    }
}

/// Why the client's handshake failed.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum HandshakeError {
    /// The server refused, with its code and reason.
    #[error("server refused the handshake ({code}): {reason}")]
    Refused {
        /// The close code.
        code: u32,
        /// The server's reason.
        reason: String,
    },
    /// The server sent bytes that do not decode.
    #[error("malformed server message: {0}")]
    Malformed(#[source] DecodeError),
    /// The server sent a valid message at the wrong moment.
    #[error("unexpected {0} from the server")]
    Unexpected(&'static str),
    /// The server's welcome does not match the hello (session or capabilities).
    #[error("inconsistent welcome: {0}")]
    Inconsistent(&'static str),
}

/// The message the client signs.
pub fn proof_message(hello: &[u8], challenge: &[u8]) -> Vec<u8> {
    let mut h = Sha256::new();
    h.update((hello.len() as u32).to_le_bytes());
    h.update(hello);
    h.update((challenge.len() as u32).to_le_bytes());
    h.update(challenge);
    let mut m = PROOF_DOMAIN.to_vec();
    m.extend_from_slice(&h.finalize());
    m
}

/// What both sides agree on: the client's compression kinds that the server also has (in the
/// client's order), interest management and datagrams only if both want them, the smaller
/// positive chunk size, compact deltas only if both want them and interest management is off.
pub fn intersect(client: &Capabilities, server: &Capabilities) -> Capabilities {
    let min_positive = |a: u32, b: u32| match (a, b) {
        (0, x) | (x, 0) => x,
        (a, b) => a.min(b),
    };
    Capabilities {
        compression: client.compression.iter().filter(|c| server.compression.contains(c)).cloned().collect(),
        interest_management: client.interest_management && server.interest_management,
        max_chunk_bytes: min_positive(client.max_chunk_bytes, server.max_chunk_bytes),
        datagrams: client.datagrams && server.datagrams,
        compact_deltas: client.compact_deltas
            && server.compact_deltas
            && !(client.interest_management && server.interest_management),
    }
}

/// Where a client handshake stands.
#[derive(Debug)]
pub struct ClientHandshake {
    key: SigningKey,
    hello: Vec<u8>,
    session: SessionId,
    offered: Capabilities,
    proved: bool,
}

/// What the client does next.
#[derive(Debug, Clone, PartialEq)]
pub enum ClientStep {
    /// Send this frame payload (the proof).
    Send(Vec<u8>),
    /// The handshake is complete.
    Done(Welcome),
}

impl ClientHandshake {
    /// Starts a handshake; returns the state and the Hello payload to send. `client_nonce`
    /// must be fresh random bytes.
    pub fn start(
        key: SigningKey,
        session: SessionId,
        offered: Capabilities,
        client_nonce: [u8; 32],
    ) -> (ClientHandshake, Vec<u8>) {
        ClientHandshake::resume(key, session, offered, client_nonce, 0)
    }

    /// Like [`ClientHandshake::start`], for a client whose mirror already holds `resume_seq`:
    /// the server then sends the deltas after it rather than a snapshot when it can.
    pub fn resume(
        key: SigningKey,
        session: SessionId,
        offered: Capabilities,
        client_nonce: [u8; 32],
        resume_seq: u64,
    ) -> (ClientHandshake, Vec<u8>) {
        let hello = Message::Hello(Hello {
            protocol_version: PROTOCOL_VERSION,
            schema_hash: theta_schemas::manifest::schema_hash(),
            client_nonce,
            public_key: author_key(&key),
            session,
            capabilities: offered.clone(),
            resume_seq,
        })
        .encode();
        (ClientHandshake { key, hello: hello.clone(), session, offered, proved: false }, hello)
    }

    /// Handles a frame payload from the server.
    pub fn on_message(&mut self, payload: &[u8]) -> Result<ClientStep, HandshakeError> {
        match Message::decode(payload).map_err(HandshakeError::Malformed)? {
            Message::Error(e) => Err(HandshakeError::Refused { code: e.code, reason: e.reason }),
            Message::Challenge(_) if !self.proved => {
                self.proved = true;
                let signature = self.key.sign(&proof_message(&self.hello, payload)).to_bytes();
                Ok(ClientStep::Send(Message::Proof(Proof { signature }).encode()))
            }
            Message::Welcome(w) if self.proved => {
                if w.session != self.session {
                    return Err(HandshakeError::Inconsistent("welcome names another session"));
                }
                let c = &w.capabilities;
                if c.compression.iter().any(|k| !self.offered.compression.contains(k))
                    || (c.interest_management && !self.offered.interest_management)
                    || (c.datagrams && !self.offered.datagrams)
                    || (c.compact_deltas && (!self.offered.compact_deltas || c.interest_management))
                {
                    return Err(HandshakeError::Inconsistent("welcome grants capabilities that were not offered"));
                }
                Ok(ClientStep::Done(w))
            }
            other => Err(HandshakeError::Unexpected(other.kind())),
        }
    }
}

/// What the server learned from a completed handshake.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Accepted {
    /// The client's key.
    pub key: AuthorKey,
    /// The session.
    pub session: SessionId,
    /// The client's role.
    pub role: Role,
    /// The agreed capabilities.
    pub capabilities: Capabilities,
    /// The seq the client's mirror holds (0: none).
    pub resume_seq: u64,
}

/// What the server does next.
#[derive(Debug, Clone, PartialEq)]
pub enum ServerStep {
    /// Send this frame payload (the challenge) and wait for the proof.
    Send(Vec<u8>),
    /// Send the welcome payload; the connection is established.
    Done {
        /// The Welcome payload.
        welcome: Vec<u8>,
        /// The outcome.
        accepted: Accepted,
    },
    /// Send the error payload and close.
    Close {
        /// The Error payload.
        error: Vec<u8>,
        /// Why.
        reject: Reject,
    },
}

#[derive(Debug)]
enum ServerState {
    AwaitHello,
    AwaitProof { hello: Vec<u8>, challenge: Vec<u8>, parsed: Box<Hello> },
    Finished,
}

/// Where a server handshake stands.
#[derive(Debug)]
pub struct ServerHandshake {
    capabilities: Capabilities,
    server_nonce: [u8; 32],
    started_ms: u64,
    timeout_ms: u64,
    state: ServerState,
}

impl ServerHandshake {
    /// A server handshake started at `now_ms`, with fresh random `server_nonce`.
    pub fn new(capabilities: Capabilities, server_nonce: [u8; 32], now_ms: u64, timeout_ms: u64) -> ServerHandshake {
        ServerHandshake { capabilities, server_nonce, started_ms: now_ms, timeout_ms, state: ServerState::AwaitHello }
    }

    /// Whether the handshake is over (accepted or refused).
    pub fn is_finished(&self) -> bool {
        matches!(self.state, ServerState::Finished)
    }

    fn close(&mut self, reject: Reject) -> ServerStep {
        self.state = ServerState::Finished;
        ServerStep::Close { error: reject.to_frame(), reject }
    }

    /// The refusal due at `now_ms`, if the handshake has run out of time.
    pub fn poll_timeout(&mut self, now_ms: u64) -> Option<ServerStep> {
        if !self.is_finished() && now_ms.saturating_sub(self.started_ms) > self.timeout_ms {
            return Some(self.close(Reject::Timeout(self.timeout_ms)));
        }
        None
    }

    /// Handles a frame payload from the client. `lookup` gives the client's role in the session,
    /// the session's head seq and Lamport clock (or the refusal), and runs only after the proof
    /// verified.
    pub fn on_message(
        &mut self,
        payload: &[u8],
        now_ms: u64,
        lookup: impl FnOnce(&SessionId, &AuthorKey) -> Result<(Role, u64, u64), Reject>,
    ) -> ServerStep {
        if let Some(step) = self.poll_timeout(now_ms) {
            return step;
        }
        let msg = match Message::decode(payload) {
            Ok(m) => m,
            Err(e) => return self.close(Reject::Malformed(e)),
        };
        match (std::mem::replace(&mut self.state, ServerState::Finished), msg) {
            (ServerState::AwaitHello, Message::Hello(h)) => {
                if h.protocol_version != PROTOCOL_VERSION {
                    return self
                        .close(Reject::VersionMismatch { client: h.protocol_version, server: PROTOCOL_VERSION });
                }
                if h.schema_hash != theta_schemas::manifest::schema_hash() {
                    return self.close(Reject::SchemaMismatch);
                }
                let challenge = Message::Challenge(Challenge {
                    server_nonce: self.server_nonce,
                    capabilities: self.capabilities.clone(),
                })
                .encode();
                self.state = ServerState::AwaitProof {
                    hello: payload.to_vec(),
                    challenge: challenge.clone(),
                    parsed: Box::new(h),
                };
                ServerStep::Send(challenge)
            }
            (ServerState::AwaitProof { hello, challenge, parsed }, Message::Proof(p)) => {
                let verified = verifying_key(&parsed.public_key)
                    .is_ok_and(|k| signing::verify(&k, &proof_message(&hello, &challenge), &p.signature).is_ok());
                if !verified {
                    return self.close(Reject::BadProof);
                }
                let (role, head_seq, lamport_clock) = match lookup(&parsed.session, &parsed.public_key) {
                    Ok(x) => x,
                    Err(r) => return self.close(r),
                };
                if role == Role::None {
                    return self.close(Reject::NoRole);
                }
                let capabilities = intersect(&parsed.capabilities, &self.capabilities);
                let welcome = Message::Welcome(Welcome {
                    capabilities: capabilities.clone(),
                    session: parsed.session,
                    role,
                    head_seq,
                    lamport_clock,
                })
                .encode();
                ServerStep::Done {
                    welcome,
                    accepted: Accepted {
                        key: parsed.public_key,
                        session: parsed.session,
                        role,
                        capabilities,
                        resume_seq: parsed.resume_seq,
                    },
                }
            }
            (_, other) => self.close(Reject::Unexpected(other.kind())),
        }
    }
}
