//! The store: opening, the append pipeline (verify stage → group commit), and reads.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering::Relaxed};
use std::sync::mpsc::{Receiver, RecvTimeoutError, SyncSender, TryRecvError, sync_channel};
use std::sync::{Arc, RwLock};
use std::thread::JoinHandle;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use ed25519_dalek::{Signer, SigningKey};
use sha2::Digest as _;
use theta_schemas::{AuthorKey, CommandKind, EntityId, Envelope, LogEntry, SessionId};

use crate::backend::{Backend, BackendError, MemoryBackend, SledBackend, WriteBatch};
use crate::blocks;
use crate::config::{Durability, StoreConfig, VerifyOnOpen};
use crate::error::{AppendError, OpenError, ReadError, RejectionCode};
use crate::index::{IndexJob, IndexRead, Wanted};
use crate::keys;
use crate::merkle::{self, Frontier, Hash, Prover};
use crate::metrics::{Metrics, MetricsSnapshot};
use crate::session::{Meta, SessionState};
use crate::validate::validate;
use crate::verifier::{self, Checked, KeyCache};

/// Domain prefix of signed tree heads.
pub const TREE_HEAD_DOMAIN: &[u8] = b"theta/tree-head/v1\0";

/// The acknowledgement of an accepted append. Returned only once the entry is durable (in
/// the default [`Durability::Sync`] mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The session.
    pub session: SessionId,
    /// The entry's seq.
    pub seq: u64,
    /// The command's Lamport timestamp.
    pub lamport: u64,
    /// The command's nonce.
    pub nonce: u64,
    /// The entry hash.
    pub entry_hash: Hash,
    /// Size of the tree the entry was committed in (≥ `seq`: the whole group commit).
    pub tree_size: u64,
    /// Root of that tree; `InclusionProof(seq, tree_size)` proves the entry against it.
    pub tree_root: Hash,
}

/// A session's head, as readers see it (durable entries only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The session.
    pub session: SessionId,
    /// Seq of the last entry (= tree size).
    pub seq: u64,
    /// The session's Lamport clock.
    pub clock: u64,
    /// Merkle root over entries `1..=seq`.
    pub tree_root: Hash,
    /// Hash of the last entry (zeros when empty).
    pub last_entry_hash: Hash,
    /// The session's name.
    pub name: String,
}

/// A tree head signed by the store's service key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTreeHead {
    /// The session.
    pub session: SessionId,
    /// Tree size.
    pub tree_size: u64,
    /// Root.
    pub root: Hash,
    /// Store clock when signed, Unix ms.
    pub timestamp_ms: u64,
    /// Ed25519 signature over [`SignedTreeHead::message`].
    pub signature: [u8; 64],
    /// The service's public key.
    pub public_key: [u8; 32],
}

impl SignedTreeHead {
    /// The signed bytes: `TREE_HEAD_DOMAIN || session || tree_size (BE) || timestamp_ms (BE) || root`.
    pub fn message(session: &SessionId, tree_size: u64, timestamp_ms: u64, root: &Hash) -> Vec<u8> {
        let mut m = Vec::with_capacity(TREE_HEAD_DOMAIN.len() + 64);
        m.extend_from_slice(TREE_HEAD_DOMAIN);
        m.extend_from_slice(&session.0);
        m.extend_from_slice(&tree_size.to_be_bytes());
        m.extend_from_slice(&timestamp_ms.to_be_bytes());
        m.extend_from_slice(root);
        m
    }

    /// Checks the signature under `public_key` (the signing rule of every path).
    pub fn verify(&self) -> bool {
        let Ok(key) = theta_schemas::signing::public_key(&self.public_key) else {
            return false;
        };
        let msg = SignedTreeHead::message(&self.session, self.tree_size, self.timestamp_ms, &self.root);
        theta_schemas::signing::verify(&key, &msg, &self.signature).is_ok()
    }
}

/// One record of the rejection trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Position in its trail (monotonic).
    pub index: u64,
    /// Store clock, Unix ms.
    pub time_ms: u64,
    /// The reason code.
    pub code: RejectionCode,
    /// The author, when the envelope decoded.
    pub author: Option<AuthorKey>,
    /// SHA-256 of the envelope bytes as received.
    pub envelope_hash: Hash,
    /// The error message.
    pub reason: String,
}

impl Rejection {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(73 + self.reason.len());
        v.extend_from_slice(&self.time_ms.to_be_bytes());
        v.push(self.code as u8);
        v.extend_from_slice(&self.author.unwrap_or_default().0);
        v.extend_from_slice(&self.envelope_hash);
        v.extend_from_slice(self.reason.as_bytes());
        v
    }

    pub(crate) fn decode(index: u64, b: &[u8]) -> Option<Rejection> {
        if b.len() < 73 {
            return None;
        }
        let author = AuthorKey(b[9..41].try_into().ok()?);
        Some(Rejection {
            index,
            time_ms: keys::be_u64(b, 0),
            code: RejectionCode::from_u8(b[8])?,
            author: (author != AuthorKey::default()).then_some(author),
            envelope_hash: b[41..73].try_into().ok()?,
            reason: String::from_utf8_lossy(&b[73..]).into_owned(),
        })
    }
}

/// An RFC 6962 inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    /// The entry's seq (leaf index + 1).
    pub seq: u64,
    /// Tree size the proof is for.
    pub tree_size: u64,
    /// The entry's leaf hash.
    pub leaf_hash: Hash,
    /// Audit path, bottom up.
    pub path: Vec<Hash>,
    /// Root of the tree of `tree_size`.
    pub root: Hash,
}

impl InclusionProof {
    /// Checks the proof against its own root.
    pub fn verify(&self) -> bool {
        merkle::verify_inclusion(&self.leaf_hash, self.seq - 1, self.tree_size, &self.path, &self.root)
    }
}

/// Why a trusted import failed. Nothing of the failing call is written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImportError {
    /// An entry does not continue the chain (seq, previous hash or its own hash).
    #[error("entry at seq {seq} does not continue the chain: {detail}")]
    Chain {
        /// The entry's position.
        seq: u64,
        /// What does not match.
        detail: String,
    },
    /// An entry's command fails a check it must have passed when first accepted.
    #[error("entry at seq {seq} is not acceptable: {error}")]
    Rejected {
        /// The entry's position.
        seq: u64,
        /// The check that failed.
        #[source]
        error: AppendError,
    },
}

#[derive(Debug, Clone)]
struct Corruption {
    seq: u64,
    detail: String,
}

#[derive(Debug, Clone)]
struct View {
    head: Head,
    corrupted: Option<Corruption>,
}

/// State shared by the store handle, the pipeline threads and readers.
struct Shared {
    backend: Arc<dyn Backend>,
    config: StoreConfig,
    metrics: Metrics,
    views: RwLock<BTreeMap<SessionId, View>>,
    service_key: SigningKey,
    closing: AtomicBool,
    listeners: RwLock<Vec<CommitListener>>,
    command_listeners: RwLock<Vec<CommandListener>>,
    /// Told about commands once sequenced (applied, not yet durable).
    sequenced_listeners: RwLock<Vec<CommandListener>>,
    /// A command or sequenced listener exists: the committer keeps each accepted command's
    /// decoded body.
    wants_commands: AtomicBool,
    /// Durable entries go to the indexer thread (`index`).
    indexer: std::sync::Mutex<Option<std::sync::mpsc::Sender<IndexJob>>>,
    /// A write or flush failed: nothing more is written until the store is reopened.
    failed: AtomicBool,
    /// Decoded blocks for point reads.
    blocks: Arc<blocks::BlockCache>,
}

/// Called by the commit thread with the new heads of the sessions a durable commit changed.
pub type CommitListener = Arc<dyn Fn(&[Head]) + Send + Sync>;

/// What one durable commit added to one session: its new head and the accepted commands,
/// already decoded, so a reader can fold them without reading the log back.
#[derive(Debug, Clone)]
pub struct Committed {
    /// The session's head after the commit.
    pub head: Head,
    /// `(seq, body)` of the commands appended, in seq order. Empty for an import (restored
    /// entries): read those from the log.
    pub commands: Arc<[(u64, theta_schemas::CommandBody)]>,
}

/// Called by the commit thread with every durable commit's decoded commands, per session.
pub type CommandListener = Arc<dyn Fn(&[Committed]) + Send + Sync>;

/// A caller's answer: called once with an append's outcome and the command's nonce (0 when
/// the envelope did not decode).
type Reply = Box<dyn FnOnce(Result<Receipt, AppendError>, u64) + Send>;

/// Calls its callback exactly once: with the outcome, or with `ShuttingDown` if dropped.
struct Responder {
    reply: Option<Reply>,
    /// The command's nonce, once the verify stage decoded it.
    nonce: u64,
}

impl Responder {
    fn new(reply: Reply) -> Responder {
        Responder { reply: Some(reply), nonce: 0 }
    }

    fn send(mut self, r: Result<Receipt, AppendError>) {
        if let Some(f) = self.reply.take() {
            f(r, self.nonce)
        }
    }
}

impl Drop for Responder {
    fn drop(&mut self) {
        if let Some(f) = self.reply.take() {
            f(Err(AppendError::ShuttingDown), self.nonce)
        }
    }
}

struct AppendJob {
    bytes: Vec<u8>,
    /// The session the submitter's connection is for: a command naming another is refused.
    session: Option<SessionId>,
    reply: Responder,
    submitted: Instant,
}

