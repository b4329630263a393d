//! Live fan-out, the I/O around `theta_live::fanout::FanOut`: one thread per watched session
//! owns the session's fan-out state machine, folds each durable commit into it (the commands
//! as the store's verify workers decoded them, handed over by a store command listener: the log
//! is read back only for commits the thread missed, such as imports), and moves each viewer's
//! frames from the fan-out's bounded queue to the viewer's connection through a small hand-off
//! channel. The connection asks for more as it drains that channel, so frames move without
//! polling, and a viewer that stops reading costs at most its fan-out queue
//! ([`VIEWER_QUEUE_FRAMES`]) plus the hand-off ([`HANDOFF_FRAMES`]).
//!
//! Commits wake the thread through one coalesced message; a thread with no viewers retires
//! after a while. A thread that fails (the log cannot be read, or the projection refuses an
//! entry) is counted and removed, and its viewers' subscriptions end with a [`LiveFailure`]
//! they pass on to their clients (close code 8): the clients reconnect, and the next viewer
//! starts a new thread. The append path never waits on a viewer.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed, Ordering::SeqCst};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex, OnceLock};

use theta_live::fanout::{Counts, FanOut, FanOutError, SPREAD_MIN_VIEWERS, StreamJob};
use theta_projector::interest::Area;
use theta_schemas::{Envelope, SessionId};
use theta_store::{Committed, ReadError, Store};
use tokio::sync::mpsc;

use crate::history::project;

pub use theta_live::fanout::{RESUME_DELTAS, ViewerOptions};

/// Frames queued per viewer in the fan-out beyond what its connection holds.
pub const VIEWER_QUEUE_FRAMES: usize = 256;
/// The least time between two deltas of a session, by default: commits within it leave
/// together (`theta serve --live-pacing-us`).
pub const DEFAULT_PACING: std::time::Duration = std::time::Duration::ZERO;
/// Frames handed to a viewer's connection at a time.
pub const HANDOFF_FRAMES: usize = 32;

/// The threads that compress a delta into many viewers' `zstd-stream`s at once: half the CPUs,
/// 1 to 8 (`theta-compress`). `None`, reported, if they cannot be started.
fn compress_pool() -> Option<Arc<rayon::ThreadPool>> {
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads((cpus / 2).clamp(1, 8))
        .thread_name(|i| format!("theta-compress-{i}"))
        .build();
    match pool {
        Ok(pool) => Some(Arc::new(pool)),
        Err(e) => {
            eprintln!("theta-gateway: no threads to compress live streams on ({e}); each session compresses in turn");
            None
        }
    }
}

/// Moves viewer `id`'s frames from the fan-out into its hand-off channel while there is room,
/// and tells the connection whether more wait (so it asks for them when half the hand-off is
/// free). False when the connection is gone.
fn hand_off(fan: &mut FanOut, id: u64, v: &ViewerLink) -> bool {
    loop {
        let mut moved = false;
        while let Ok(permit) = v.tx.try_reserve() {
            match fan.poll_frame(id) {
                Some(frame) => {
                    permit.send(frame);
                    moved = true;
                }
                None => break,
            }
        }
        if v.tx.is_closed() {
            return false;
        }
        let more = fan.queued(id) > 0 || fan.is_resyncing(id);
        v.backlog.store(more, SeqCst);
        // Stored before the hand-off's fill is read: a connection that drains past half after
        // this sees `more` and asks; one that already did is caught by the fill check here.
        let fill = HANDOFF_FRAMES - v.tx.capacity();
        if !more || !moved || fill > HANDOFF_FRAMES / 2 {
            return true;
        }
    }
}

/// One viewer's counters, shared with its connection.
#[derive(Debug, Default)]
pub struct ViewerStats {
    /// Deltas queued for the viewer.
    pub deltas: AtomicU64,
    /// Times the viewer fell behind and was marked for a fresh snapshot.
    pub resyncs: AtomicU64,
}

/// Why a viewer's stream ended early: its session's live thread failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("the live stream of this session failed on the server ({0}); reconnect to resume")]
pub struct LiveFailure(pub String);

