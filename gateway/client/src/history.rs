//! The gRPC history client (`theta.v1`, docs/PROTOCOL.md "gRPC"): connects plain or over TLS
//! with a CA, puts a fresh read credential on every read when it holds a key, signs and appends
//! commands (the Lamport time from the session's head), and checks what the server proves
//! (an entry's hash and its inclusion proof) here, with `theta_schemas::merkle`.

use ed25519_dalek::SigningKey;
use theta_projector::{Assembler, Projection};
use theta_proto::v1 as pb;
use theta_proto::v1::admin_service_client::AdminServiceClient;
use theta_proto::v1::audit_service_client::AuditServiceClient;
use theta_proto::v1::log_service_client::LogServiceClient;
use theta_proto::v1::replay_service_client::ReplayServiceClient;
use theta_schemas::credential::{CREDENTIAL_METADATA, Credential};
use theta_schemas::merkle::{Hash, entry_hash, leaf_hash, verify_inclusion};
use theta_schemas::signing::author_key;
use theta_schemas::{Command, CommandBody, ComponentId, Envelope, Message, SessionId};
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

/// Why a history call failed.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// The server address does not parse, or TLS could not be set up.
    #[error("server address {address:?}: {reason}")]
    Address {
        /// The address given.
        address: String,
        /// What is wrong.
        reason: String,
    },
    /// The server could not be reached.
    #[error("connect to {address}: {reason} (is `theta serve` running?)")]
    Connect {
        /// The address given.
        address: String,
        /// What failed.
        reason: String,
    },
    /// The call needs a key (signing a command).
    #[error("{0} needs a key")]
    NeedsKey(&'static str),
    /// The server answered with an error status.
    #[error("{:?}: {}", .0.code(), .0.message())]
    Status(#[from] tonic::Status),
    /// The server's answer is incomplete or inconsistent (a missing entry, a hash of the wrong
    /// length).
    #[error("the server's answer: {0}")]
    Answer(String),
}

/// An entry with its inclusion proof, checked here.
#[derive(Debug, Clone)]
pub struct ProvenEntry {
    /// The entry as the server sent it.
    pub entry: pb::Entry,
    /// The inclusion proof as the server sent it.
    pub proof: pb::InclusionProofResponse,
    /// The entry hash recomputed here from the entry's fields equals the one sent.
    pub hash_ok: bool,
    /// The proof leads from the entry's leaf to the tree's root.
    pub included: bool,
}

impl ProvenEntry {
    /// Both checks passed.
    pub fn verified(&self) -> bool {
        self.hash_ok && self.included
    }
}

/// A request carrying a fresh read credential of `key` for `method` on `session`
/// (docs/PROTOCOL.md, "Read credentials").
pub fn signed<T>(key: &SigningKey, method: &str, session: Option<&SessionId>, msg: T) -> tonic::Request<T> {
    let credential = Credential::sign(key, method, session, now_ms(), rand::random());
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(CREDENTIAL_METADATA, credential.encode().parse().expect("a credential is ASCII"));
    req
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn hash(bytes: &[u8], what: &str) -> Result<Hash, HistoryError> {
    bytes.try_into().map_err(|_| HistoryError::Answer(format!("{what} has {} bytes, not 32", bytes.len())))
}

/// A connection to `theta serve`'s gRPC port, with the caller's key when it has one.
#[derive(Debug, Clone)]
pub struct HistoryClient {
    channel: Channel,
    key: Option<SigningKey>,
}

impl HistoryClient {
    /// Connects to `address` (`http://` or `https://`; with `ca_pem`, TLS trusting that CA).
    /// Log reads come in batches of megabytes: the flow-control windows hold one, so a read
    /// does not wait a round trip per 64 KiB.
    pub async fn connect(
        address: &str,
        ca_pem: Option<Vec<u8>>,
        key: Option<SigningKey>,
    ) -> Result<HistoryClient, HistoryError> {
        let bad = |reason: String| HistoryError::Address { address: address.to_string(), reason };
        let mut ep = Channel::from_shared(address.to_string())
            .map_err(|e| bad(e.to_string()))?
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(16 << 20));
        if let Some(pem) = ca_pem {
            ep = ep
                .tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))
                .map_err(|e| bad(e.to_string()))?;
        }
        let channel = ep
            .connect()
            .await
            .map_err(|e| HistoryError::Connect { address: address.to_string(), reason: e.to_string() })?;
        Ok(HistoryClient { channel, key })
    }

    /// The channel, for calls this client has no method for.
    pub fn channel(&self) -> Channel {
        self.channel.clone()
    }

    /// The caller's key, if any.
    pub fn key(&self) -> Option<&SigningKey> {
        self.key.as_ref()
    }

    /// A read request for `method` (`/theta.v1.Service/Method`) on `session`, with a fresh
    /// credential when the client holds a key (without one the server answers UNAUTHENTICATED
    /// unless it runs with --public-read).
    pub fn request<T>(&self, method: &str, session: Option<&SessionId>, msg: T) -> tonic::Request<T> {
        match &self.key {
            Some(key) => signed(key, method, session, msg),
            None => tonic::Request::new(msg),
        }
    }

    /// The session's head (seq, Lamport clock, tree).
    pub async fn head(&self, session: &SessionId) -> Result<pb::HeadResponse, HistoryError> {
        let req =
            self.request("/theta.v1.LogService/Head", Some(session), pb::HeadRequest { session: session.0.to_vec() });
        Ok(LogServiceClient::new(self.channel()).head(req).await?.into_inner())
    }

    /// Signs `command` for `session` with the client's key, a Lamport time above the session's
    /// clock and a random nonce.
    pub async fn sign_command(
        &self,
        session: SessionId,
        entity: u64,
        component: ComponentId,
        base_version: u64,
        command: Command,
    ) -> Result<Vec<u8>, HistoryError> {
        let key = self.key.as_ref().ok_or(HistoryError::NeedsKey("signing a command"))?;
        let clock = match self.head(&session).await {
            Ok(h) => h.lamport_clock,
            Err(HistoryError::Status(e))
                if e.code() == tonic::Code::NotFound && matches!(command, Command::CreateSession { .. }) =>
            {
                0
            }
            Err(e) => return Err(e),
        };
        let body = CommandBody {
            session,
            author: author_key(key),
            lamport: clock + 1,
            nonce: rand::random(),
            wall_clock_ms: now_ms(),
            entity,
            component,
            base_version,
            command,
        };
        Ok(Envelope::sign(&body, key).encode())
    }

    /// Creates a session with a random id; returns the id and the receipt.
    pub async fn create_session(&self, name: String) -> Result<(SessionId, pb::Receipt), HistoryError> {
        let session = SessionId(rand::random());
        let envelope = self.sign_command(session, 0, ComponentId::NONE, 0, Command::CreateSession { name }).await?;
        let r = LogServiceClient::new(self.channel()).create_session(pb::AppendRequest { envelope }).await?;
        Ok((session, r.into_inner().receipt.unwrap_or_default()))
    }

    /// Signs and appends one command; returns its receipt.
    pub async fn append(
        &self,
        session: SessionId,
        entity: u64,
        component: ComponentId,
        base_version: u64,
        command: Command,
    ) -> Result<pb::Receipt, HistoryError> {
        let envelope = self.sign_command(session, entity, component, base_version, command).await?;
        let r = LogServiceClient::new(self.channel()).append(pb::AppendRequest { envelope }).await?;
        Ok(r.into_inner().receipt.unwrap_or_default())
    }

    /// Streams `session`'s log as `req` asks (batches of entries; `req.session` is set here).
    pub async fn read_log(
        &self,
        session: &SessionId,
        mut req: pb::ReadLogRequest,
    ) -> Result<tonic::Streaming<pb::EntryBatch>, HistoryError> {
        req.session = session.0.to_vec();
        let req = self.request("/theta.v1.ReplayService/ReadLog", Some(session), req);
        Ok(self.replay().read_log(req).await?.into_inner())
    }

    /// The world of `session` at `seq` (0: the head), assembled from `ReadState`'s snapshot
    /// chunks; the assembler checks it against the state hash the server sent.
    pub async fn read_state(&self, session: &SessionId, seq: u64) -> Result<Projection, HistoryError> {
        let req = pb::ReadStateRequest { session: session.0.to_vec(), at_seq: seq, max_chunk_bytes: 0 };
        let req = self.request("/theta.v1.ReplayService/ReadState", Some(session), req);
        let mut stream = self.replay().read_state(req).await?.into_inner();
        let mut asm = Assembler::new();
        while let Some(chunk) = stream.message().await? {
            let Ok(Message::SnapshotChunk(c)) = Message::decode(&chunk.frame) else {
                return Err(HistoryError::Answer("ReadState sent something other than a snapshot chunk".into()));
            };
            if let Some(p) =
                asm.add(c).map_err(|e| HistoryError::Answer(format!("the state does not assemble: {e}")))?
            {
                return Ok(p);
            }
        }
        Err(HistoryError::Answer("ReadState ended before the last chunk".into()))
    }

    /// The session's head seq as `ReadState` sees it (the first chunk of a small-chunk read).
    pub async fn state_head(&self, session: &SessionId) -> Result<u64, HistoryError> {
        let req = pb::ReadStateRequest { session: session.0.to_vec(), at_seq: 0, max_chunk_bytes: 1_024 };
        let req = self.request("/theta.v1.ReplayService/ReadState", Some(session), req);
        let mut stream = self.replay().read_state(req).await?.into_inner();
        match stream.message().await? {
            Some(c) => Ok(c.seq),
            None => Err(HistoryError::Answer(format!("the server sent no state for session {session}"))),
        }
    }

    /// Replay calls carry snapshots and log batches of megabytes.
    fn replay(&self) -> ReplayServiceClient<Channel> {
        ReplayServiceClient::new(self.channel()).max_decoding_message_size(64 << 20).max_encoding_message_size(64 << 20)
    }

    /// Has the server re-verify entries `from..=to` (0: the head).
    pub async fn verify_log(
        &self,
        session: &SessionId,
        from: u64,
        to: u64,
    ) -> Result<pb::VerifyLogResponse, HistoryError> {
        let req = self.request(
            "/theta.v1.AuditService/VerifyLog",
            Some(session),
            pb::VerifyLogRequest { session: session.0.to_vec(), from_seq: from, to_seq: to },
        );
        Ok(AuditServiceClient::new(self.channel()).verify_log(req).await?.into_inner())
    }

    /// Fetches entry `seq` and its inclusion proof in the current tree, and checks both here:
    /// the entry hash recomputed from the entry's fields, and the proof from its leaf to the root.
    pub async fn prove(&self, session: &SessionId, seq: u64) -> Result<ProvenEntry, HistoryError> {
        let req = pb::ReadLogRequest { from_seq: seq, to_seq: seq, ..Default::default() };
        let mut entries = self.read_log(session, req).await?;
        let entry = entries
            .message()
            .await?
            .and_then(|b| b.entries.into_iter().next())
            .ok_or_else(|| HistoryError::Answer(format!("no entry {seq}")))?;
        let req = self.request(
            "/theta.v1.AuditService/InclusionProof",
            Some(session),
            pb::InclusionProofRequest { session: session.0.to_vec(), seq, tree_size: 0 },
        );
        let proof = AuditServiceClient::new(self.channel()).inclusion_proof(req).await?.into_inner();
        let sent = hash(&entry.entry_hash, "the entry hash")?;
        let recomputed = entry_hash(
            session,
            entry.seq,
            entry.receipt_time_ms,
            &hash(&entry.prev_hash, "the previous entry hash")?,
            &entry.envelope,
        );
        let path: Vec<Hash> = proof.path.iter().map(|h| hash(h, "a proof hash")).collect::<Result<_, _>>()?;
        let root = hash(&proof.root, "the tree root")?;
        let included = verify_inclusion(&leaf_hash(&sent), proof.leaf_index, proof.tree_size, &path, &root);
        Ok(ProvenEntry { entry, proof, hash_ok: recomputed == sent, included })
    }

    /// The server's statistics (a service admin key's call).
    pub async fn stats(&self) -> Result<pb::StatsResponse, HistoryError> {
        let req = self.request("/theta.v1.AdminService/Stats", None, pb::StatsRequest {});
        Ok(AdminServiceClient::new(self.channel()).stats(req).await?.into_inner())
    }
}

