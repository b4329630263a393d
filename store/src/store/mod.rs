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

mod commit;
mod open;
mod pipeline;
mod receipts;

use commit::*;
pub use open::FORMAT_VERSION;
use open::*;
use pipeline::*;
pub use receipts::*;

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
    /// Told the sessions whose sequenced entries storage no longer holds after a reopen.
    reset_listeners: RwLock<Vec<ResetListener>>,
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

/// A listener of sessions whose sequenced head changed when the store reopened its storage
/// after a failure: it gets their heads as storage holds them. Whoever kept state built from
/// sequenced (not yet durable) commands rebuilds it from the log.
pub type ResetListener = Arc<dyn Fn(&[Head]) + Send + Sync>;

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
    /// Set when a replication layer ordered the append ([`Store::submit_replicated`]).
    stamp: Option<Stamp>,
}

/// What a replication layer adds to an append it has already ordered (`theta-raft`): the
/// time its leader stamped, which stands in for this store's clock (receipt time, rejection
/// record), and a mark the store writes in the same atomic batch as the outcome, so that
/// what the store holds and the layer's applied position never disagree after a crash.
///
/// A stamped append is checked like any other (signature, role, replay, Lamport, conflict)
/// except for the rate and session-creation limits, which read this machine's clock and
/// are the leader's to enforce before it proposes.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Stamp {
    /// The leader's clock when it proposed the entry, Unix milliseconds.
    pub time_ms: u64,
    /// `(key, bytes)`: stored under `key` with the outcome (see [`Store::replica_mark`]).
    pub mark: Option<(u64, Vec<u8>)>,
}

/// An append after the verify stage, on its way to the commit thread.
type Verified = (Checked, Responder, Instant, Option<Stamp>);

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
    /// Replica marks written in the same batch ([`Store::submit_replica_marks`]).
    marks: Vec<(u64, Vec<u8>)>,
    reply: ImportReply,
}

enum Job {
    Append(AppendJob),
    Import(ImportJob),
    Trail(TrailJob),
    Shutdown(SyncSender<()>),
}

enum Stage2 {
    Appends(Vec<Verified>),
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
        let Loaded { states, views, global_trail_next } = load_sessions(&*backend, config.verify_on_open)?;
        // The indexes: catch up where the watermark lags the head (after a crash, or a store
        // written before the runs were).
        let (index_tx, index_rx) = std::sync::mpsc::channel::<IndexJob>();
        catch_up_indexes(&*backend, &states, &index_tx);
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
            reset_listeners: RwLock::new(Vec::new()),
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
        let (flush_tx, flusher_thread) = spawn_flusher(&shared);
        let committer = Committer {
            shared: shared.clone(),
            states,
            global_trail_next,
            dirty_since: None,
            creations: std::collections::HashMap::new(),
            flusher: Some(flush_tx),
            flusher_thread: Some(flusher_thread),
            recovery: Recovery::default(),
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
        self.submit_job(envelope, None, None, Box::new(move |r, _| reply(r)));
    }

    /// Submits an append a replication layer has ordered (a committed Raft entry): checked
    /// and applied in submission order like [`Store::submit`], with the leader's `stamp`
    /// in place of this machine's clock and without the rate limits (see [`Stamp`]). The
    /// same entries with the same stamps give every replica the same log, byte for byte.
    pub fn submit_replicated(
        &self,
        envelope: Vec<u8>,
        stamp: Stamp,
        reply: impl FnOnce(Result<Receipt, AppendError>) + Send + 'static,
    ) {
        self.submit_job(envelope, None, Some(stamp), Box::new(move |r, _| reply(r)));
    }

    /// Writes replica marks alone, `(key, bytes)` in one atomic batch (for a replicated entry
    /// that carries no command, or an installed snapshot), ordered after everything submitted
    /// before; `reply` is called once they are durable.
    pub fn submit_replica_marks(
        &self,
        marks: Vec<(u64, Vec<u8>)>,
        reply: impl FnOnce(Result<(), ImportError>) + Send + 'static,
    ) {
        let job = TrailJob { session: None, records: Vec::new(), marks, reply: Box::new(|_| {}) };
        self.submit_trail(job, Box::new(move |r| reply(r.map(|_| ()))));
    }

    /// The bytes last stored under a replica mark `key`, by [`Store::submit_replicated`] or
    /// [`Store::submit_replica_marks`].
    pub fn replica_mark(&self, key: u64) -> Result<Option<Vec<u8>>, ReadError> {
        Ok(self.shared.backend.get(&keys::replica_mark(key))?)
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
        self.submit_job(envelope, Some(session), None, Box::new(reply));
    }

    fn submit_job(&self, envelope: Vec<u8>, session: Option<SessionId>, stamp: Option<Stamp>, reply: Reply) {
        let reply = Responder::new(reply);
        if self.shared.closing.load(Relaxed) {
            return reply.send(Err(AppendError::ShuttingDown));
        }
        self.shared.metrics.queue_depth.fetch_add(1, Relaxed);
        let job = Job::Append(AppendJob { bytes: envelope, session, reply, submitted: Instant::now(), stamp });
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
        self.trail_job(TrailJob { session, records, marks: Vec::new(), reply: Box::new(|_| {}) })
    }

    /// Queues a trail job and waits for its durable outcome.
    fn trail_job(&self, job: TrailJob) -> Result<u64, ImportError> {
        let (tx, rx) = sync_channel(1);
        self.submit_trail(
            job,
            Box::new(move |r| {
                let _ = tx.send(r);
            }),
        );
        rx.recv().unwrap_or(Err(ImportError::Rejected { seq: 0, error: AppendError::ShuttingDown }))
    }

    /// Queues a trail job whose outcome goes to `reply` (its own reply is replaced).
    fn submit_trail(&self, mut job: TrailJob, reply: ImportReply) {
        job.reply = reply;
        if self.shared.closing.load(Relaxed) {
            return (job.reply)(Err(ImportError::Rejected { seq: 0, error: AppendError::ShuttingDown }));
        }
        if let Err(e) = self.tx.send(Job::Trail(job))
            && let Job::Trail(t) = e.0
        {
            (t.reply)(Err(ImportError::Rejected { seq: 0, error: AppendError::ShuttingDown }));
        }
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

    /// Adds a function told, after the store reopened its storage following a failure, the
    /// sessions whose head is not the one last sequenced (entries told to the sequenced
    /// listeners that storage no longer holds, or entries it holds that were refused). It
    /// runs on the commit thread.
    pub fn add_reset_listener(&self, f: impl Fn(&[Head]) + Send + Sync + 'static) {
        self.shared.reset_listeners.write().expect("listener lock").push(Arc::new(f));
    }

    /// Whether a storage failure stopped appends (they are refused with
    /// [`AppendError::Storage`] until the store reopens its storage by itself).
    pub fn storage_failed(&self) -> bool {
        self.shared.failed.load(Relaxed)
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
