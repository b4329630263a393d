//! Errors, one enum per operation.

use theta_schemas::signing::SignatureError;
use theta_schemas::{AuthorKey, CommandKind, ComponentId, DecodeError, EntityId, Role, SessionId};

use crate::backend::BackendError;

/// Why a conflict check rejected a command.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ConflictReason {
    /// Reject-strategy scope whose version moved since the author read it.
    #[error("stale base version {base}, scope is at version {current}")]
    StaleVersion {
        /// The command's base version.
        base: u64,
        /// The scope's current version.
        current: u64,
    },
    /// Create of an entity id that exists.
    #[error("entity already exists")]
    EntityExists,
    /// Command on, or create of, an entity id that was deleted (ids are never reused).
    #[error("entity was deleted at seq {deleted_at}")]
    EntityDeleted {
        /// Seq of the deletion.
        deleted_at: u64,
    },
    /// Command on an entity that was never created.
    #[error("entity does not exist")]
    EntityMissing,
    /// Create or reparent under a parent that does not exist.
    #[error("parent {parent} does not exist")]
    ParentMissing {
        /// The missing parent.
        parent: EntityId,
    },
    /// Reparent that would make the entity its own ancestor.
    #[error("reparenting under {parent} would create a cycle")]
    WouldCycle {
        /// The requested parent.
        parent: EntityId,
    },
    /// Create or reparent deeper than the configured hierarchy depth.
    #[error("hierarchy deeper than {max} levels")]
    TooDeep {
        /// The limit.
        max: usize,
    },
    /// Delete of an entity that still has children.
    #[error("entity still has {children} children")]
    HasChildren {
        /// Number of children.
        children: u32,
    },
    /// Revoking or demoting the session's last owner.
    #[error("the session must keep at least one owner")]
    LastOwner,
}

/// Why an append was rejected. The log is unchanged by every rejection.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AppendError {
    /// The envelope is larger than `max_envelope_bytes` (counter `payload_guard_drops`).
    #[error("envelope of {len} bytes exceeds the {max}-byte limit")]
    PayloadTooLarge {
        /// Envelope length.
        len: usize,
        /// The limit.
        max: usize,
    },
    /// Envelope or body failed schema verification (counter `schema_rejections`).
    #[error("malformed command: {0}")]
    Malformed(#[source] DecodeError),
    /// The body is well-formed but not a valid command: wrong scope for its kind, unknown
    /// component, bad component bytes, zero session id, invalid grantee key
    /// (counter `schema_rejections`).
    #[error("invalid {kind} command: {reason}")]
    Invalid {
        /// The command kind.
        kind: CommandKind,
        /// What is wrong.
        reason: String,
    },
    /// The signature does not verify, or the author key is invalid or weak
    /// (counter `signature_failures`).
    #[error("signature rejected: {0}")]
    Signature(#[source] SignatureError),
    /// No such session (counter `session_rejections`).
    #[error("unknown session {session}")]
    UnknownSession {
        /// The session named by the command.
        session: SessionId,
    },
    /// Create-session for a session that exists (counter `session_rejections`).
    #[error("session {session} already exists")]
    SessionExists {
        /// The session.
        session: SessionId,
    },
    /// The key may not create sessions on this store (counter `admission_denials`).
    #[error("{author} may not create sessions on this server (admission)")]
    NotAdmitted {
        /// The key that tried.
        author: AuthorKey,
    },
    /// The author's role does not allow the command kind (counter `permission_denials`).
    #[error("{author} has role {role}, which may not {kind}")]
    PermissionDenied {
        /// The author.
        author: AuthorKey,
        /// The author's role at that moment.
        role: Role,
        /// The denied kind.
        kind: CommandKind,
    },
    /// The (author, nonce) pair was already accepted (counter `replay_rejections`).
    #[error("nonce {nonce} of {author} was already used at seq {first_seq}")]
    Replay {
        /// The author.
        author: AuthorKey,
        /// The nonce.
        nonce: u64,
        /// Seq of the entry that used it.
        first_seq: u64,
    },
    /// The author's Lamport timestamp did not increase (counter `lamport_rejections`).
    #[error("Lamport {lamport} of {author} is not above its previous {previous}")]
    LamportRegression {
        /// The author.
        author: AuthorKey,
        /// The command's timestamp.
        lamport: u64,
        /// The author's last accepted timestamp.
        previous: u64,
    },
    /// The Lamport timestamp is too far ahead of the session clock (counter `lamport_rejections`).
    #[error("Lamport {lamport} is more than {max_skew} ahead of the session clock {clock}")]
    LamportSkew {
        /// The command's timestamp.
        lamport: u64,
        /// The session clock.
        clock: u64,
        /// The configured skew.
        max_skew: u64,
    },
    /// The author exceeded its rate (counter `rate_limit_drops`).
    #[error("{author} is rate limited; retry in {retry_after_ms} ms")]
    RateLimited {
        /// The author.
        author: AuthorKey,
        /// When a token is next available.
        retry_after_ms: u64,
    },
    /// The command's scope rejected it (counter `conflict_rejections`).
    #[error("conflict on entity {entity}, component {component}: {reason}")]
    Conflict {
        /// Scope entity.
        entity: EntityId,
        /// Scope component.
        component: ComponentId,
        /// Why.
        #[source]
        reason: ConflictReason,
    },
    /// The session's stored log failed verification; it is not served.
    #[error("session {session} is corrupted at seq {seq}: {detail}")]
    Corrupted {
        /// The session.
        session: SessionId,
        /// The first bad seq.
        seq: u64,
        /// What failed.
        detail: String,
    },
    /// The storage engine failed; the store stops accepting appends.
    #[error("storage failure: {0}")]
    Storage(String),
    /// The store is shutting down.
    #[error("the store is shutting down")]
    ShuttingDown,
}

impl AppendError {
    /// The stable reason code used in the rejection trail and by the gateway.
    pub fn code(&self) -> RejectionCode {
        match self {
            AppendError::PayloadTooLarge { .. } => RejectionCode::PayloadGuard,
            AppendError::Malformed(_) | AppendError::Invalid { .. } => RejectionCode::Schema,
            AppendError::Signature(_) => RejectionCode::Signature,
            AppendError::UnknownSession { .. } | AppendError::SessionExists { .. } => RejectionCode::Session,
            AppendError::PermissionDenied { .. } => RejectionCode::Permission,
            AppendError::Replay { .. } => RejectionCode::Replay,
            AppendError::LamportRegression { .. } | AppendError::LamportSkew { .. } => RejectionCode::Lamport,
            AppendError::RateLimited { .. } => RejectionCode::RateLimit,
            AppendError::Conflict { .. } => RejectionCode::Conflict,
            AppendError::Corrupted { .. } | AppendError::Storage(_) | AppendError::ShuttingDown => {
                RejectionCode::Unavailable
            }
            AppendError::NotAdmitted { .. } => RejectionCode::Admission,
        }
    }
}

/// Stable rejection reason codes (docs/PROTOCOL.md).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum RejectionCode {
    /// Envelope over the size guard.
    PayloadGuard = 1,
    /// Malformed or invalid command.
    Schema = 2,
    /// Bad signature or key.
    Signature = 3,
    /// Unknown session or session exists.
    Session = 4,
    /// Role does not allow the kind.
    Permission = 5,
    /// Replayed nonce.
    Replay = 6,
    /// Lamport regression or skew.
    Lamport = 7,
    /// Rate limit.
    RateLimit = 8,
    /// Conflict strategy.
    Conflict = 9,
    /// Store unavailable (corruption, storage failure, shutdown).
    Unavailable = 10,
    /// The key may not create sessions.
    Admission = 11,
}