/// A session opened at a seq from history (`ReadState`), stepping forward entry by entry
/// (`ReadLog`) or jumping anywhere: the time-travel view of `theta view --at` and `theta demo`.
pub struct Playback {
    client: HistoryClient,
    session: SessionId,
    /// The world at the current seq.
    pub mirror: Projection,
    /// The session head when opened.
    pub head: u64,
    /// The entry that produced the current seq: (seq, author hex prefix, kind, receipt time ms).
    pub current: Option<(u64, String, String, u64)>,
}

impl Playback {
    /// Opens `session` at `seq` (0: the head) from the server's checkpoints and log.
    pub async fn open(client: HistoryClient, session: SessionId, seq: u64) -> Result<Playback, HistoryError> {
        let mirror = client.read_state(&session, seq).await?;
        let head = client.state_head(&session).await?;
        Ok(Playback { client, session, mirror, head, current: None })
    }

    /// Jumps to `seq` (forward or back; 0: the head).
    pub async fn seek(&mut self, seq: u64) -> Result<(), HistoryError> {
        self.mirror = self.client.read_state(&self.session, seq).await?;
        self.current = None;
        Ok(())
    }

    /// Applies the next `n` entries (fewer at the head); returns how many were applied.
    pub async fn step(&mut self, n: u64) -> Result<u64, HistoryError> {
        let from = self.mirror.seq() + 1;
        if n == 0 || from > self.head {
            return Ok(0);
        }
        let to = (from + n - 1).min(self.head);
        let req = pb::ReadLogRequest { from_seq: from, to_seq: to, ..Default::default() };
        let mut stream = self.client.read_log(&self.session, req).await?;
        let mut applied = 0;
        while let Some(batch) = stream.message().await? {
            for e in batch.entries {
                let answer = |what: String| HistoryError::Answer(format!("entry {}: {what}", e.seq));
                if e.seq != self.mirror.seq() + 1 {
                    return Err(answer(format!("ReadLog skipped from {}", self.mirror.seq())));
                }
                let (_, body) = Envelope::open(&e.envelope).map_err(|err| answer(format!("does not decode: {err}")))?;
                self.mirror.apply_command(e.seq, &body).map_err(|err| answer(format!("does not fold: {err}")))?;
                self.current =
                    Some((e.seq, hex::encode(&e.author[..4.min(e.author.len())]), e.kind, e.receipt_time_ms));
                applied += 1;
            }
        }
        Ok(applied)
    }

    /// The timeline line: current seq of the head, the edit's time, author and kind.
    pub fn timeline(&self) -> String {
        match &self.current {
            Some((seq, author, kind, ms)) => {
                let secs = ms / 1_000;
                let (h, m, s) = ((secs / 3_600) % 24, (secs / 60) % 60, secs % 60);
                format!("seq {seq}/{}  {h:02}:{m:02}:{s:02}.{:03} UTC  {kind} by {author}", self.head, ms % 1_000)
            }
            None => format!("seq {}/{}", self.mirror.seq(), self.head),
        }
    }
}
