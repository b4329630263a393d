//! Who may call what: read credentials, the access rules, and per-key read limits.
//!
//! Every gRPC read names its caller with a [`Credential`] in the `theta-auth` metadata (format
//! and signed bytes in `theta_schemas::credential`). [`Access::authorize`] checks it and the
//! rule of the method:
//!
//! | need | methods | who |
//! | --- | --- | --- |
//! | [`Need::Member`] | `Head`, `ReadLog`, `ReadState`, `Subscribe`, `EntityHistory`, `SignedTreeHead` | any role in the session (viewer and up) |
//! | [`Need::Auditor`] | `VerifyLog`, `InclusionProof`, `ConsistencyProof`, `Rejections`, `AuthorSummary` | auditor or owner of the session |
//! | [`Need::Admin`] | `Stats`, `Rejections` of the global trail | a service admin key |
//!
//! A session the caller has no role in answers exactly like one that does not exist. Appends
//! need no credential: the envelope's own signature names the author.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};

use theta_schemas::credential::{CREDENTIAL_METADATA, Credential};
use theta_schemas::{AuthorKey, Role, SessionId};
use theta_store::{ReadError, Store};
use tonic::Status;
use tonic::metadata::MetadataMap;

use crate::status::read_status;

/// Keys whose read limits are tracked at once; beyond this, idle keys are forgotten.
const MAX_TRACKED_KEYS: usize = 65_536;

/// Access settings of the gRPC API.
#[derive(Debug, Clone)]
pub struct AccessConfig {
    /// Service admin keys: `Stats`, the global rejection trail, and (with the default
    /// admission) creating sessions. Default none.
    pub admins: BTreeSet<AuthorKey>,
    /// Serve every read without a credential (demos only; `theta serve --public-read`).
    /// Default false.
    pub public_read: bool,
    /// How far a credential's `issued_ms` may be from the server's clock, either way,
    /// milliseconds. Default 60,000.
    pub credential_window_ms: u64,
    /// Credentials remembered (for replay detection) across all keys; beyond this, reads are
    /// refused until older ones leave their window. Default 1,000,000.
    pub max_remembered_credentials: usize,
    /// Streaming reads (`ReadLog`, `ReadState`, `Subscribe`, `EntityHistory`) open at once per
    /// key. Default 16.
    pub max_streams_per_key: usize,
    /// Read calls per key, per second (token bucket). Default 100.
    pub reads_per_sec: f64,
    /// Read calls a key may make in a burst. Default 200.
    pub reads_burst: f64,
}

impl Default for AccessConfig {
    fn default() -> Self {
        AccessConfig {
            admins: BTreeSet::new(),
            public_read: false,
            credential_window_ms: 60_000,
            max_remembered_credentials: 1_000_000,
            max_streams_per_key: 16,
            reads_per_sec: 100.0,
            reads_burst: 200.0,
        }
    }
}

/// What a method needs of its caller.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Need {
    /// Any role in the session.
    Member,
    /// Auditor or owner of the session.
    Auditor,
    /// A service admin key.
    Admin,
}

/// Why a credential or a caller was refused (the `reason` label of `theta_auth_failures_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum AuthFailure {
    /// No `theta-auth` metadata.
    Missing,
    /// The metadata is not a credential.
    Malformed,
    /// `issued_ms` outside the window.
    Expired,
    /// Invalid or weak key, or the signature does not verify for this method and session.
    BadSignature,
    /// The credential was already used.
    Replayed,
    /// The session does not exist.
    UnknownSession,
    /// The key has no role in the session (answered exactly like `UnknownSession`).
    NoRole,
    /// The key's role is below what the method needs.
    RoleTooLow,
    /// The method needs a service admin.
    NotAdmin,
    /// Too many credentials in their window to remember another.
    Busy,
}

impl AuthFailure {
    /// Every reason.
    pub const ALL: [AuthFailure; 10] = [
        AuthFailure::Missing,
        AuthFailure::Malformed,
        AuthFailure::Expired,
        AuthFailure::BadSignature,
        AuthFailure::Replayed,
        AuthFailure::UnknownSession,
        AuthFailure::NoRole,
        AuthFailure::RoleTooLow,
        AuthFailure::NotAdmin,
        AuthFailure::Busy,
    ];

    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            AuthFailure::Missing => "missing",
            AuthFailure::Malformed => "malformed",
            AuthFailure::Expired => "expired",
            AuthFailure::BadSignature => "bad_signature",
            AuthFailure::Replayed => "replayed",
            AuthFailure::UnknownSession => "unknown_session",
            AuthFailure::NoRole => "no_role",
            AuthFailure::RoleTooLow => "role",
            AuthFailure::NotAdmin => "admin",
            AuthFailure::Busy => "busy",
        }
    }
}

/// Why a read was refused by a per-key limit (the `reason` label of `theta_read_limit_drops_total`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum ReadLimit {
    /// Too many streaming reads open.
    Streams,
    /// Over the read rate.
    Rate,
}