impl RejectionCode {
    /// Every code.
    pub const ALL: [RejectionCode; 11] = [
        RejectionCode::PayloadGuard,
        RejectionCode::Schema,
        RejectionCode::Signature,
        RejectionCode::Session,
        RejectionCode::Permission,
        RejectionCode::Replay,
        RejectionCode::Lamport,
        RejectionCode::RateLimit,
        RejectionCode::Conflict,
        RejectionCode::Unavailable,
        RejectionCode::Admission,
    ];

    /// The code with this byte.
    pub fn from_u8(b: u8) -> Option<RejectionCode> {
        RejectionCode::ALL.into_iter().find(|c| *c as u8 == b)
    }

    /// The telemetry counter that counts this code.
    pub fn counter(self) -> &'static str {
        match self {
            RejectionCode::PayloadGuard => "payload_guard_drops",
            RejectionCode::Schema => "schema_rejections",
            RejectionCode::Signature => "signature_failures",
            RejectionCode::Session => "session_rejections",
            RejectionCode::Permission => "permission_denials",
            RejectionCode::Replay => "replay_rejections",
            RejectionCode::Lamport => "lamport_rejections",
            RejectionCode::RateLimit => "rate_limit_drops",
            RejectionCode::Conflict => "conflict_rejections",
            RejectionCode::Unavailable => "unavailable_rejections",
            RejectionCode::Admission => "admission_denials",
        }
    }
}

/// Why a store could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    /// The storage engine failed.
    #[error("storage: {0}")]
    Storage(#[from] BackendError),
    /// The service key file is unreadable or malformed.
    #[error("service key {path}: {reason}")]
    ServiceKey {
        /// The key file.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The data directory holds another on-disk format.
    #[error(
        "the data directory holds on-disk format {found}; this theta reads format {supported}. {}",
        if *found < *supported {
            "Convert it with `theta store migrate --data DIR` (it keeps the old directory as DIR.format-N)."
        } else {
            "It was written by a newer theta: run that one."
        }
    )]
    Format {
        /// The format found.
        found: u8,
        /// The format this build reads.
        supported: u8,
    },
}

/// Why a read failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReadError {
    /// No such session.
    #[error("unknown session {session}")]
    UnknownSession {
        /// The session.
        session: SessionId,
    },
    /// The session's stored log failed verification.
    #[error("session {session} is corrupted at seq {seq}: {detail}")]
    Corrupted {
        /// The session.
        session: SessionId,
        /// First bad seq.
        seq: u64,
        /// What failed.
        detail: String,
    },
    /// A seq or size beyond the head.
    #[error("{what} {value} is beyond the head {head}")]
    OutOfRange {
        /// Which argument.
        what: &'static str,
        /// Its value.
        value: u64,
        /// The head seq (tree size).
        head: u64,
    },
    /// The storage engine failed.
    #[error("storage failure: {0}")]
    Storage(String),
}

impl From<BackendError> for ReadError {
    fn from(e: BackendError) -> Self {
        ReadError::Storage(e.to_string())
    }
}