struct ImportJob {
    session: SessionId,
    entries: Vec<LogEntry>,
    /// Each entry decoded, validated and its hash checked (by a verify worker).
    prepared: Vec<Prepared>,
    /// The chunk's log blocks, compressed by the worker: (first seq, entries, stored block).
    compressed: Vec<(u64, usize, Vec<u8>)>,
    reply: ImportReply,
}

/// Called once with an import's outcome (the head after it), once it is durable.
type ImportReply = Box<dyn FnOnce(Result<u64, ImportError>) + Send>;

/// An imported entry after the parallel stage: its body (or why it does not decode or
/// validate), and whether its stored hash matches its contents.
struct Prepared {
    body: Result<theta_schemas::CommandBody, AppendError>,
    hash_ok: bool,
    /// The entry's stored encoding and its Merkle leaf hash.
    encoded: (Vec<u8>, Hash),
}

/// Decodes, validates and hashes imported entries ahead of the committer's ordered pass (chain
/// links, the stateful checks). Runs on a verify worker, so consecutive chunks are prepared on
/// every core at once; a chunk larger than [`SPLIT_IMPORT`] is also split over the cores.
fn prepare_import(session: &SessionId, entries: &[LogEntry]) -> Vec<Prepared> {
    let one = |e: &LogEntry| Prepared {
        body: Envelope::open(&e.envelope).map_err(AppendError::Malformed).and_then(|(_, body)| {
            validate(&body)?;
            Ok(body)
        }),
        hash_ok: merkle::entry_hash(session, e.seq, e.receipt_time_ms, &e.prev_hash, &e.envelope) == e.entry_hash,
        encoded: (e.encode(), merkle::leaf_hash(&e.entry_hash)),
    };
    let threads = if entries.len() > SPLIT_IMPORT { crate::cores() } else { 1 };
    crate::par_map(entries, threads, one)
}

/// An import chunk's log blocks, compressed ahead of the committer the way
/// [`SessionState::finish`] would (used by it when the whole chunk is accepted).
fn compress_import(entries: &[LogEntry], prepared: &[Prepared], max_block_bytes: usize) -> Vec<(u64, usize, Vec<u8>)> {
    let Some(first) = entries.first().map(|e| e.seq) else { return Vec::new() };
    let encoded: Vec<&[u8]> = prepared.iter().map(|p| p.encoded.0.as_slice()).collect();
    let blocks: Vec<(u64, &[&[u8]])> = crate::blocks::layout(&encoded, max_block_bytes)
        .into_iter()
        .map(|r| (first + r.start as u64, &encoded[r]))
        .collect();
    blocks.iter().map(|(f, e)| (*f, e.len(), crate::blocks::encode(e))).collect()
}

/// Import chunks larger than this are prepared on every core (smaller ones on one worker).
const SPLIT_IMPORT: usize = 16_384;

/// Rejection records restored from a backup, appended to a trail (`None`: the global one).
struct TrailJob {
    session: Option<SessionId>,
    records: Vec<Rejection>,
    reply: ImportReply,
}

enum Job {
    Append(AppendJob),
    Import(ImportJob),
    Trail(TrailJob),
    Shutdown(SyncSender<()>),
}

enum Stage2 {
    Appends(Vec<(Checked, Responder, Instant)>),
    Import(ImportJob),
    Trail(TrailJob),
    Shutdown(SyncSender<()>),
}

/// The log store. Cheap to share behind an `Arc`; every method takes `&self`.
pub struct Store {
    shared: Arc<Shared>,
    tx: SyncSender<Job>,
    threads: std::sync::Mutex<Vec<JoinHandle<()>>>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

impl Store {
    /// Opens (or creates) a store in the directory `path`: a sled database and the service
    /// key file `service.key`. Verifies every session as `config.verify_on_open` says; a
    /// session that fails is reported by [`Store::corrupted`] and refuses to serve.
    pub fn open(path: impl AsRef<Path>, config: StoreConfig) -> Result<Store, OpenError> {
        let path = path.as_ref();
        let backend = SledBackend::open(path, config.cache_capacity_bytes)?;
        let key = service_key(&path.join("service.key"))?;
        Store::with_backend(Arc::new(backend), config, key)
    }

    /// A store that keeps everything in memory (tests, benchmarks of the logic).
    pub fn open_in_memory(config: StoreConfig) -> Store {
        let key = SigningKey::generate(&mut rand::rngs::OsRng);
        Store::with_backend(Arc::new(MemoryBackend::new()), config, key).expect("the memory backend cannot fail")
    }

    /// Opens a store over any backend.
    pub fn with_backend(
        backend: Arc<dyn Backend>,
        config: StoreConfig,
        service_key: SigningKey,
    ) -> Result<Store, OpenError> {
        check_format(&*backend)?;
        let mut states = BTreeMap::new();
        let mut views = BTreeMap::new();
        let metas: Vec<(SessionId, Vec<u8>)> = backend
            .range(&[keys::tag::META], &[keys::tag::META + 1])
            .map(|kv| kv.map(|(k, v)| (SessionId(k[1..17].try_into().expect("session key")), v)))
            .collect::<Result<_, _>>()?;
        for (id, raw) in metas {
            let corrupt = |seq: u64, detail: String| View {
                head: Head {
                    session: id,
                    seq,
                    clock: 0,
                    tree_root: [0; 32],
                    last_entry_hash: [0; 32],
                    name: String::new(),
                },
                corrupted: Some(Corruption { seq, detail }),
            };
            let Some(meta) = Meta::decode(&raw) else {
                views.insert(id, corrupt(0, "unreadable session header".into()));
                continue;
            };
            let mut state = match SessionState::load(&*backend, id, meta) {
                Ok(s) => s,
                Err(ReadError::Corrupted { seq, detail, .. }) => {
                    views.insert(id, corrupt(seq, detail));
                    continue;
                }
                Err(e) => {
                    views.insert(id, corrupt(0, e.to_string()));
                    continue;
                }
            };
            let from = match config.verify_on_open {
                VerifyOnOpen::Full => 1,
                VerifyOnOpen::Tail => state.meta.verified_upto + 1,
            };
            match verify_session(&*backend, &state, from) {
                Ok(()) => {
                    if state.meta.verified_upto != state.meta.head_seq {
                        state.meta.verified_upto = state.meta.head_seq;
                        let mut b = WriteBatch::default();
                        b.put(keys::meta(&id), state.meta.encode());
                        backend.apply(b)?;
                    }
                    views.insert(id, View { head: head_of(&state), corrupted: None });
                    states.insert(id, state);
                }
                Err(c) => {
                    views.insert(id, corrupt(c.seq, c.detail));
                }
            }
        }
        let global_trail_next = last_key_u64(&*backend, keys::tag::TRAIL, &SessionId::default())?.map_or(0, |i| i + 1);
        // The indexes: catch up where the watermark lags the head (after a crash, or a store
        // written before the runs were).
        let (index_tx, index_rx) = std::sync::mpsc::channel::<IndexJob>();
        for (id, state) in &states {
            // An unreadable watermark counts as none: the indexer rebuilds from the start.
            let w = crate::index::watermark(&*backend, id).unwrap_or(0);
            if w < state.meta.head_seq {
                let _ = index_tx.send(IndexJob::CatchUp(*id, w + 1, state.meta.head_seq));
            }
        }
        let config_block_cache = config.block_cache_bytes;
        let i_backend = backend.clone();
        let indexer = std::thread::Builder::new()
            .name("theta-index".into())
            .spawn(move || crate::index::run(i_backend, index_rx))
            .expect("spawn indexer thread");
        let shared = Arc::new(Shared {
            backend,
            config,
            metrics: Metrics::default(),
            views: RwLock::new(views),
            service_key,
            closing: AtomicBool::new(false),
            listeners: RwLock::new(Vec::new()),
            command_listeners: RwLock::new(Vec::new()),
            sequenced_listeners: RwLock::new(Vec::new()),
            wants_commands: AtomicBool::new(false),
            indexer: std::sync::Mutex::new(Some(index_tx)),
            failed: AtomicBool::new(false),
            blocks: Arc::new(blocks::BlockCache::new(config_block_cache)),
        });
        let (tx, rx) = sync_channel::<Job>(shared.config.queue_capacity.max(1));
        let n = shared.config.verify_threads.max(1);
        let (tx2, rx2) = sync_channel::<(u64, Vec<Stage2>)>(n + 1);
        let mut threads = Vec::new();
        let (ready_tx, ready_rx) = sync_channel::<usize>(n);
        let order = Arc::new(Order::default());
        let stopped = Arc::new(AtomicBool::new(false));
        let mut workers = Vec::with_capacity(n);
        for id in 0..n {
            let (w_tx, w_rx) = sync_channel::<WorkBatch>(1);
            workers.push(w_tx);
            let (shared, ready, tx2, stopped) = (shared.clone(), ready_tx.clone(), tx2.clone(), stopped.clone());
            threads.push(
                std::thread::Builder::new()
                    .name("theta-verify".into())
                    .spawn(move || verify_worker(shared, id, w_rx, ready, tx2, stopped))
                    .expect("spawn verification worker"),
            );
        }
        drop((ready_tx, tx2));
        let (d_shared, d_order) = (shared.clone(), order.clone());
        threads.push(
            std::thread::Builder::new()
                .name("theta-dispatch".into())
                .spawn(move || dispatch_loop(d_shared, rx, workers, ready_rx, d_order, stopped))
                .expect("spawn dispatcher thread"),
        );
        // Groups applied while a flush runs wait for the next one, which covers them all.
        let (flush_tx, flush_rx) = sync_channel::<Flush>(FLUSH_QUEUE);
        let f_shared = shared.clone();
        let flusher_thread = std::thread::Builder::new()
            .name("theta-flush".into())
            .spawn(move || flush_loop(f_shared, flush_rx))
            .expect("spawn flusher thread");
        let committer = Committer {
            shared: shared.clone(),
            states,
            global_trail_next,
            dirty_since: None,
            creations: std::collections::HashMap::new(),
            flusher: Some(flush_tx),
            flusher_thread: Some(flusher_thread),
        };
        let committer = std::thread::Builder::new()
            .name("theta-commit".into())
            .spawn(move || committer.run(rx2, order))
            .expect("spawn committer thread");
        threads.extend([committer, indexer]);
        Ok(Store { shared, tx, threads: std::sync::Mutex::new(threads) })
    }