/// A viewer's subscription.
pub struct Subscription {
    /// Viewer id within the hub.
    pub id: u64,
    frames: mpsc::Receiver<Vec<u8>>,
    /// The viewer's counters.
    pub stats: Arc<ViewerStats>,
    wake: std_mpsc::Sender<Cmd>,
    /// A `Drained` is queued for the session thread and not yet taken.
    drained_pending: Arc<AtomicBool>,
    /// The fan-out holds more frames for this viewer than the hand-off did.
    backlog: Arc<AtomicBool>,
    failure: Arc<OnceLock<String>>,
    /// The latest area not yet taken by the session thread.
    area: Arc<Mutex<Option<Area>>>,
}

impl Subscription {
    /// The next frame payload (snapshot chunks, dictionaries and deltas, in order); `Ok(None)`
    /// when the stream ended (the hub went away), `Err` when the session's thread failed.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, LiveFailure> {
        match self.frames.recv().await {
            Some(frame) => {
                self.ask_if_drained();
                Ok(Some(frame))
            }
            None => match self.failure.get() {
                Some(reason) => Err(LiveFailure(reason.clone())),
                None => Ok(None),
            },
        }
    }

    /// The next frame payloads: waits for one, then takes those already waiting, up to
    /// `max_bytes` in all (a burst written at once leaves in as few packets as it fits).
    pub async fn next_burst(&mut self, max_bytes: usize) -> Result<Option<Vec<Vec<u8>>>, LiveFailure> {
        let Some(first) = self.next().await? else { return Ok(None) };
        let mut bytes = first.len();
        let mut burst = vec![first];
        while bytes < max_bytes {
            match self.frames.try_recv() {
                Ok(frame) => {
                    bytes += frame.len();
                    burst.push(frame);
                }
                Err(_) => break,
            }
        }
        self.ask_if_drained();
        Ok(Some(burst))
    }

    /// Half the hand-off is free and more wait in the fan-out: asks the session thread for
    /// them (once until it answers).
    fn ask_if_drained(&self) {
        if self.frames.len() <= HANDOFF_FRAMES / 2
            && self.backlog.load(SeqCst)
            && !self.drained_pending.swap(true, SeqCst)
        {
            let _ = self.wake.send(Cmd::Drained(self.id));
        }
    }

    /// Frames waiting in the hand-off to the connection.
    pub fn queued(&self) -> usize {
        self.frames.len()
    }

    /// The handle that moves this viewer's area of interest.
    pub fn interest(&self) -> InterestHandle {
        InterestHandle { id: self.id, area: self.area.clone(), wake: self.wake.clone() }
    }
}

/// Moves a viewer's area of interest. Moves coalesce: however often a client sends one, the
/// session thread has at most one to take, the latest.
#[derive(Clone)]
pub struct InterestHandle {
    id: u64,
    area: Arc<Mutex<Option<Area>>>,
    wake: std_mpsc::Sender<Cmd>,
}

impl InterestHandle {
    /// Sets (or moves) the area; the entities entering and leaving it are sent at once.
    pub fn set(&self, area: Area) {
        if self.area.lock().expect("interest lock").replace(area).is_none() {
            let _ = self.wake.send(Cmd::Interest(self.id));
        }
    }
}

enum Cmd {
    Commit,
    Subscribe(Box<ViewerLink>),
    /// The viewer's latest area is in its slot.
    Interest(u64),
    Drained(u64),
    /// Makes the thread fail as a read error would (fault injection for tests).
    Fail(String),
    /// A `zstd-dict` dictionary trained off the thread.
    Trained(theta_live::compress::Trained),
}

/// The session thread's end of one viewer.
struct ViewerLink {
    id: u64,
    options: ViewerOptions,
    tx: mpsc::Sender<Vec<u8>>,
    stats: Arc<ViewerStats>,
    drained_pending: Arc<AtomicBool>,
    backlog: Arc<AtomicBool>,
    failure: Arc<OnceLock<String>>,
    area: Arc<Mutex<Option<Area>>>,
}

/// A watched session's thread, as the hub reaches it.
struct SessionHandle {
    /// Tells the thread apart from a later one for the same session.
    generation: u64,
    tx: std_mpsc::Sender<Cmd>,
    /// A `Commit` is queued and not yet taken: commits coalesce, so the queue holds at most
    /// one however fast the store commits.
    commit_pending: Arc<AtomicBool>,
    /// The commits' decoded commands not yet taken by the thread.
    commits: Arc<Mutex<Pending>>,
}