impl ReadLimit {
    /// The label value.
    pub fn label(self) -> &'static str {
        match self {
            ReadLimit::Streams => "streams",
            ReadLimit::Rate => "rate",
        }
    }
}

/// Counters of refusals, by reason.
#[derive(Debug, Default)]
pub struct AccessCounters {
    failures: Mutex<BTreeMap<AuthFailure, u64>>,
    limits: Mutex<BTreeMap<ReadLimit, u64>>,
}

impl AccessCounters {
    /// Refusals by reason (every reason, zeros included).
    pub fn failures(&self) -> Vec<(&'static str, u64)> {
        let f = self.failures.lock().expect("counters lock");
        AuthFailure::ALL.iter().map(|r| (r.label(), f.get(r).copied().unwrap_or(0))).collect()
    }

    /// Read-limit refusals by reason (every reason, zeros included).
    pub fn limits(&self) -> Vec<(&'static str, u64)> {
        let l = self.limits.lock().expect("counters lock");
        [ReadLimit::Streams, ReadLimit::Rate].iter().map(|r| (r.label(), l.get(r).copied().unwrap_or(0))).collect()
    }
}

/// The caller of an authorized read; holds its stream slot (if any) until dropped.
#[derive(Debug)]
pub struct Caller {
    /// The caller's key (`None` under `public_read`).
    pub key: Option<AuthorKey>,
    slot: Option<StreamSlot>,
}

impl Caller {
    /// Moves the stream slot out, to be dropped when the stream ends.
    pub fn into_slot(self) -> Option<StreamSlot> {
        self.slot
    }
}

/// One open streaming read of a key.
#[derive(Debug)]
pub struct StreamSlot(Arc<AtomicUsize>);

impl Drop for StreamSlot {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

#[derive(Debug)]
struct KeyState {
    streams: Arc<AtomicUsize>,
    tokens: f64,
    refilled_ms: u64,
}

#[derive(Debug, Default)]
struct Remembered {
    seen: BTreeSet<(AuthorKey, [u8; 16])>,
    by_expiry: BTreeMap<u64, Vec<(AuthorKey, [u8; 16])>>,
}

/// The access checks of one gateway.
#[derive(Debug)]
pub struct Access {
    config: AccessConfig,
    remembered: Mutex<Remembered>,
    keys: Mutex<HashMap<AuthorKey, KeyState>>,
    /// Refusal counters.
    pub counters: AccessCounters,
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The one answer for an unknown session and for a session the caller may not see.
fn not_found(session: &SessionId) -> Status {
    Status::not_found(format!("auth_failures: session {session} not found"))
}

impl Access {
    /// Checks with `config`.
    pub fn new(config: AccessConfig) -> Access {
        Access { config, remembered: Mutex::default(), keys: Mutex::default(), counters: AccessCounters::default() }
    }

    /// The settings.
    pub fn config(&self) -> &AccessConfig {
        &self.config
    }

    fn refuse(&self, reason: AuthFailure, status: Status) -> Status {
        *self.counters.failures.lock().expect("counters lock").entry(reason).or_default() += 1;
        status
    }

    fn limit(&self, reason: ReadLimit, status: Status) -> Status {
        *self.counters.limits.lock().expect("counters lock").entry(reason).or_default() += 1;
        status
    }

    /// Checks the credential in `metadata` for `method` (the gRPC path) on `session`, then what
    /// the method needs; `stream` takes one of the key's stream slots. Unknown sessions are
    /// answered `NOT_FOUND` here too, so that they look like forbidden ones.
    pub fn authorize(
        &self,
        metadata: &MetadataMap,
        method: &str,
        session: Option<&SessionId>,
        need: Need,
        stream: bool,
        store: &Store,
    ) -> Result<Caller, Status> {
        if self.config.public_read {
            if let Some(s) = session {
                store.head(s).map_err(|e| read_status(&e))?;
            }
            return Ok(Caller { key: None, slot: None });
        }
        let credential = self.credential(metadata, method, session)?;
        let key = credential.key;
        self.check_need(&key, method, session, need, store)?;
        self.remember(&credential)?;
        let slot = self.take_limits(&key, stream)?;
        Ok(Caller { key: Some(key), slot })
    }

    /// Parses, dates and verifies the credential.
    fn credential(
        &self,
        metadata: &MetadataMap,
        method: &str,
        session: Option<&SessionId>,
    ) -> Result<Credential, Status> {
        let Some(raw) = metadata.get(CREDENTIAL_METADATA) else {
            return Err(self.refuse(
                AuthFailure::Missing,
                Status::unauthenticated(format!(
                    "auth_failures: {method} needs a credential in the {CREDENTIAL_METADATA} metadata (docs/PROTOCOL.md, \"Read credentials\")"
                )),
            ));
        };
        let credential =
            raw.to_str().map_err(|_| "not ASCII").and_then(|s| Credential::parse(s).map_err(|e| e.0)).map_err(
                |why| {
                    self.refuse(
                        AuthFailure::Malformed,
                        Status::unauthenticated(format!("auth_failures: malformed credential: {why}")),
                    )
                },
            )?;
        let now = now_ms();
        let window = self.config.credential_window_ms;
        if credential.issued_ms.abs_diff(now) > window {
            return Err(self.refuse(
                AuthFailure::Expired,
                Status::unauthenticated(format!(
                    "auth_failures: credential issued at {} ms is outside the {window} ms window around the server clock {now} ms",
                    credential.issued_ms
                )),
            ));
        }
        credential.verify(method, session).map_err(|e| {
            self.refuse(
                AuthFailure::BadSignature,
                Status::unauthenticated(format!("auth_failures: credential for {method}: {e}")),
            )
        })?;
        Ok(credential)
    }