    /// Submits an envelope; `reply` is called exactly once with the outcome, from a store
    /// thread (keep it short: send it to a channel). Blocks while the submission queue is full.
    pub fn submit(&self, envelope: Vec<u8>, reply: impl FnOnce(Result<Receipt, AppendError>) + Send + 'static) {
        self.submit_job(envelope, None, Box::new(move |r, _| reply(r)));
    }

    /// [`Store::submit`] for a connection bound to `session` (a live link): a command naming
    /// another session is refused as invalid, and `reply` gets the command's nonce with the
    /// outcome (0 when the envelope does not decode), so the caller never decodes it itself.
    pub fn submit_in(
        &self,
        session: SessionId,
        envelope: Vec<u8>,
        reply: impl FnOnce(Result<Receipt, AppendError>, u64) + Send + 'static,
    ) {
        self.submit_job(envelope, Some(session), Box::new(reply));
    }

    fn submit_job(&self, envelope: Vec<u8>, session: Option<SessionId>, reply: Reply) {
        let reply = Responder::new(reply);
        if self.shared.closing.load(Relaxed) {
            return reply.send(Err(AppendError::ShuttingDown));
        }
        self.shared.metrics.queue_depth.fetch_add(1, Relaxed);
        let job = Job::Append(AppendJob { bytes: envelope, session, reply, submitted: Instant::now() });
        if let Err(e) = self.tx.send(job) {
            self.shared.metrics.queue_depth.fetch_sub(1, Relaxed);
            if let Job::Append(j) = e.0 {
                j.reply.send(Err(AppendError::ShuttingDown));
            }
        }
    }

    /// Appends one envelope and waits for its receipt.
    pub fn append(&self, envelope: &[u8]) -> Result<Receipt, AppendError> {
        let (tx, rx) = sync_channel(1);
        self.submit(envelope.to_vec(), move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or(Err(AppendError::ShuttingDown))
    }

    /// Appends several envelopes (group-committed together) and waits for every outcome, in
    /// order. Each one is accepted or rejected on its own.
    pub fn append_batch(&self, envelopes: Vec<Vec<u8>>) -> Vec<Result<Receipt, AppendError>> {
        let receivers: Vec<_> = envelopes
            .into_iter()
            .map(|e| {
                let (tx, rx) = sync_channel(1);
                self.submit(e, move |r| {
                    let _ = tx.send(r);
                });
                rx
            })
            .collect();
        receivers.into_iter().map(|rx| rx.recv().unwrap_or(Err(AppendError::ShuttingDown))).collect()
    }

    /// Trusted import (restore from a backup): appends entries that were already accepted
    /// elsewhere, keeping their seq, receipt time and hashes. Signatures and rate limits are
    /// not checked; chain continuity and every other rule are. Durable like appends.
    pub fn import(&self, session: SessionId, entries: Vec<LogEntry>) -> Result<u64, ImportError> {
        let (tx, rx) = sync_channel(1);
        self.submit_import(session, entries, move |r| {
            let _ = tx.send(r);
        });
        rx.recv().unwrap_or(Err(ImportError::Rejected { seq: 0, error: AppendError::ShuttingDown }))
    }

    /// [`Store::import`] without waiting: `reply` is called once, from a store thread, with the
    /// head after the entries once they are durable. Imports of a session are applied in the
    /// order they are submitted, so a restore can keep a few chunks in flight (the next one is
    /// checked while the previous one is flushed). Decoding, validation and hashing run on every
    /// core in the caller's thread first.
    pub fn submit_import(
        &self,
        session: SessionId,
        entries: Vec<LogEntry>,
        reply: impl FnOnce(Result<u64, ImportError>) + Send + 'static,
    ) {
        let shutting = || ImportError::Rejected { seq: 0, error: AppendError::ShuttingDown };
        if self.shared.closing.load(Relaxed) {
            return reply(Err(shutting()));
        }
        // A verify worker prepares it.
        let job = ImportJob { session, entries, prepared: Vec::new(), compressed: Vec::new(), reply: Box::new(reply) };
        if let Err(e) = self.tx.send(Job::Import(job))
            && let Job::Import(job) = e.0
        {
            (job.reply)(Err(shutting()));
        }
    }

    /// Appends rejection records (restored from a backup) to a session's trail, or with `None`
    /// to the global one; their indexes are assigned anew. Returns how many were written.
    pub fn import_rejections(&self, session: Option<SessionId>, records: Vec<Rejection>) -> Result<u64, ImportError> {
        let (tx, rx) = sync_channel(1);
        let reply: ImportReply = Box::new(move |r| {
            let _ = tx.send(r);
        });
        let shutting = || ImportError::Rejected { seq: 0, error: AppendError::ShuttingDown };
        if self.shared.closing.load(Relaxed) {
            return Err(shutting());
        }
        if let Err(e) = self.tx.send(Job::Trail(TrailJob { session, records, reply }))
            && let Job::Trail(t) = e.0
        {
            (t.reply)(Err(shutting()));
        }
        rx.recv().unwrap_or(Err(shutting()))
    }

    /// Stops accepting appends, answers every queued one, flushes and joins the threads.
    /// Idempotent; also run on drop.
    pub fn close(&self) {
        if self.shared.closing.swap(true, Relaxed) {
            return;
        }
        let (tx, rx) = sync_channel(1);
        if self.tx.send(Job::Shutdown(tx)).is_ok() {
            let _ = rx.recv();
        }
        // The indexer writes what it gathered and stops when its channel closes.
        self.shared.indexer.lock().expect("indexer lock").take();
        for t in self.threads.lock().expect("threads lock").drain(..) {
            let _ = t.join();
        }
    }

    /// Adds a function told about every durable commit. It runs on a store thread (the
    /// flusher's, or the committer's): keep it short (send to a channel).
    pub fn add_commit_listener(&self, f: impl Fn(&[Head]) + Send + Sync + 'static) {
        self.shared.listeners.write().expect("listener lock").push(Arc::new(f));
    }

    /// Adds a function told about every durable commit with its accepted commands, decoded
    /// (the verify workers decoded them already). It runs on a store thread: keep it short.
    /// Commits made before it was added are not repeated.
    pub fn add_command_listener(&self, f: impl Fn(&[Committed]) + Send + Sync + 'static) {
        self.shared.command_listeners.write().expect("listener lock").push(Arc::new(f));
        self.shared.wants_commands.store(true, Relaxed);
    }

    /// Adds a function told about every appended group's commands as soon as they are
    /// sequenced: written to the backend in order, before the flush that makes them durable.
    /// What it is told may still be lost (a failed flush, a crash before it); nobody got a
    /// receipt for it yet. Imports are not reported here. It runs on the commit thread, on the
    /// path of every append: keep it very short.
    pub fn add_sequenced_listener(&self, f: impl Fn(&[Committed]) + Send + Sync + 'static) {
        self.shared.sequenced_listeners.write().expect("listener lock").push(Arc::new(f));
        self.shared.wants_commands.store(true, Relaxed);
    }

    /// The store's telemetry.
    pub fn metrics(&self) -> MetricsSnapshot {
        self.shared.metrics.snapshot()
    }

    /// The configuration in force.
    pub fn config(&self) -> &StoreConfig {
        &self.shared.config
    }

    /// The public key that signs tree heads.
    pub fn service_public_key(&self) -> [u8; 32] {
        self.shared.service_key.verifying_key().to_bytes()
    }

    /// Every session with its head, in session-id order (corrupted ones excluded; see
    /// [`Store::corrupted`]).
    pub fn sessions(&self) -> Vec<Head> {
        let views = self.shared.views.read().expect("views lock");
        views.values().filter(|v| v.corrupted.is_none()).map(|v| v.head.clone()).collect()
    }

    /// Sessions that failed verification: (session, first bad seq, what failed).
    pub fn corrupted(&self) -> Vec<(SessionId, u64, String)> {
        let views = self.shared.views.read().expect("views lock");
        views.iter().filter_map(|(id, v)| v.corrupted.as_ref().map(|c| (*id, c.seq, c.detail.clone()))).collect()
    }

    fn view(&self, session: &SessionId) -> Result<Head, ReadError> {
        let views = self.shared.views.read().expect("views lock");
        match views.get(session) {
            None => Err(ReadError::UnknownSession { session: *session }),
            Some(View { corrupted: Some(c), .. }) => {
                Err(ReadError::Corrupted { session: *session, seq: c.seq, detail: c.detail.clone() })
            }
            Some(v) => Ok(v.head.clone()),
        }
    }

    /// The session's durable head.
    pub fn head(&self, session: &SessionId) -> Result<Head, ReadError> {
        self.view(session)
    }

    /// The current role of `key` in `session` ([`Role::None`] without a grant), and the head seq.
    pub fn role(&self, session: &SessionId, key: &AuthorKey) -> Result<(theta_schemas::Role, u64), ReadError> {
        let head = self.view(session)?;
        let role = self
            .shared
            .backend
            .get(&keys::member(session, key))?
            .and_then(|v| v.first().and_then(|b| theta_schemas::Role::ALL.get(usize::from(*b)).copied()))
            .unwrap_or(theta_schemas::Role::None);
        Ok((role, head.seq))
    }

    /// One entry.
    pub fn entry(&self, session: &SessionId, seq: u64) -> Result<LogEntry, ReadError> {
        let head = self.view(session)?;
        if seq == 0 || seq > head.seq {
            return Err(ReadError::OutOfRange { what: "seq", value: seq, head: head.seq });
        }
        blocks::read_entry(&*self.shared.backend, session, seq, Some(&self.shared.blocks))
    }

    /// Entries with seq in `from..=to` (clamped to the head), streamed from storage.
    pub fn read_range(&self, session: &SessionId, from: u64, to: u64) -> Result<Entries, ReadError> {
        let head = self.view(session)?;
        let (from, to) = (from.max(1), to.min(head.seq));
        let cursor = blocks::Cursor::new(&*self.shared.backend, session, from, to)?;
        Ok(Entries { inner: EntriesInner::Direct(cursor) })
    }

    fn read_index(&self, session: &SessionId, wanted: Wanted, from: u64, to: u64) -> Result<Entries, ReadError> {
        let head = self.view(session)?;
        let read = IndexRead::new(
            self.shared.backend.clone(),
            self.shared.blocks.clone(),
            *session,
            wanted,
            from,
            to.min(head.seq),
        )?;
        Ok(Entries { inner: EntriesInner::Index(read) })
    }

    /// Entries signed by `author` with seq in `from..=to`, through the author index.
    pub fn read_by_author(
        &self,
        session: &SessionId,
        author: &AuthorKey,
        from: u64,
        to: u64,
    ) -> Result<Entries, ReadError> {
        self.read_index(session, Wanted::Author(*author), from, to)
    }

    /// Entries whose scope is `entity`, with seq in `from..=to`, through the entity index.
    pub fn read_by_entity(
        &self,
        session: &SessionId,
        entity: EntityId,
        from: u64,
        to: u64,
    ) -> Result<Entries, ReadError> {
        self.read_index(session, Wanted::Entity(entity), from, to)
    }

    /// Waits until the indexer has written everything handed to it so far (tests, and tools
    /// that want the runs on disk).
    pub fn sync_indexes(&self) {
        let (tx, rx) = std::sync::mpsc::channel();
        let sent = match self.shared.indexer.lock().expect("indexer lock").as_ref() {
            Some(i) => i.send(IndexJob::Drain(tx)).is_ok(),
            None => false,
        };
        if sent {
            let _ = rx.recv();
        }
    }

    /// The rejection trail of a session (or, with `None`, the global trail of rejections that
    /// named no known session), oldest first; at most `rejection_trail_entries` records.
    pub fn rejections(&self, session: Option<&SessionId>) -> Result<Vec<Rejection>, ReadError> {
        let id = match session {
            Some(s) => {
                self.view(s)?;
                *s
            }
            None => SessionId::default(),
        };
        let p = keys::prefix(keys::tag::TRAIL, &id);
        let mut out = Vec::new();
        for kv in self.shared.backend.range(&p, &keys::prefix_end(&p)) {
            let (k, v) = kv?;
            let index = keys::be_u64(&k, 17);
            if let Some(r) = Rejection::decode(index, &v) {
                out.push(r);
            }
        }
        Ok(out)
    }

    fn prover(&self, session: SessionId) -> Prover<impl FnMut(u8, u64) -> Result<Hash, ReadError> + '_> {
        let (backend, cache) = (&*self.shared.backend, &self.shared.blocks);
        Prover::new(move |level, index| blocks::node_at(backend, &session, level, index, Some(cache)))
    }