/// Commits handed from the store to a session thread.
#[derive(Default)]
struct Pending {
    batches: Vec<Committed>,
    commands: usize,
    /// The highest durable head seen (ordered visibility; sequenced batches run ahead of it).
    durable: u64,
    /// Commits were dropped (the thread fell [`PENDING_COMMANDS`] behind): it reads the log.
    overflowed: bool,
}

/// Decoded commands held for a session thread before it reads the log back instead.
pub const PENDING_COMMANDS: usize = 65_536;

/// How long a session thread with no viewers lives on, by default.
pub const IDLE_RETIRE: std::time::Duration = std::time::Duration::from_secs(30);

/// When viewers see a command (the operator's choice, `theta serve --live-visibility`).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub enum Visibility {
    /// Only durable entries: what a viewer sees survives any crash. Its latency includes the
    /// store's flush.
    #[default]
    Confirmed,
    /// Entries as soon as the store has sequenced them, before their flush: a flush's time
    /// sooner, but a crash (or a failed flush) can take back what a viewer saw; after it,
    /// viewers resync to the durable head (their resume seq is beyond it, so they get a
    /// snapshot). Their deltas say from which seq on the entries are not yet durable.
    Ordered,
}

impl std::str::FromStr for Visibility {
    type Err = String;
    fn from_str(s: &str) -> Result<Visibility, String> {
        match s {
            "confirmed" => Ok(Visibility::Confirmed),
            "ordered" => Ok(Visibility::Ordered),
            other => Err(format!("live visibility {other:?}: expected confirmed or ordered")),
        }
    }
}

/// The live projections of watched sessions.
pub struct LiveHub {
    store: Arc<Store>,
    visibility: Visibility,
    /// Session threads write a checkpoint at every multiple of this seq (0: none).
    checkpoint_every: AtomicU64,
    /// The least time between two deltas of a session, microseconds (0: one per commit).
    pacing_us: AtomicU64,
    /// Threads that compress many viewers' `zstd-stream` pieces of one delta at once (shared by
    /// every session; `None` if they could not be started: sessions then compress in turn).
    compress_pool: Option<Arc<rayon::ThreadPool>>,
    /// Checkpoints written by session threads.
    pub checkpoints_written: AtomicU64,
    /// Every send to a session thread happens under this lock, so a retiring thread can see
    /// that nothing is left for it before it leaves.
    sessions: Mutex<HashMap<SessionId, SessionHandle>>,
    next_generation: AtomicU64,
    idle_retire: std::time::Duration,
    /// Session threads that ended on an error (their viewers get a [`LiveFailure`]; the next
    /// viewer starts a new thread).
    pub session_failures: AtomicU64,
    next_viewer: AtomicU64,
    /// Viewers resynced with a fresh snapshot because they fell behind.
    pub resyncs: AtomicU64,
    /// Deltas sent to viewers.
    pub deltas_sent: AtomicU64,
    /// Delta and snapshot payload bytes before compression, for viewers with compression.
    pub raw_bytes: AtomicU64,
    /// The same payloads' bytes as queued (compressed where that was smaller).
    pub compressed_bytes: AtomicU64,
    /// Dictionaries trained.
    pub dictionaries: AtomicU64,
    /// Viewers that resumed from their seq without a snapshot.
    pub resumes: AtomicU64,
}

impl LiveHub {
    /// A hub over `store`; it follows commits through a store listener.
    pub fn new(store: Arc<Store>) -> Arc<LiveHub> {
        LiveHub::with_idle_retire(store, IDLE_RETIRE)
    }

    /// [`LiveHub::new`], with session threads retired after `idle` without viewers.
    pub fn with_idle_retire(store: Arc<Store>, idle: std::time::Duration) -> Arc<LiveHub> {
        LiveHub::with_options(store, idle, Visibility::Confirmed)
    }