    fn check_need(
        &self,
        key: &AuthorKey,
        method: &str,
        session: Option<&SessionId>,
        need: Need,
        store: &Store,
    ) -> Result<(), Status> {
        if need == Need::Admin || session.is_none() {
            if self.config.admins.contains(key) {
                return Ok(());
            }
            return Err(self.refuse(
                AuthFailure::NotAdmin,
                Status::permission_denied(format!("auth_failures: {method} needs a service admin key")),
            ));
        }
        let session = session.expect("checked above");
        let role = match store.role(session, key) {
            Ok((role, _)) => role,
            Err(ReadError::UnknownSession { .. }) => {
                return Err(self.refuse(AuthFailure::UnknownSession, not_found(session)));
            }
            Err(e) => return Err(read_status(&e)),
        };
        match (need, role) {
            (_, Role::None) => Err(self.refuse(AuthFailure::NoRole, not_found(session))),
            (Need::Auditor, Role::Auditor | Role::Owner) | (Need::Member, _) => Ok(()),
            (_, role) => Err(self.refuse(
                AuthFailure::RoleTooLow,
                Status::permission_denied(format!(
                    "auth_failures: {method} needs the auditor or owner role; {key} is {}",
                    role.name()
                )),
            )),
        }
    }

    /// Remembers the credential until its window has passed; refuses a second use.
    fn remember(&self, c: &Credential) -> Result<(), Status> {
        let now = now_ms();
        let mut r = self.remembered.lock().expect("credentials lock");
        // Forget the credentials whose window has passed: they are refused as expired anyway.
        let expired: Vec<u64> = r.by_expiry.range(..now).map(|(t, _)| *t).collect();
        for t in expired {
            for id in r.by_expiry.remove(&t).unwrap_or_default() {
                r.seen.remove(&id);
            }
        }
        let id = (c.key, c.nonce);
        if r.seen.contains(&id) {
            return Err(self.refuse(
                AuthFailure::Replayed,
                Status::unauthenticated("auth_failures: credential already used; make a fresh one for every call"),
            ));
        }
        if r.seen.len() >= self.config.max_remembered_credentials {
            return Err(self.refuse(
                AuthFailure::Busy,
                Status::unavailable("auth_failures: too many credentials in their window; retry shortly"),
            ));
        }
        r.seen.insert(id);
        r.by_expiry.entry(c.issued_ms.saturating_add(self.config.credential_window_ms)).or_default().push(id);
        Ok(())
    }

    /// Takes a read token and, for streams, a stream slot.
    fn take_limits(&self, key: &AuthorKey, stream: bool) -> Result<Option<StreamSlot>, Status> {
        let now = now_ms();
        let (rate, burst) = (self.config.reads_per_sec, self.config.reads_burst);
        let mut keys = self.keys.lock().expect("keys lock");
        if keys.len() >= MAX_TRACKED_KEYS && !keys.contains_key(key) {
            // Bounded: forget keys that are idle (no open stream, bucket refilled).
            keys.retain(|_, k| {
                k.streams.load(Ordering::Acquire) > 0
                    || k.tokens + (now.saturating_sub(k.refilled_ms) as f64 / 1000.0) * rate < burst
            });
        }
        let k = keys.entry(*key).or_insert_with(|| KeyState {
            streams: Arc::new(AtomicUsize::new(0)),
            tokens: burst,
            refilled_ms: now,
        });
        k.tokens = (k.tokens + (now.saturating_sub(k.refilled_ms) as f64 / 1000.0) * rate).min(burst);
        k.refilled_ms = now;
        if k.tokens < 1.0 {
            let retry_ms = ((1.0 - k.tokens) / rate * 1000.0).ceil() as u64;
            return Err(self.limit(
                ReadLimit::Rate,
                Status::resource_exhausted(format!(
                    "read_limit_drops: {key} is over {rate} reads/s; retry in {retry_ms} ms"
                )),
            ));
        }
        if stream {
            let open = k.streams.load(Ordering::Acquire);
            if open >= self.config.max_streams_per_key {
                return Err(self.limit(
                    ReadLimit::Streams,
                    Status::resource_exhausted(format!(
                        "read_limit_drops: {key} already has {open} streams open (limit {})",
                        self.config.max_streams_per_key
                    )),
                ));
            }
            k.streams.fetch_add(1, Ordering::AcqRel);
        }
        k.tokens -= 1.0;
        Ok(stream.then(|| StreamSlot(k.streams.clone())))
    }
}