    /// The Merkle root of the first `size` entries.
    pub fn tree_root(&self, session: &SessionId, size: u64) -> Result<Hash, ReadError> {
        let head = self.view(session)?;
        if size > head.seq {
            return Err(ReadError::OutOfRange { what: "tree size", value: size, head: head.seq });
        }
        if size == 0 {
            return Ok(merkle::empty_root());
        }
        self.prover(*session).subtree(0, size)
    }

    /// An inclusion proof of entry `seq` in the tree of `tree_size` entries.
    pub fn inclusion_proof(&self, session: &SessionId, seq: u64, tree_size: u64) -> Result<InclusionProof, ReadError> {
        let head = self.view(session)?;
        if tree_size > head.seq {
            return Err(ReadError::OutOfRange { what: "tree size", value: tree_size, head: head.seq });
        }
        if seq == 0 || seq > tree_size {
            return Err(ReadError::OutOfRange { what: "seq", value: seq, head: tree_size });
        }
        let mut prover = self.prover(*session);
        let path = prover.inclusion(seq - 1, tree_size)?;
        let leaf_hash = prover.subtree(seq - 1, seq)?;
        let root = prover.subtree(0, tree_size)?;
        Ok(InclusionProof { seq, tree_size, leaf_hash, path, root })
    }

    /// A consistency proof between the trees of `old_size` and `new_size` entries.
    pub fn consistency_proof(&self, session: &SessionId, old_size: u64, new_size: u64) -> Result<Vec<Hash>, ReadError> {
        let head = self.view(session)?;
        if new_size > head.seq {
            return Err(ReadError::OutOfRange { what: "new size", value: new_size, head: head.seq });
        }
        if old_size > new_size {
            return Err(ReadError::OutOfRange { what: "old size", value: old_size, head: new_size });
        }
        self.prover(*session).consistency(old_size, new_size)
    }

    /// The current tree head, signed by the service key.
    pub fn signed_tree_head(&self, session: &SessionId) -> Result<SignedTreeHead, ReadError> {
        let head = self.view(session)?;
        let timestamp_ms = now_ms();
        let msg = SignedTreeHead::message(session, head.seq, timestamp_ms, &head.tree_root);
        Ok(SignedTreeHead {
            session: *session,
            tree_size: head.seq,
            root: head.tree_root,
            timestamp_ms,
            signature: self.shared.service_key.sign(&msg).to_bytes(),
            public_key: self.service_public_key(),
        })
    }

    /// Stores a projection checkpoint (a cache: it can always be rebuilt from the log).
    pub fn put_checkpoint(&self, session: &SessionId, seq: u64, bytes: Vec<u8>) -> Result<(), ReadError> {
        self.view(session)?;
        let mut b = WriteBatch::default();
        b.put(keys::checkpoint(session, seq), bytes);
        self.shared.backend.apply(b)?;
        Ok(())
    }

    /// The newest checkpoint at or below `seq`, if any.
    pub fn checkpoint_at_or_below(&self, session: &SessionId, seq: u64) -> Result<Option<(u64, Vec<u8>)>, ReadError> {
        self.view(session)?;
        let start = keys::checkpoint(session, 0);
        let end = keys::checkpoint(session, seq.saturating_add(1));
        match self.shared.backend.range_rev(&start, &end).next() {
            None => Ok(None),
            Some(kv) => {
                let (k, v) = kv?;
                Ok(Some((keys::be_u64(&k, 17), v)))
            }
        }
    }

    /// Deletes every checkpoint of a session; returns how many there were.
    pub fn delete_checkpoints(&self, session: &SessionId) -> Result<usize, ReadError> {
        self.view(session)?;
        let p = keys::prefix(keys::tag::CHECKPOINT, session);
        let mut b = WriteBatch::default();
        for kv in self.shared.backend.range(&p, &keys::prefix_end(&p)) {
            b.delete(kv?.0);
        }
        let n = b.len();
        self.shared.backend.apply(b)?;
        Ok(n)
    }
}

/// A handle on one session of a store: the same operations with the session fixed.
#[derive(Clone, Copy)]
pub struct Session<'a> {
    store: &'a Store,
    id: SessionId,
}

impl<'a> Session<'a> {
    /// The session id.
    pub fn id(&self) -> SessionId {
        self.id
    }

    /// Appends an envelope, which must name this session (else `Invalid`, nothing appended).
    pub fn append(&self, envelope: &[u8]) -> Result<Receipt, AppendError> {
        self.append_batch(vec![envelope.to_vec()]).pop().expect("one outcome")
    }