    /// A hub over `store` whose viewers see commands as `visibility` says, with session threads
    /// retired after `idle` without viewers.
    pub fn with_options(store: Arc<Store>, idle: std::time::Duration, visibility: Visibility) -> Arc<LiveHub> {
        let hub = Arc::new(LiveHub {
            idle_retire: idle,
            store: store.clone(),
            visibility,
            checkpoint_every: AtomicU64::new(0),
            pacing_us: AtomicU64::new(0),
            compress_pool: compress_pool(),
            checkpoints_written: AtomicU64::new(0),
            sessions: Mutex::new(HashMap::new()),
            next_generation: AtomicU64::new(1),
            session_failures: AtomicU64::new(0),
            next_viewer: AtomicU64::new(1),
            resyncs: AtomicU64::new(0),
            deltas_sent: AtomicU64::new(0),
            raw_bytes: AtomicU64::new(0),
            compressed_bytes: AtomicU64::new(0),
            dictionaries: AtomicU64::new(0),
            resumes: AtomicU64::new(0),
        });
        // Each commit's decoded commands go straight to the session's thread: nothing is read
        // back from the log or decoded again on the live path. In `Ordered` mode they come once
        // sequenced.
        let weak = Arc::downgrade(&hub);
        match visibility {
            Visibility::Confirmed => store.add_command_listener(move |commits| {
                if let Some(hub) = weak.upgrade() {
                    hub.hand_over(commits.iter(), true);
                }
            }),
            Visibility::Ordered => {
                let sequenced = weak.clone();
                store.add_sequenced_listener(move |commits| {
                    if let Some(hub) = sequenced.upgrade() {
                        hub.hand_over(commits.iter(), false);
                    }
                });
                // Durable heads only: they let a thread that missed sequenced commits (made
                // before it started, or imports) read them back once they are durable.
                // Sequenced commands storage no longer holds after a failure: the session's
                // thread ends (its viewers are cut, and resume from the log).
                let reset = weak.clone();
                store.add_reset_listener(move |heads| {
                    if let Some(hub) = reset.upgrade() {
                        let sessions = hub.sessions.lock().expect("live sessions lock");
                        for h in heads {
                            if let Some(handle) = sessions.get(&h.session) {
                                let reason = format!("storage was reopened after a failure at seq {}", h.seq);
                                let _ = handle.tx.send(Cmd::Fail(reason));
                            }
                        }
                    }
                });
                store.add_command_listener(move |commits| {
                    if let Some(hub) = weak.upgrade() {
                        let heads: Vec<Committed> = commits
                            .iter()
                            .map(|c| Committed { head: c.head.clone(), commands: Arc::new([]) })
                            .collect();
                        hub.hand_over(heads.iter(), true);
                    }
                });
            }
        }
        hub
    }