    /// Appends envelopes that must all name this session; one outcome each, in order.
    pub fn append_batch(&self, envelopes: Vec<Vec<u8>>) -> Vec<Result<Receipt, AppendError>> {
        let mut outcomes: Vec<Option<Result<Receipt, AppendError>>> = Vec::with_capacity(envelopes.len());
        let mut pass = Vec::new();
        for e in envelopes {
            match Envelope::open(&e) {
                Ok((_, body)) if body.session != self.id => outcomes.push(Some(Err(AppendError::Invalid {
                    kind: body.command.kind(),
                    reason: format!("names session {}, not {}", body.session, self.id),
                }))),
                _ => {
                    outcomes.push(None);
                    pass.push(e);
                }
            }
        }
        let mut results = self.store.append_batch(pass).into_iter();
        outcomes.into_iter().map(|o| o.unwrap_or_else(|| results.next().expect("one result per envelope"))).collect()
    }

    /// The durable head.
    pub fn head(&self) -> Result<Head, ReadError> {
        self.store.head(&self.id)
    }

    /// Entries with seq in `from..=to`.
    pub fn read_range(&self, from: u64, to: u64) -> Result<Entries, ReadError> {
        self.store.read_range(&self.id, from, to)
    }

    /// Entries signed by `author`.
    pub fn read_by_author(&self, author: &AuthorKey, from: u64, to: u64) -> Result<Entries, ReadError> {
        self.store.read_by_author(&self.id, author, from, to)
    }

    /// Entries whose scope is `entity`.
    pub fn read_by_entity(&self, entity: EntityId, from: u64, to: u64) -> Result<Entries, ReadError> {
        self.store.read_by_entity(&self.id, entity, from, to)
    }

    /// The rejection trail.
    pub fn rejections(&self) -> Result<Vec<Rejection>, ReadError> {
        self.store.rejections(Some(&self.id))
    }

    /// An inclusion proof of `seq` in the tree of `tree_size`.
    pub fn inclusion_proof(&self, seq: u64, tree_size: u64) -> Result<InclusionProof, ReadError> {
        self.store.inclusion_proof(&self.id, seq, tree_size)
    }

    /// A consistency proof between two tree sizes.
    pub fn consistency_proof(&self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, ReadError> {
        self.store.consistency_proof(&self.id, old_size, new_size)
    }

    /// The current tree head, signed by the service key.
    pub fn signed_tree_head(&self) -> Result<SignedTreeHead, ReadError> {
        self.store.signed_tree_head(&self.id)
    }
}

impl Store {
    /// A handle on one session (which need not exist yet: its first append may create it).
    pub fn session(&self, id: SessionId) -> Session<'_> {
        Session { store: self, id }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        self.close();
    }
}

fn head_of(state: &SessionState) -> Head {
    Head {
        session: state.id,
        seq: state.meta.head_seq,
        clock: state.meta.clock,
        tree_root: state.frontier.root(),
        last_entry_hash: state.meta.last_hash,
        name: state.meta.name.clone(),
    }
}

enum EntriesInner {
    Direct(blocks::Cursor),
    Index(IndexRead),
}

/// A lazy stream of log entries in seq order.
pub struct Entries {
    inner: EntriesInner,
}

impl Iterator for Entries {
    type Item = Result<LogEntry, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        match &mut self.inner {
            EntriesInner::Direct(cursor) => cursor.next(),
            EntriesInner::Index(read) => read.next(),
        }
    }
}

/// The on-disk format this build writes and reads (the `F` key).
pub const FORMAT_VERSION: u8 = 3;

/// Checks the on-disk format: a new store gets the current one; a store of another format is
/// refused with what to run.
fn check_format(backend: &dyn Backend) -> Result<(), OpenError> {
    match backend.get(keys::FORMAT)? {
        Some(v) if v == [FORMAT_VERSION] => Ok(()),
        Some(v) => Err(OpenError::Format { found: v.first().copied().unwrap_or(0), supported: FORMAT_VERSION }),
        None => {
            let any = backend.range(&[keys::tag::META], &[keys::tag::META + 1]).next().transpose()?;
            if any.is_some() {
                // Stores written before the format key existed are format 1.
                return Err(OpenError::Format { found: 1, supported: FORMAT_VERSION });
            }
            let mut b = WriteBatch::default();
            b.put(keys::FORMAT.to_vec(), vec![FORMAT_VERSION]);
            backend.apply(b)?;
            backend.flush(true)?;
            Ok(())
        }
    }
}

fn service_key(path: &Path) -> Result<SigningKey, OpenError> {
    let err = |reason: String| OpenError::ServiceKey { path: path.display().to_string(), reason };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut secret = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut secret).map_err(|e| err(format!("not 64 hex digits: {e}")))?;
            Ok(SigningKey::from_bytes(&secret))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let tmp = path.with_extension("key.tmp");
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let write = || -> std::io::Result<()> {
                use std::io::Write as _;
                let mut f = opts.open(&tmp)?;
                writeln!(f, "{}", hex::encode(key.to_bytes()))?;
                f.sync_all()?;
                std::fs::rename(&tmp, path)?;
                if let Some(dir) = path.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                Ok(())
            };
            write().map_err(|e| err(format!("cannot create: {e}")))?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

fn last_key_u64(backend: &dyn Backend, tag: u8, session: &SessionId) -> Result<Option<u64>, BackendError> {
    let p = keys::prefix(tag, session);
    match backend.range_rev(&p, &keys::prefix_end(&p)).next() {
        None => Ok(None),
        Some(kv) => Ok(Some(keys::be_u64(&kv?.0, 17))),
    }
}

/// Verifies a session's stored entries from `from` to its head: block codec and framing,
/// decoding, seq continuity, chain hashes and stored Merkle nodes (when verifying from 1). The
/// indexes and the state checkpoint are derived: loading folds the log after the checkpoint,
/// and index reads scan the log past the watermark.
fn verify_session(backend: &dyn Backend, state: &SessionState, from: u64) -> Result<(), Corruption> {
    let id = state.id;
    let head = state.meta.head_seq;
    let bad = |seq: u64, detail: String| Corruption { seq, detail };
    let storage = |seq: u64| move |e: BackendError| Corruption { seq, detail: format!("storage: {e}") };
    let from = from.max(1);
    if from > head {
        // Nothing to check but that no entry lies beyond the head.
        let beyond =
            backend.range(&keys::entry(&id, head + 1), &keys::prefix_end(&keys::prefix(keys::tag::ENTRY, &id))).next();
        return match beyond {
            Some(Ok((k, _))) => Err(bad(keys::be_u64(&k, 17), format!("entry beyond the head {head}"))),
            Some(Err(e)) => Err(storage(head)(e)),
            None => Ok(()),
        };
    }
    let mut prev = if from == 1 {
        [0u8; 32]
    } else {
        blocks::read_entry(backend, &id, from - 1, None).map_err(|e| bad(from - 1, e.to_string()))?.entry_hash
    };
    let mut rebuilt = (from == 1).then(|| (Frontier::new(), Box::new([[0u8; 32]; blocks::PAGE_NODES])));
    let mut seq = from;
    let first_block = blocks::find_key(backend, &id, from).map_err(|e| bad(from, e.to_string()))?;
    let iter = backend.range(&keys::entry(&id, first_block), &keys::prefix_end(&keys::prefix(keys::tag::ENTRY, &id)));
    for kv in iter {
        let (k, raw) = kv.map_err(storage(seq))?;
        let block_first = keys::be_u64(&k, 17);
        if block_first > head {
            return Err(bad(block_first, format!("entry beyond the head {head}")));
        }
        let raw = blocks::decode(&raw).map_err(|e| bad(block_first.max(seq), e))?;
        let parts = blocks::split(&raw).map_err(|i| bad(block_first + i as u64, "block framing broken".into()))?;
        for (i, part) in parts.into_iter().enumerate() {
            let at = block_first + i as u64;
            if at < seq {
                continue; // before `from`, inside the first block
            }
            if at != seq {
                return Err(bad(seq, format!("entry missing (next stored is {at})")));
            }
            if seq > head {
                return Err(bad(seq, format!("entry beyond the head {head}")));
            }
            let e = blocks::decode_entry(&id, seq, part).map_err(|e| bad(seq, e.to_string()))?;
            if e.prev_hash != prev {
                return Err(bad(seq, "previous-hash link broken".into()));
            }
            let h = merkle::entry_hash(&id, seq, e.receipt_time_ms, &e.prev_hash, &e.envelope);
            if h != e.entry_hash {
                return Err(bad(seq, "entry hash does not match its contents".into()));
            }
            if let Some((f, page)) = rebuilt.as_mut() {
                let mut mismatch = None;
                f.push(merkle::leaf_hash(&h), |level, index, hash| {
                    if mismatch.is_some() {
                        return;
                    }
                    if level > blocks::PAGE_LEVEL {
                        match backend.get(&keys::node(&id, level, index)) {
                            Ok(Some(v)) if v == hash[..] => {}
                            _ => mismatch = Some(format!("Merkle node ({level}, {index}) does not match")),
                        }
                    } else if let Some(p) = blocks::fill_page(page, level, index, hash) {
                        match backend.get(&keys::node_page(&id, p)) {
                            Ok(Some(v)) if v == blocks::encode_page(page) => {}
                            _ => mismatch = Some(format!("Merkle node page {p} does not match")),
                        }
                    }
                });
                if let Some(m) = mismatch {
                    return Err(bad(seq, m));
                }
            }
            Envelope::open(&e.envelope).map_err(|err| bad(seq, format!("envelope does not decode: {err}")))?;
            prev = h;
            seq += 1;
        }
    }
    if seq != head + 1 {
        return Err(bad(seq, format!("entries end at {} but the head is {head}", seq - 1)));
    }
    if prev != state.meta.last_hash {
        return Err(bad(head, "last entry hash differs from the session header".into()));
    }
    if let Some((f, _)) = rebuilt
        && f.root() != state.frontier.root()
    {
        return Err(bad(head, "Merkle root differs from the stored tree".into()));
    }
    Ok(())
}