    /// Gives commits to their sessions' threads (sessions nobody watches are skipped);
    /// `durable`: they are durable (else only sequenced).
    fn hand_over<'a>(&self, commits: impl Iterator<Item = &'a Committed>, durable: bool) {
        let sessions = self.sessions.lock().expect("live sessions lock");
        for c in commits {
            let Some(handle) = sessions.get(&c.head.session) else { continue };
            {
                let mut pending = handle.commits.lock().expect("live commits lock");
                if durable {
                    pending.durable = pending.durable.max(c.head.seq);
                }
                // Bounded by commands, and by batches (head-only ones count as one).
                let cost = c.commands.len().max(1);
                if pending.commands + cost > PENDING_COMMANDS {
                    pending.batches.clear();
                    pending.commands = 0;
                    pending.overflowed = true;
                } else {
                    pending.commands += cost;
                    pending.batches.push(c.clone());
                }
            }
            if !handle.commit_pending.swap(true, Relaxed) {
                let _ = handle.tx.send(Cmd::Commit);
            }
        }
    }

    /// Subscribes a viewer to a session: frame payloads (snapshot chunks, then deltas) arrive
    /// through the returned subscription.
    pub fn subscribe_with(
        self: &Arc<Self>,
        session: SessionId,
        options: ViewerOptions,
    ) -> Result<Subscription, ReadError> {
        self.store.head(&session)?;
        let (tx, rx) = mpsc::channel(HANDOFF_FRAMES);
        let id = self.next_viewer.fetch_add(1, Relaxed);
        let stats = Arc::new(ViewerStats::default());
        let drained_pending = Arc::new(AtomicBool::new(false));
        let backlog = Arc::new(AtomicBool::new(false));
        let failure = Arc::new(OnceLock::new());
        let area = Arc::new(Mutex::new(None));
        let link = ViewerLink {
            id,
            options,
            tx,
            stats: stats.clone(),
            drained_pending: drained_pending.clone(),
            backlog: backlog.clone(),
            failure: failure.clone(),
            area: area.clone(),
        };
        let wake = self.to_session(session, Cmd::Subscribe(Box::new(link)));
        Ok(Subscription { id, frames: rx, stats, wake, drained_pending, backlog, failure, area })
    }

    /// Session threads started from now on write a checkpoint of their projection at every
    /// multiple of `every` seqs (0: none) once it is durable: the live projection is the one
    /// fold of the log for a watched session, and the periodic checkpoint pass finds nothing
    /// left to do for it.
    pub fn set_checkpoint_every(&self, every: u64) {
        self.checkpoint_every.store(every, Relaxed);
    }

    /// Session threads started from now on send each session's viewers at most one delta per
    /// `pacing` (zero: one per commit; [`theta_live::fanout::FanOut::set_pacing`]).
    pub fn set_pacing(&self, pacing: std::time::Duration) {
        self.pacing_us.store(pacing.as_micros() as u64, Relaxed);
    }

    /// Makes the session's thread (if one runs) fail as a read error would: its viewers'
    /// subscriptions end with a [`LiveFailure`]. For fault-injection tests.
    pub fn fail_session(&self, session: SessionId, reason: &str) {
        if let Some(h) = self.sessions.lock().expect("live sessions lock").get(&session) {
            let _ = h.tx.send(Cmd::Fail(reason.to_string()));
        }
    }

    /// Session threads running now.
    pub fn session_threads(&self) -> usize {
        self.sessions.lock().expect("live sessions lock").len()
    }

    /// Sends `cmd` to the session's thread, starting one if none runs (under the lock);
    /// returns the thread's queue.
    fn to_session(self: &Arc<Self>, session: SessionId, cmd: Cmd) -> std_mpsc::Sender<Cmd> {
        let mut sessions = self.sessions.lock().expect("live sessions lock");
        let handle = sessions.entry(session).or_insert_with(|| {
            let (tx, rx) = std_mpsc::channel();
            let generation = self.next_generation.fetch_add(1, Relaxed);
            let commit_pending = Arc::new(AtomicBool::new(false));
            let commits = Arc::new(Mutex::new(Pending::default()));
            let (hub, pending, batches) = (self.clone(), commit_pending.clone(), commits.clone());
            std::thread::Builder::new()
                .name("theta-live".into())
                .spawn(move || hub.session_thread(session, generation, rx, &pending, &batches))
                .expect("spawn live session thread");
            SessionHandle { generation, tx, commit_pending, commits }
        });
        let _ = handle.tx.send(cmd);
        handle.tx.clone()
    }

    /// Removes the session's thread from the hub if it is still generation `generation`.
    fn forget(&self, session: SessionId, generation: u64) {
        let mut sessions = self.sessions.lock().expect("live sessions lock");
        if sessions.get(&session).is_some_and(|h| h.generation == generation) {
            sessions.remove(&session);
        }
    }

    fn session_thread(
        &self,
        session: SessionId,
        generation: u64,
        rx: std_mpsc::Receiver<Cmd>,
        pending: &AtomicBool,
        commits: &Mutex<Pending>,
    ) {
        let mut viewers = BTreeMap::new();
        let result = self.run(session, generation, &rx, pending, commits, &mut viewers);
        self.forget(session, generation);
        if let Err(reason) = result {
            self.session_failures.fetch_add(1, Relaxed);
            eprintln!(
                "theta-gateway: the live thread of session {session} failed: {reason}; its viewers are told to reconnect"
            );
            // Viewers subscribed meanwhile are told too.
            for cmd in rx.try_iter() {
                if let Cmd::Subscribe(link) = cmd {
                    viewers.insert(link.id, *link);
                }
            }
            for v in viewers.values() {
                let _ = v.failure.set(reason.clone());
            }
        }
        // Dropping the viewers' senders ends their streams.
    }

    /// The session's thread: `Err` when it stopped on an error, `Ok` when it retired (no
    /// viewers for its idle time) or the hub went away.
    fn run(
        &self,
        session: SessionId,
        generation: u64,
        rx: &std_mpsc::Receiver<Cmd>,
        commit_pending: &AtomicBool,
        pending_commits: &Mutex<Pending>,
        viewers: &mut BTreeMap<u64, ViewerLink>,
    ) -> Result<(), String> {
        let head = self.store.head(&session).map_err(|e| e.to_string())?;
        let opened = project(&self.store, &session, head.seq).map_err(|e| e.to_string())?;
        let mut fan = FanOut::new(opened.projection, VIEWER_QUEUE_FRAMES);
        fan.set_checkpoint_every(self.checkpoint_every.load(Relaxed));
        fan.set_pacing(std::time::Duration::from_micros(self.pacing_us.load(Relaxed)));
        if let Some(pool) = self.compress_pool.clone() {
            let spread = move |jobs: &mut [StreamJob]| {
                use rayon::iter::{IntoParallelRefMutIterator, ParallelIterator};
                pool.install(|| jobs.par_iter_mut().for_each(StreamJob::run));
            };
            fan.set_spread(Box::new(spread), SPREAD_MIN_VIEWERS);
        }
        // Checkpoints taken beyond the durable head (ordered visibility), waiting for it.
        let mut unwritten: Vec<(u64, Vec<u8>)> = Vec::new();
        let mut durable_seq = fan.seq();
        if self.visibility == Visibility::Ordered {
            fan.handle_durable(fan.seq());
        }
        // The fan-out's clock (confirm frames): time since the thread started.
        let start = std::time::Instant::now();
        loop {
            let mut wait = if viewers.is_empty() { self.idle_retire } else { std::time::Duration::from_secs(3_600) };
            if let Some(at) = fan.poll_timeout() {
                wait = wait.min(at.saturating_sub(start.elapsed()));
            }
            let first = match rx.recv_timeout(wait) {
                Ok(c) => Some(c),
                Err(std_mpsc::RecvTimeoutError::Timeout) if viewers.is_empty() => {
                    // Retire, unless something arrived meanwhile (sends happen under the lock).
                    let mut sessions = self.sessions.lock().expect("live sessions lock");
                    match rx.try_recv() {
                        Ok(c) => Some(c),
                        Err(_) => {
                            if sessions.get(&session).is_some_and(|h| h.generation == generation) {
                                sessions.remove(&session);
                            }
                            return Ok(());
                        }
                    }
                }
                Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                Err(std_mpsc::RecvTimeoutError::Disconnected) => return Ok(()),
            };
            let mut commits = false;
            for cmd in first.into_iter().chain(rx.try_iter()) {
                match cmd {
                    Cmd::Commit => {
                        // Taken before the head is read: a later commit queues a new one.
                        commit_pending.store(false, Relaxed);
                        commits = true;
                    }
                    Cmd::Subscribe(link) => {
                        fan.handle_subscribe(link.id, link.options);
                        viewers.insert(link.id, *link);
                    }
                    Cmd::Interest(id) => {
                        let area = viewers.get(&id).and_then(|v| v.area.lock().expect("interest lock").take());
                        if let Some(area) = area {
                            fan.handle_interest(id, area);
                        }
                    }
                    Cmd::Drained(id) => {
                        if let Some(v) = viewers.get(&id) {
                            v.drained_pending.store(false, SeqCst);
                        }
                    }
                    Cmd::Fail(reason) => return Err(reason),
                    Cmd::Trained(trained) => fan.handle_trained(trained),
                }
            }
            if commits {
                let Pending { batches, overflowed, durable, .. } =
                    std::mem::take(&mut *pending_commits.lock().expect("live commits lock"));
                if self.visibility == Visibility::Ordered && durable > 0 {
                    fan.handle_durable(durable);
                    durable_seq = durable_seq.max(durable);
                }
                // Every batch taken in this wake-up becomes one delta: a thread that fell behind
                // catches up in one step per viewer instead of one per batch.
                let last_head = batches.iter().map(|c| c.head.seq).max().unwrap_or(0);
                let all = || batches.iter().flat_map(|c| c.commands.iter().map(|(seq, body)| (*seq, body)));
                let read_back = overflowed
                    || match fan.handle_committed(all(), start.elapsed()) {
                        Ok(()) => fan.seq() < last_head,
                        // Commits the thread missed (made before it subscribed, or an import).
                        Err(FanOutError::Gap { .. }) => true,
                        Err(e) => return Err(e.to_string()),
                    };
                if read_back {
                    self.catch_up(&session, &mut fan, start.elapsed())?;
                    // Sequenced entries beyond the head the store showed; a gap left here is
                    // read back on the next commit.
                    match fan.handle_committed(all(), start.elapsed()) {
                        Ok(()) | Err(FanOutError::Gap { .. }) => {}
                        Err(e) => return Err(e.to_string()),
                    }
                }
                if self.visibility == Visibility::Confirmed {
                    durable_seq = fan.seq();
                }
                unwritten.extend(fan.take_checkpoints());
                self.write_checkpoints(&session, &mut unwritten, durable_seq);
            }
            fan.handle_timeout(start.elapsed());
            if let Some(job) = fan.poll_training() {
                self.train(session, generation, job);
            }
            // Hand each viewer what its connection has room for; forget closed ones.
            viewers.retain(|&id, v| {
                if !hand_off(&mut fan, id, v) {
                    fan.handle_cut(id);
                    return false;
                }
                if let Some(c) = fan.viewer_counts(id) {
                    v.stats.deltas.store(c.deltas, Relaxed);
                    v.stats.resyncs.store(c.resyncs, Relaxed);
                }
                true
            });
            self.add_counts(fan.take_counts());
        }
    }

    /// Trains a dictionary on its own thread (tens of milliseconds the session's viewers do
    /// not wait for) and hands it back to the session's thread.
    fn train(&self, session: SessionId, generation: u64, job: theta_live::compress::TrainJob) {
        let tx = self
            .sessions
            .lock()
            .expect("live sessions lock")
            .get(&session)
            .filter(|h| h.generation == generation)
            .map(|h| h.tx.clone());
        let Some(tx) = tx else { return };
        let spawned = std::thread::Builder::new().name("theta-dict".into()).spawn(move || {
            if let Some(trained) = job.run() {
                let _ = tx.send(Cmd::Trained(trained));
            }
        });
        if let Err(e) = spawned {
            eprintln!(
                "theta-gateway: session {session}: no thread to train a dictionary on ({e}); zstd-dict viewers keep the one they have"
            );
        }
    }

    /// Stores the checkpoints at or below the durable seq (a checkpoint is a cache: one that
    /// cannot be written is reported and dropped). Under ordered visibility a crash can take
    /// back entries beyond the durable head, so checkpoints past it wait.
    fn write_checkpoints(&self, session: &SessionId, unwritten: &mut Vec<(u64, Vec<u8>)>, durable: u64) {
        let due = unwritten.iter().take_while(|(seq, _)| *seq <= durable).count();
        for (seq, bytes) in unwritten.drain(..due) {
            match self.store.put_checkpoint(session, seq, bytes) {
                Ok(()) => {
                    self.checkpoints_written.fetch_add(1, Relaxed);
                }
                Err(e) => eprintln!("theta-gateway: checkpoint of session {session} at seq {seq}: {e}"),
            }
        }
    }

    /// Folds the entries committed since the fan-out's seq.
    fn catch_up(&self, session: &SessionId, fan: &mut FanOut, now: std::time::Duration) -> Result<(), String> {
        let head = self.store.head(session).map_err(|e| e.to_string())?;
        if head.seq <= fan.seq() {
            return Ok(());
        }
        let entries = self.store.read_range(session, fan.seq() + 1, head.seq).map_err(|e| e.to_string())?;
        let mut bodies = Vec::with_capacity((head.seq - fan.seq()) as usize);
        for e in entries {
            let e = e.map_err(|e| e.to_string())?;
            let (_, body) = Envelope::open(&e.envelope).map_err(|err| format!("entry {}: {err}", e.seq))?;
            bodies.push((e.seq, body));
        }
        fan.handle_committed(bodies.iter().map(|(seq, body)| (*seq, body)), now).map_err(|e| e.to_string())
    }

    fn add_counts(&self, c: Counts) {
        if c == Counts::default() {
            return;
        }
        self.deltas_sent.fetch_add(c.deltas, Relaxed);
        self.resyncs.fetch_add(c.resyncs, Relaxed);
        self.raw_bytes.fetch_add(c.raw_bytes, Relaxed);
        self.compressed_bytes.fetch_add(c.compressed_bytes, Relaxed);
        self.dictionaries.fetch_add(c.dictionaries, Relaxed);
        self.resumes.fetch_add(c.resumes, Relaxed);
    }
}