/// A batch of jobs for one verification worker, with its place in the committer's order.
struct WorkBatch {
    ticket: u64,
    jobs: Vec<Job>,
}

/// How far the committer has come in ticket order. Workers finish out of order and the
/// committer puts their results back in order (an author's commands must reach the Lamport
/// check in the order they were submitted); the dispatcher issues no ticket more than
/// [`MAX_AHEAD`] past the committer, which bounds what waits to be reordered.
#[derive(Default)]
struct Order {
    committed: std::sync::Mutex<u64>,
    moved: std::sync::Condvar,
}

impl Order {
    /// Waits until `ticket` may be issued.
    fn room_for(&self, ticket: u64) {
        let mut c = self.committed.lock().expect("order lock");
        while ticket >= *c + MAX_AHEAD {
            c = self.moved.wait(c).expect("order lock");
        }
    }

    /// Every ticket below `next` is committed.
    fn committed_to(&self, next: u64) {
        *self.committed.lock().expect("order lock") = next;
        self.moved.notify_all();
    }
}

/// Tickets issued past the committer's position, at most.
const MAX_AHEAD: u64 = 16;

/// Groups applied but not yet flushed, at most (the committer waits beyond).
const FLUSH_QUEUE: usize = 8;

/// The smallest batch the dispatcher splits off for one worker (batch verification gets
/// cheaper per signature up to a few hundred).
const MIN_SHARE: usize = 64;

/// The verification stage's dispatcher: waits for a free worker, then gives it its share of
/// what is queued (up to `max_batch_entries` gathered), so the workers verify batches as
/// large as the load allows side by side. Stops at `Shutdown` or when the committer is
/// gone, answering what is still queued.
fn dispatch_loop(
    shared: Arc<Shared>,
    rx: Receiver<Job>,
    workers: Vec<SyncSender<WorkBatch>>,
    ready: Receiver<usize>,
    order: Arc<Order>,
    stopped: Arc<AtomicBool>,
) {
    let max = shared.config.max_batch_entries.max(1);
    let mut ticket = 0u64;
    let refuse = |job: Job| match job {
        Job::Append(a) => {
            shared.metrics.queue_depth.fetch_sub(1, Relaxed);
            a.reply.send(Err(AppendError::ShuttingDown));
        }
        Job::Import(i) => (i.reply)(Err(ImportError::Rejected { seq: 0, error: AppendError::ShuttingDown })),
        Job::Trail(t) => (t.reply)(Err(ImportError::Rejected { seq: 0, error: AppendError::ShuttingDown })),
        Job::Shutdown(done) => {
            let _ = done.send(());
        }
    };
    let n_workers = workers.len();
    let mut pending: std::collections::VecDeque<Job> = std::collections::VecDeque::new();
    while let Ok(worker) = ready.recv() {
        order.room_for(ticket);
        if stopped.load(Relaxed) {
            break;
        }
        if pending.is_empty() {
            let Ok(first) = rx.recv() else { return };
            pending.push_back(first);
        }
        while pending.len() < max && !matches!(pending.back(), Some(Job::Shutdown(_))) {
            match rx.try_recv() {
                Ok(j) => pending.push_back(j),
                Err(TryRecvError::Empty | TryRecvError::Disconnected) => break,
            }
        }
        // A share of what is queued, so that a burst is verified by every worker at once
        // rather than by the first one free; no share smaller than MIN_SHARE.
        let take = pending.len().div_ceil(n_workers).max(pending.len().min(MIN_SHARE));
        let jobs: Vec<Job> = pending.drain(..take).collect();
        let shutdown = matches!(jobs.last(), Some(Job::Shutdown(_)));
        if let Err(e) = workers[worker].send(WorkBatch { ticket, jobs }) {
            e.0.jobs.into_iter().for_each(refuse);
            break;
        }
        ticket += 1;
        if shutdown {
            break;
        }
    }
    pending.into_iter().for_each(refuse);
    // Answer anything still queued; the workers stop when their channels close.
    while let Ok(job) = rx.try_recv() {
        refuse(job);
    }
}

/// A verification worker: decodes, validates and verifies whole batches (its own key cache)
/// and sends the result, with its ticket, to the committer.
fn verify_worker(
    shared: Arc<Shared>,
    id: usize,
    rx: Receiver<WorkBatch>,
    ready: SyncSender<usize>,
    tx: SyncSender<(u64, Vec<Stage2>)>,
    stopped: Arc<AtomicBool>,
) {
    let mut keys = KeyCache::new(shared.config.key_cache_entries);
    loop {
        if ready.send(id).is_err() {
            return;
        }
        let Ok(WorkBatch { ticket, jobs }) = rx.recv() else { return };
        let mut out: Vec<Stage2> = Vec::new();
        let mut appends: Vec<AppendJob> = Vec::new();
        let mut check = |appends: &mut Vec<AppendJob>, out: &mut Vec<Stage2>| {
            if appends.is_empty() {
                return;
            }
            let (inputs, rest): (Vec<(Vec<u8>, Option<SessionId>)>, Vec<(Responder, Instant)>) =
                std::mem::take(appends).into_iter().map(|j| ((j.bytes, j.session), (j.reply, j.submitted))).unzip();
            let checked = verifier::check_batch(inputs, &shared.config, &mut keys, &shared.metrics);
            out.push(Stage2::Appends(
                checked
                    .into_iter()
                    .zip(rest)
                    .map(|(c, (mut r, t))| {
                        r.nonce = c.nonce;
                        (c, r, t)
                    })
                    .collect(),
            ));
        };
        for job in jobs {
            match job {
                Job::Append(a) => appends.push(a),
                Job::Import(mut i) => {
                    check(&mut appends, &mut out);
                    i.prepared = prepare_import(&i.session, &i.entries);
                    i.compressed = compress_import(&i.entries, &i.prepared, shared.config.max_block_bytes);
                    out.push(Stage2::Import(i));
                }
                Job::Trail(t) => {
                    check(&mut appends, &mut out);
                    out.push(Stage2::Trail(t));
                }
                Job::Shutdown(done) => {
                    check(&mut appends, &mut out);
                    out.push(Stage2::Shutdown(done));
                }
            }
        }
        check(&mut appends, &mut out);
        if tx.send((ticket, out)).is_err() {
            // The committer is gone: what it did not take is answered as it drops.
            stopped.store(true, Relaxed);
        }
    }
}

/// The single writer: stateful checks, group commit, replies.
struct Committer {
    shared: Arc<Shared>,
    states: BTreeMap<SessionId, SessionState>,
    global_trail_next: u64,
    /// When the first unflushed batch was applied (interval durability).
    dirty_since: Option<Instant>,
    /// Session-creation token buckets per key (bounded: at the bound, buckets that hold a
    /// token are forgotten).
    creations: std::collections::HashMap<theta_schemas::AuthorKey, crate::guard::TokenBucket>,
    /// Groups waiting for their flush (`Durability::Sync`), and the thread flushing them.
    flusher: Option<SyncSender<Flush>>,
    flusher_thread: Option<JoinHandle<()>>,
}

/// Keys whose session-creation buckets are remembered at once.
const MAX_CREATION_BUCKETS: usize = 65_536;

struct Outcome {
    reply: Responder,
    submitted: Instant,
    result: Result<(SessionId, crate::session::Accepted), AppendError>,
}

impl Committer {
    fn run(mut self, rx: Receiver<(u64, Vec<Stage2>)>, order: Arc<Order>) {
        let tick = match self.shared.config.durability {
            Durability::IntervalMs(ms) => Some(Duration::from_millis(ms.max(1))),
            _ => None,
        };
        let mut failed = false;
        // Worker results that arrived before an earlier ticket's.
        let mut early: BTreeMap<u64, Vec<Stage2>> = BTreeMap::new();
        let mut next_ticket = 0u64;
        loop {
            let item = match tick {
                Some(t) => match rx.recv_timeout(t) {
                    Ok(i) => i,
                    Err(RecvTimeoutError::Timeout) => {
                        self.flush_if_due(t, &mut failed);
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(i) => i,
                    Err(_) => break,
                },
            };
            early.insert(item.0, item.1);
            early.extend(rx.try_iter());
            let mut items = Vec::new();
            while let Some(stages) = early.remove(&next_ticket) {
                items.extend(stages);
                next_ticket += 1;
            }
            if items.is_empty() {
                continue;
            }
            order.committed_to(next_ticket);
            let mut group: Vec<(Checked, Responder, Instant)> = Vec::new();
            for item in items {
                match item {
                    Stage2::Appends(a) => group.extend(a),
                    Stage2::Import(job) => {
                        self.commit(std::mem::take(&mut group), &mut failed);
                        if self.stopped(&mut failed) {
                            (job.reply)(Err(stopped()));
                        } else {
                            self.import(job, &mut failed);
                        }
                    }
                    Stage2::Trail(job) => {
                        self.commit(std::mem::take(&mut group), &mut failed);
                        if self.stopped(&mut failed) {
                            (job.reply)(Err(stopped()));
                        } else {
                            self.import_trail(job, &mut failed);
                        }
                    }
                    Stage2::Shutdown(done) => {
                        self.commit(std::mem::take(&mut group), &mut failed);
                        // A state checkpoint at every head: the next open folds nothing.
                        if !failed {
                            let mut batch = WriteBatch::default();
                            for state in self.states.values_mut() {
                                state.save_state(&mut batch);
                            }
                            if !batch.is_empty() && self.shared.backend.apply(batch).is_ok() {
                                self.dirty_since.get_or_insert_with(Instant::now);
                            }
                        }
                        if self.dirty_since.is_some() {
                            let _ = self.shared.backend.flush(true);
                        }
                        // The flusher answers what it holds, then stops.
                        self.flusher.take();
                        if let Some(t) = self.flusher_thread.take() {
                            let _ = t.join();
                        }
                        let _ = done.send(());
                        return;
                    }
                }
            }
            self.commit(group, &mut failed);
            if let Some(t) = tick {
                self.flush_if_due(t, &mut failed);
            }
        }
    }

    /// Whether a storage failure stopped the store (here or on the flusher).
    fn stopped(&self, failed: &mut bool) -> bool {
        *failed |= self.shared.failed.load(Relaxed);
        *failed
    }

    /// Appends restored rejection records to a trail, durably like a group.
    fn import_trail(&mut self, job: TrailJob, failed: &mut bool) {
        let TrailJob { session, records, reply } = job;
        let mut batch = WriteBatch::default();
        let n = records.len() as u64;
        for r in records {
            self.trail(session, r, &mut batch);
        }
        let config = self.shared.config.clone();
        if let Some(state) = session.and_then(|s| self.states.get_mut(&s)) {
            state.finish(&mut batch, &config, false);
        }
        let group = Group {
            outcomes: Vec::new(),
            heads: Vec::new(),
            indexed: BTreeMap::new(),
            commands: BTreeMap::new(),
            imported: Some((reply, n, 0)),
        };
        self.send(group, batch, failed);
    }

    fn flush_if_due(&mut self, interval: Duration, failed: &mut bool) {
        if let Some(since) = self.dirty_since
            && since.elapsed() >= interval
        {
            if self.shared.backend.flush(true).is_err() {
                *failed = true;
            }
            self.shared.metrics.flushes.fetch_add(1, Relaxed);
            self.dirty_since = None;
        }
    }

    fn append_one(
        &mut self,
        body: &theta_schemas::CommandBody,
        bytes: &mut Vec<u8>,
        now: u64,
        batch: &mut WriteBatch,
        touched: &mut BTreeSet<SessionId>,
    ) -> Result<crate::session::Accepted, AppendError> {
        if let Some(View { corrupted: Some(c), .. }) = self.shared.views.read().expect("views lock").get(&body.session)
        {
            return Err(AppendError::Corrupted { session: body.session, seq: c.seq, detail: c.detail.clone() });
        }
        let creating = !self.states.contains_key(&body.session);
        if creating {
            if body.command.kind() != CommandKind::CreateSession {
                return Err(AppendError::UnknownSession { session: body.session });
            }
            self.admit(&body.author, now)?;
            self.states.insert(body.session, SessionState::new(body.session));
        }
        let config = &self.shared.config;
        let state = self.states.get_mut(&body.session).expect("present");
        if let Err(e) = state.check(body, config, Some(now)) {
            if creating {
                self.states.remove(&body.session);
            }
            return Err(e);
        }
        let (accepted, _) = state.apply(body, std::mem::take(bytes), now, batch);
        touched.insert(body.session);
        Ok(accepted)
    }

    /// Admission and the per-key session-creation rate.
    fn admit(&mut self, author: &theta_schemas::AuthorKey, now_ms: u64) -> Result<(), AppendError> {
        let config = &self.shared.config;
        if !config.admission.admits(author) {
            return Err(AppendError::NotAdmitted { author: *author });
        }
        let per_min = f64::from(config.session_creations_per_min.max(1));
        if self.creations.len() >= MAX_CREATION_BUCKETS && !self.creations.contains_key(author) {
            self.creations.retain(|_, b| b.clone().take(per_min / 60.0, per_min, now_ms).is_err());
        }
        self.creations
            .entry(*author)
            .or_insert_with(|| crate::guard::TokenBucket::full(per_min, now_ms))
            .take(per_min / 60.0, per_min, now_ms)
            .map_err(|retry_after_ms| AppendError::RateLimited { author: *author, retry_after_ms })
    }

    fn trail(&mut self, session: Option<SessionId>, record: Rejection, batch: &mut WriteBatch) {
        let max = self.shared.config.rejection_trail_entries;
        if max == 0 {
            return;
        }
        let (id, next) = match session.and_then(|s| self.states.get_mut(&s)) {
            Some(state) => (state.id, &mut state.meta.trail_next),
            None => (SessionId::default(), &mut self.global_trail_next),
        };
        let idx = *next;
        *next += 1;
        batch.put(keys::trail(&id, idx), Rejection { index: idx, ..record }.encode());
        if idx >= max {
            batch.delete(keys::trail(&id, idx - max));
        }
    }

    fn commit(&mut self, group: Vec<(Checked, Responder, Instant)>, failed: &mut bool) {
        if group.is_empty() {
            return;
        }
        *failed |= self.shared.failed.load(Relaxed);
        if *failed {
            // After a storage failure nothing more is written: a later flush would make the
            // failed group durable behind its refusals (and the trail records are writes too).
            let metrics = &self.shared.metrics;
            for (checked, reply, submitted) in group {
                let e = match checked.result {
                    Err(e) => e,
                    Ok(_) => AppendError::Storage("the store stopped after a storage failure".into()),
                };
                metrics.reject(e.code());
                metrics.ack_latency.observe_us(submitted.elapsed().as_micros() as u64);
                metrics.queue_depth.fetch_sub(1, Relaxed);
                reply.send(Err(e));
            }
            return;
        }
        let now = now_ms();
        let mut batch = WriteBatch::default();
        let mut touched = BTreeSet::new();
        let mut trail_touched = BTreeSet::new();
        let mut outcomes = Vec::with_capacity(group.len());
        let mut indexed: BTreeMap<SessionId, Vec<(u64, AuthorKey, EntityId)>> = BTreeMap::new();
        let keep_commands = self.shared.wants_commands.load(Relaxed);
        let mut commands: BTreeMap<SessionId, Vec<(u64, theta_schemas::CommandBody)>> = BTreeMap::new();
        for (checked, reply, submitted) in group {
            let Checked { mut bytes, result, origin, .. } = checked;
            let (author, session, result) = match result {
                Err(e) => (origin.map(|o| o.1), origin.map(|o| o.0), Err(e)),
                Ok(body) => {
                    let r = if *failed {
                        Err(AppendError::Storage("the store stopped after a storage failure".into()))
                    } else {
                        self.append_one(&body, &mut bytes, now, &mut batch, &mut touched)
                    };
                    let (author, session) = (body.author, body.session);
                    if let Ok(a) = &r {
                        indexed.entry(session).or_default().push((a.seq, author, body.entity));
                        if keep_commands {
                            commands.entry(session).or_default().push((a.seq, body));
                        }
                    }
                    (Some(author), Some(session), r.map(|a| (session, a)))
                }
            };
            if let Err(e) = &result {
                let known = session.filter(|s| self.states.contains_key(s));
                if let Some(s) = known {
                    trail_touched.insert(s);
                }
                let envelope_hash = sha2::Sha256::digest(&bytes).into();
                let record =
                    Rejection { index: 0, time_ms: now, code: e.code(), author, envelope_hash, reason: e.to_string() };
                self.trail(known, record, &mut batch);
            }
            outcomes.push(Outcome { reply, submitted, result });
        }
        let every = self.shared.config.verified_checkpoint_every_entries.max(1);
        let config = self.shared.config.clone();
        for s in touched.iter().chain(&trail_touched) {
            let state = self.states.get_mut(s).expect("touched session");
            // Entries this store hashed itself count as verified; Tail verification on open
            // starts after the last such point.
            if state.meta.head_seq - state.meta.verified_upto >= every {
                state.meta.verified_upto = state.meta.head_seq;
            }
            state.finish(&mut batch, &config, false);
        }
        let heads: Vec<Head> = touched.iter().map(|s| head_of(&self.states[s])).collect();
        let commands = commands.into_iter().map(|(s, c)| (s, c.into())).collect();
        self.send(Group { outcomes, heads, indexed, commands, imported: None }, batch, failed);
    }

    /// Applies a group's writes and sends it on: to the flusher (`Sync`), or answered now.
    fn send(&mut self, group: Group, batch: WriteBatch, failed: &mut bool) {
        let applied = if batch.is_empty() { Ok(false) } else { self.shared.backend.apply(batch).map(|()| true) };
        let applied = match applied {
            Ok(a) => a,
            Err(e) => {
                *failed = true;
                self.shared.failed.store(true, Relaxed);
                tracing_error(&format!("storage failure, the store stops accepting appends: {e}"));
                return complete(&self.shared, group, Err(e.to_string()));
            }
        };
        if !group.commands.is_empty() {
            let sequenced = self.shared.sequenced_listeners.read().expect("listener lock").clone();
            if !sequenced.is_empty() {
                let committed: Vec<Committed> = group
                    .heads
                    .iter()
                    .filter_map(|h| {
                        let commands = group.commands.get(&h.session)?.clone();
                        Some(Committed { head: h.clone(), commands })
                    })
                    .collect();
                for f in sequenced {
                    f(&committed);
                }
            }
        }
        match self.shared.config.durability {
            // Flushed on the flusher thread while this one builds the next group.
            Durability::Sync => {
                if let Some(f) = &self.flusher
                    && let Err(e) = f.send(Flush { group, applied })
                {
                    complete(&self.shared, e.0.group, Err("the store is shutting down".into()));
                }
            }
            Durability::IntervalMs(_) => {
                if applied {
                    self.dirty_since.get_or_insert_with(Instant::now);
                }
                complete(&self.shared, group, Ok(()));
            }
            Durability::None => complete(&self.shared, group, Ok(())),
        }
    }

    /// Runs an import's ordered pass and sends its writes the way of a group: durable before
    /// the reply.
    fn import(&mut self, job: ImportJob, failed: &mut bool) {
        let ImportJob { session, entries, prepared, compressed, reply } = job;
        let config = self.shared.config.clone();
        let backend = self.shared.backend.clone();
        if let Some(View { corrupted: Some(c), .. }) = self.shared.views.read().expect("views lock").get(&session) {
            let error = AppendError::Corrupted { session, seq: c.seq, detail: c.detail.clone() };
            return reply(Err(ImportError::Rejected { seq: c.seq, error }));
        }
        // Work on the live state; a failed import reloads it from storage, where nothing of the
        // failed call was written (cheaper than cloning the state for every call).
        let mut state = self.states.remove(&session).unwrap_or_else(|| SessionState::new(session));
        let before = state.meta.head_seq;
        let mut indexed = Vec::new();
        let mut batch = match import_into(&mut state, entries, prepared, &config, &mut indexed) {
            Ok(batch) => batch,
            Err(e) => {
                if before > 0 {
                    let meta = backend.get(&keys::meta(&session)).ok().flatten().and_then(|raw| Meta::decode(&raw));
                    if let Some(meta) = meta {
                        match SessionState::load(&*backend, session, meta) {
                            Ok(s) => {
                                self.states.insert(session, s);
                            }
                            Err(err) => {
                                *failed = true;
                                self.shared.failed.store(true, Relaxed);
                                tracing_error(&format!("session {session}: reload after a failed import: {err}"));
                            }
                        }
                    }
                }
                return reply(Err(e));
            }
        };
        let n = state.meta.head_seq;
        // The import checked every link and hash of these entries: they count as verified.
        state.meta.verified_upto = n;
        state.finish_with(&mut batch, &config, false, Some(compressed));
        let group = Group {
            outcomes: Vec::new(),
            heads: vec![head_of(&state)],
            indexed: BTreeMap::from([(session, indexed)]),
            commands: BTreeMap::new(),
            imported: Some((reply, n, n - before)),
        };
        self.states.insert(session, state);
        self.send(group, batch, failed);
    }
}

/// The answer to an import after a storage failure stopped the store.
fn stopped() -> ImportError {
    ImportError::Rejected { seq: 0, error: AppendError::Storage("the store stopped after a storage failure".into()) }
}

/// A committed group on its way to its replies: its outcomes, the heads it made, and the
/// entries for the indexer.
struct Group {
    outcomes: Vec<Outcome>,
    heads: Vec<Head>,
    indexed: BTreeMap<SessionId, Vec<(u64, AuthorKey, EntityId)>>,
    /// The accepted commands per session, decoded (kept only while a command listener exists).
    commands: BTreeMap<SessionId, Arc<[(u64, theta_schemas::CommandBody)]>>,
    /// An import's reply, the head after it and the entries it added.
    imported: Option<(ImportReply, u64, u64)>,
}

/// A group applied to the backend, to be made durable before its replies (`Durability::Sync`).
struct Flush {
    group: Group,
    /// Whether the group wrote anything (a group of refusals without trail records did not).
    applied: bool,
}

/// The flusher thread: flush + fdatasync per group, in commit order, overlapping the committer's
/// work on the next group; then the group's heads, listeners, index entries and replies.
fn flush_loop(shared: Arc<Shared>, rx: Receiver<Flush>) {
    while let Ok(first) = rx.recv() {
        // Every group applied by now is covered by one flush.
        let mut groups = vec![first];
        groups.extend(rx.try_iter());
        let applied = groups.iter().any(|f| f.applied);
        let result = if shared.failed.load(Relaxed) {
            Err("the store stopped after a storage failure".to_string())
        } else if applied {
            let t = Instant::now();
            let r = shared.backend.flush(true);
            shared.metrics.flush_latency.observe_us(t.elapsed().as_micros() as u64);
            shared.metrics.flushes.fetch_add(1, Relaxed);
            r.map_err(|e| {
                shared.failed.store(true, Relaxed);
                tracing_error(&format!("storage failure, the store stops accepting appends: {e}"));
                e.to_string()
            })
        } else {
            Ok(())
        };
        for Flush { group, .. } in groups {
            complete(&shared, group, result.clone());
        }
    }
}

/// Answers a group whose writes are durable (`Ok`) or failed: publishes its heads (never moving
/// a head back), tells the listeners and the indexer, and sends every reply.
fn complete(shared: &Shared, group: Group, durable: Result<(), String>) {
    let Group { outcomes, heads, indexed, mut commands, imported } = group;
    let mut roots: HashMap<SessionId, (u64, Hash)> = HashMap::new();
    if durable.is_ok() {
        let mut fresh = Vec::with_capacity(heads.len());
        {
            let mut views = shared.views.write().expect("views lock");
            for head in heads {
                roots.insert(head.session, (head.seq, head.tree_root));
                let newer = views.get(&head.session).is_none_or(|v| v.head.seq < head.seq);
                if newer {
                    views.insert(head.session, View { head: head.clone(), corrupted: None });
                    fresh.push(head);
                }
            }
        }
        if !fresh.is_empty() {
            let command_listeners = shared.command_listeners.read().expect("listener lock").clone();
            if !command_listeners.is_empty() {
                let committed: Vec<Committed> = fresh
                    .iter()
                    .map(|h| Committed { head: h.clone(), commands: commands.remove(&h.session).unwrap_or_default() })
                    .collect();
                for f in command_listeners {
                    f(&committed);
                }
            }
            let listeners = shared.listeners.read().expect("listener lock").clone();
            for f in listeners {
                f(&fresh);
            }
        }
        if let Some(i) = shared.indexer.lock().expect("indexer lock").as_ref() {
            for (s, entries) in indexed {
                let _ = i.send(IndexJob::Entries(s, entries));
            }
        }
    }
    let metrics = &shared.metrics;
    if let Some((reply, head, added)) = imported {
        match &durable {
            Ok(()) => {
                metrics.imported_entries.fetch_add(added, Relaxed);
                reply(Ok(head));
            }
            Err(e) => reply(Err(ImportError::Rejected { seq: 0, error: AppendError::Storage(e.clone()) })),
        }
        return;
    }
    metrics.batches_committed.fetch_add(1, Relaxed);
    for o in outcomes {
        let result = match (o.result, &durable) {
            (Ok((session, a)), Ok(())) => {
                let (tree_size, tree_root) = roots[&session];
                Ok(Receipt {
                    session,
                    seq: a.seq,
                    lamport: a.lamport,
                    nonce: a.nonce,
                    entry_hash: a.entry_hash,
                    tree_size,
                    tree_root,
                })
            }
            (Ok(_), Err(e)) => Err(AppendError::Storage(e.clone())),
            (Err(e), _) => Err(e),
        };
        match &result {
            Ok(_) => metrics.appends_accepted.fetch_add(1, Relaxed),
            Err(e) => {
                metrics.reject(e.code());
                0
            }
        };
        metrics.ack_latency.observe_us(o.submitted.elapsed().as_micros() as u64);
        metrics.queue_depth.fetch_sub(1, Relaxed);
        o.reply.send(result);
    }
}

/// Checks and applies imported entries to `state`; returns their writes.
fn import_into(
    state: &mut SessionState,
    entries: Vec<LogEntry>,
    prepared: Vec<Prepared>,
    config: &StoreConfig,
    indexed: &mut Vec<(u64, AuthorKey, EntityId)>,
) -> Result<WriteBatch, ImportError> {
    let session = state.id;
    let mut batch = WriteBatch::default();
    for (e, p) in entries.into_iter().zip(prepared) {
        let seq = state.meta.head_seq + 1;
        let chain = |detail: &str| ImportError::Chain { seq: e.seq, detail: detail.into() };
        if e.seq != seq {
            return Err(chain(&format!("expected seq {seq}")));
        }
        if e.prev_hash != state.meta.last_hash {
            return Err(chain("previous hash does not match the log"));
        }
        let body = p.body.map_err(|error| ImportError::Rejected { seq, error })?;
        if body.session != session {
            return Err(chain("entry belongs to another session"));
        }
        state.check(&body, config, None).map_err(|error| ImportError::Rejected { seq, error })?;
        if !p.hash_ok {
            return Err(chain("entry hash does not match its contents"));
        }
        indexed.push((seq, body.author, body.entity));
        state.apply_hashed(&body, e.envelope, e.receipt_time_ms, e.entry_hash, Some(p.encoded), &mut batch);
    }
    Ok(batch)
}

fn tracing_error(msg: &str) {
    eprintln!("theta-store: {msg}");
}
