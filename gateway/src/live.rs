//! Live projections and fan-out: one thread per watched session folds new entries into its
//! projection and sends each viewer the snapshot, then coalesced deltas, through a bounded
//! queue. Commits wake the thread through one coalesced message; a thread with no viewers
//! retires after a while, and one that fails is counted and removed: the next viewer starts a
//! new one. The append path never waits on a viewer: a viewer whose queue is full is marked for
//! a resync (a fresh snapshot once its queue has room) and counted.
//!
//! Per viewer, as negotiated: zstd compression (with a dictionary trained from the session's
//! deltas and sent in-band), an area of interest (only entities inside are streamed), and a
//! resume point (the deltas after it instead of a snapshot, while they are still kept).

use std::collections::{HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};

use theta_client::compress::{self, Encoding, StreamCompressor, Trainer};
use theta_projector::interest::{Area, InterestView};
use theta_projector::{DEFAULT_CHUNK_BYTES, Projection};
use theta_schemas::wire::{Delta, Dictionary};
use theta_schemas::{MAX_ENVELOPE_BYTES, Message, SessionId};
use theta_store::{ReadError, Store};
use tokio::sync::mpsc;

use crate::history::project;

/// Frames queued per viewer beyond its snapshot.
pub const VIEWER_QUEUE_FRAMES: usize = 256;
/// Recent deltas kept per session for viewers that reconnect and resume.
pub const RESUME_DELTAS: usize = 1_024;

/// How one viewer wants its stream.
#[derive(Debug, Clone, Copy, Default)]
pub struct ViewerOptions {
    /// Frame encoding (from the agreed compression kinds).
    pub encoding: Encoding,
    /// Area-of-interest filtering: nothing is streamed until the first area arrives.
    pub interest: bool,
    /// The seq the viewer's mirror holds (0: none).
    pub resume_seq: u64,
    /// Largest snapshot chunk, bytes (0: the default).
    pub max_chunk_bytes: usize,
}

/// One viewer's counters, shared with its connection.
#[derive(Debug, Default)]
pub struct ViewerStats {
    /// Deltas queued for the viewer.
    pub deltas: AtomicU64,
    /// Snapshots sent because the viewer fell behind.
    pub resyncs: AtomicU64,
}

/// A viewer's subscription.
pub struct Subscription {
    /// Viewer id within the hub (for [`LiveHub::set_interest`]).
    pub id: u64,
    /// Frame payloads: snapshot chunks, dictionaries and deltas, in order.
    pub frames: mpsc::Receiver<Vec<u8>>,
    /// The viewer's counters.
    pub stats: Arc<ViewerStats>,
}

enum Cmd {
    Commit,
    Subscribe(Box<Slot>),
    Interest(u64, Area),
}

struct Slot {
    id: u64,
    tx: mpsc::Sender<Vec<u8>>,
    options: ViewerOptions,
    stats: Arc<ViewerStats>,
    described: bool,
    resync: bool,
    dictionary_sent: u32,
    /// `Some` for interest-managed viewers once they named an area.
    view: Option<InterestView>,
    area_moved: bool,
    /// The viewer's continuous zstd stream (`zstd-stream`).
    stream: Option<StreamCompressor>,
}

/// A watched session's thread, as the hub reaches it.
struct SessionHandle {
    /// Tells the thread apart from a later one for the same session.
    generation: u64,
    tx: std_mpsc::Sender<Cmd>,
    /// A `Commit` is queued and not yet taken: commits coalesce, so the queue holds at most
    /// one however fast the store commits.
    commit_pending: Arc<AtomicBool>,
}

/// How long a session thread with no viewers lives on, by default.
pub const IDLE_RETIRE: std::time::Duration = std::time::Duration::from_secs(30);

/// The live projections of watched sessions.
pub struct LiveHub {
    store: Arc<Store>,
    /// Every send to a session thread happens under this lock, so a retiring thread can see
    /// that nothing is left for it before it leaves.
    sessions: Mutex<HashMap<SessionId, SessionHandle>>,
    next_generation: AtomicU64,
    idle_retire: std::time::Duration,
    /// Session threads that ended on an error (their viewers' streams end; the next viewer
    /// starts a new thread).
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
        let hub = Arc::new(LiveHub {
            idle_retire: idle,
            store: store.clone(),
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
        let weak = Arc::downgrade(&hub);
        store.add_commit_listener(move |heads| {
            let Some(hub) = weak.upgrade() else { return };
            let sessions = hub.sessions.lock().expect("live sessions lock");
            for h in heads {
                if let Some(handle) = sessions.get(&h.session)
                    && !handle.commit_pending.swap(true, Relaxed)
                {
                    let _ = handle.tx.send(Cmd::Commit);
                }
            }
        });
        hub
    }

    /// Subscribes a viewer to a session: frame payloads (snapshot chunks, then deltas) arrive
    /// on the returned queue.
    pub fn subscribe_with(
        self: &Arc<Self>,
        session: SessionId,
        options: ViewerOptions,
    ) -> Result<Subscription, ReadError> {
        self.store.head(&session)?;
        let (tx, rx) = mpsc::channel(VIEWER_QUEUE_FRAMES);
        let id = self.next_viewer.fetch_add(1, Relaxed);
        let stats = Arc::new(ViewerStats::default());
        let slot = Slot {
            id,
            tx,
            options,
            stats: stats.clone(),
            described: false,
            resync: true,
            dictionary_sent: 0,
            view: None,
            area_moved: false,
            stream: None,
        };
        self.to_session(session, Cmd::Subscribe(Box::new(slot)));
        Ok(Subscription { id, frames: rx, stats })
    }

    /// Sets (or moves) an interest-managed viewer's area; the entities entering and leaving it
    /// are sent at once.
    pub fn set_interest(self: &Arc<Self>, session: SessionId, viewer: u64, area: Area) {
        self.to_session(session, Cmd::Interest(viewer, area));
    }

    /// Session threads running now.
    pub fn session_threads(&self) -> usize {
        self.sessions.lock().expect("live sessions lock").len()
    }

    /// Sends `cmd` to the session's thread, starting one if none runs (under the lock).
    fn to_session(self: &Arc<Self>, session: SessionId, cmd: Cmd) {
        let mut sessions = self.sessions.lock().expect("live sessions lock");
        let handle = sessions.entry(session).or_insert_with(|| {
            let (tx, rx) = std_mpsc::channel();
            let generation = self.next_generation.fetch_add(1, Relaxed);
            let commit_pending = Arc::new(AtomicBool::new(false));
            let (hub, pending) = (self.clone(), commit_pending.clone());
            std::thread::Builder::new()
                .name("theta-live".into())
                .spawn(move || {
                    let failed = hub.run(session, generation, rx, &pending).is_err();
                    hub.forget(session, generation, failed);
                })
                .expect("spawn live session thread");
            SessionHandle { generation, tx, commit_pending }
        });
        let _ = handle.tx.send(cmd);
    }

    /// Removes the session's thread from the hub if it is still generation `generation`.
    fn forget(&self, session: SessionId, generation: u64, failed: bool) {
        let mut sessions = self.sessions.lock().expect("live sessions lock");
        if sessions.get(&session).is_some_and(|h| h.generation == generation) {
            sessions.remove(&session);
        }
        if failed {
            self.session_failures.fetch_add(1, Relaxed);
            eprintln!(
                "theta-gateway: the live thread of session {session} stopped on a read error; its viewers' streams end"
            );
        }
    }

    /// The session's thread: `Err` when it stopped on a read error, `Ok` when it retired
    /// (no viewers for its idle time) or the hub went away.
    fn run(
        &self,
        session: SessionId,
        generation: u64,
        rx: std_mpsc::Receiver<Cmd>,
        commit_pending: &AtomicBool,
    ) -> Result<(), ()> {
        let head = self.store.head(&session).map_err(drop)?;
        let opened = project(&self.store, &session, head.seq).map_err(drop)?;
        let mut live = Live { hub: self, p: opened.projection, trainer: Trainer::new(), recent: VecDeque::new() };
        let _ = live.p.take_delta(false);
        let mut viewers: Vec<Slot> = Vec::new();
        loop {
            // While a viewer waits for a resync, retry it every 50 ms even without commits;
            // with no viewers, retire after a while.
            let wait = if viewers.iter().any(|v| v.resync) {
                std::time::Duration::from_millis(50)
            } else if viewers.is_empty() {
                self.idle_retire
            } else {
                std::time::Duration::from_secs(3_600)
            };
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
                    Cmd::Subscribe(slot) => {
                        let mut slot = *slot;
                        if !live.resume(&mut slot) {
                            live.try_snapshot(&mut slot);
                        }
                        viewers.push(slot);
                    }
                    Cmd::Interest(id, area) => {
                        if let Some(v) = viewers.iter_mut().find(|v| v.id == id && v.options.interest) {
                            match &mut v.view {
                                Some(view) => view.set_area(area),
                                None => v.view = Some(InterestView::new(area)),
                            }
                            v.area_moved = true;
                        }
                    }
                }
            }
            if commits {
                let head = self.store.head(&session).map_err(drop)?;
                if head.seq > live.p.seq() {
                    let entries = self.store.read_range(&session, live.p.seq() + 1, head.seq).map_err(drop)?;
                    for e in entries {
                        live.p.apply_entry(&e.map_err(drop)?).map_err(drop)?;
                    }
                    let delta = live.p.take_delta(false);
                    live.fan_out(&delta, &mut viewers);
                }
            }
            // Interest-managed viewers whose area moved get the entities entering and leaving.
            let seq = live.p.seq();
            for v in viewers.iter_mut().filter(|v| v.area_moved && !v.resync) {
                v.area_moved = false;
                let empty = Delta {
                    session,
                    from_seq: seq,
                    to_seq: seq,
                    state_hash: [0; 32],
                    spawned: vec![],
                    upserts: vec![],
                    removals: vec![],
                    despawned: vec![],
                    descriptors: vec![],
                };
                live.send_delta(v, &empty, None);
            }
            viewers.retain(|v| !v.tx.is_closed());
            for v in viewers.iter_mut().filter(|v| v.resync) {
                live.try_snapshot(v);
            }
        }
    }
}

/// One session's live state on its thread.
struct Live<'a> {
    hub: &'a LiveHub,
    p: Projection,
    trainer: Trainer,
    /// Recent deltas as plain frames: `(from_seq, to_seq, payload)`.
    recent: VecDeque<(u64, u64, Vec<u8>)>,
}

/// Encoded forms of one delta for viewers without interest filtering, built on first use.
struct Shared {
    plain: Vec<u8>,
    described: Option<Vec<u8>>,
    forms: HashMap<(bool, Encoding), Vec<u8>>,
}

impl Shared {
    /// The uncompressed frame: with the component descriptors for a viewer's first delta after
    /// a snapshot, plain otherwise.
    fn raw(&mut self, delta: &Delta, described: bool) -> &[u8] {
        if described {
            return &self.plain;
        }
        self.described.get_or_insert_with(|| {
            let mut d = delta.clone();
            d.descriptors = theta_projector::wire_descriptors();
            Message::Delta(d).encode()
        })
    }
}

impl Live<'_> {
    fn fan_out(&mut self, delta: &Delta, viewers: &mut [Slot]) {
        let plain = Message::Delta(delta.clone()).encode();
        if plain.len() > MAX_ENVELOPE_BYTES {
            // Too big for one frame: everyone not filtering gets a fresh snapshot instead.
            for v in viewers.iter_mut().filter(|v| !v.options.interest && !v.resync) {
                v.resync = true;
            }
            self.recent.clear();
        } else {
            if self.trainer.add(&plain) {
                self.hub.dictionaries.fetch_add(1, Relaxed);
            }
            self.recent.push_back((delta.from_seq, delta.to_seq, plain.clone()));
            if self.recent.len() > RESUME_DELTAS {
                self.recent.pop_front();
            }
        }
        let mut shared = Shared { plain, described: None, forms: HashMap::new() };
        for v in viewers.iter_mut().filter(|v| !v.resync) {
            self.send_delta(v, delta, Some(&mut shared));
        }
    }

    /// Queues `delta` for one viewer (filtered to its area when it manages interest). A full
    /// queue or an oversized frame marks the viewer for a resync.
    fn send_delta(&mut self, v: &mut Slot, delta: &Delta, shared: Option<&mut Shared>) {
        let payload = if v.options.interest {
            let Some(view) = v.view.as_mut() else { return };
            let mut filtered = view.filter(&self.p, delta);
            if !v.described {
                filtered.descriptors = theta_projector::wire_descriptors();
            }
            let raw = Message::Delta(filtered).encode();
            if raw.len() > MAX_ENVELOPE_BYTES {
                v.resync = true;
                return;
            }
            self.encode(v, raw)
        } else {
            let Some(shared) = shared else { return };
            if shared.plain.len() > MAX_ENVELOPE_BYTES {
                return; // marked for resync by the caller
            }
            if v.options.encoding == Encoding::ZstdStream {
                // Per-viewer stream state: only the raw form is shared.
                let raw = shared.raw(delta, v.described).to_vec();
                self.encode(v, raw)
            } else {
                self.encode_shared(v, delta, shared)
            }
        };
        if !self.ensure_dictionary(v) {
            return;
        }
        match v.tx.try_send(payload) {
            Ok(()) => {
                v.described = true;
                v.stats.deltas.fetch_add(1, Relaxed);
                self.hub.deltas_sent.fetch_add(1, Relaxed);
            }
            Err(mpsc::error::TrySendError::Full(_)) => self.mark_resync(v),
            Err(mpsc::error::TrySendError::Closed(_)) => {}
        }
    }

    /// The viewer's encoded form of a delta from the per-delta cache.
    fn encode_shared(&mut self, v: &mut Slot, delta: &Delta, shared: &mut Shared) -> Vec<u8> {
        let key = (v.described, v.options.encoding);
        if let Some(sent) = shared.forms.get(&key).map(Vec::len) {
            let raw_len = shared.raw(delta, v.described).len();
            self.count(v.options.encoding, raw_len, sent);
            return shared.forms[&key].clone();
        }
        let raw = shared.raw(delta, v.described).to_vec();
        let p = self.encode(v, raw);
        shared.forms.insert(key, p.clone());
        p
    }

    fn mark_resync(&self, v: &mut Slot) {
        v.resync = true;
        v.stats.resyncs.fetch_add(1, Relaxed);
        self.hub.resyncs.fetch_add(1, Relaxed);
    }

    /// Sends the current dictionary to a `zstd-dict` viewer that lacks it. False when its queue
    /// is full (the viewer is then marked for a resync).
    fn ensure_dictionary(&self, v: &mut Slot) -> bool {
        if v.options.encoding != Encoding::ZstdDict {
            return true;
        }
        let Some((id, data)) = self.trainer.dictionary() else { return true };
        if v.dictionary_sent == id {
            return true;
        }
        let frame = Message::Dictionary(Dictionary { id, data: data.to_vec() }).encode();
        if v.tx.try_send(frame).is_err() {
            self.mark_resync(v);
            return false;
        }
        v.dictionary_sent = id;
        true
    }

    /// Compresses `raw` as the viewer's encoding asks.
    fn encode(&mut self, v: &mut Slot, raw: Vec<u8>) -> Vec<u8> {
        let raw_len = raw.len();
        let out = match v.options.encoding {
            Encoding::Raw => return raw,
            Encoding::Zstd => compress::compress(raw, None),
            Encoding::ZstdDict => compress::compress(raw, self.trainer.compressor()),
            Encoding::ZstdStream => {
                if v.stream.is_none() {
                    v.stream = StreamCompressor::new().ok();
                }
                match v.stream.as_mut().map(|s| s.compress(&raw)) {
                    Some(Ok(out)) => out,
                    // zstd failed: the stream is unusable, so plain frames from now on.
                    _ => {
                        v.options.encoding = Encoding::Raw;
                        return raw;
                    }
                }
            }
        };
        self.count(v.options.encoding, raw_len, out.len());
        out
    }

    fn count(&self, encoding: Encoding, raw: usize, sent: usize) {
        if encoding != Encoding::Raw {
            self.hub.raw_bytes.fetch_add(raw as u64, Relaxed);
            self.hub.compressed_bytes.fetch_add(sent as u64, Relaxed);
        }
    }

    /// Sends the deltas after the viewer's resume point when they are all still kept and fit
    /// its queue. False when it needs a snapshot instead.
    fn resume(&mut self, v: &mut Slot) -> bool {
        let from = v.options.resume_seq;
        if from == 0 || v.options.interest || from > self.p.seq() {
            return false;
        }
        let frames: Vec<Vec<u8>> = if from == self.p.seq() {
            // Already current: an empty delta confirms the state hash.
            let d = Delta {
                session: self.p.session(),
                from_seq: from,
                to_seq: from,
                state_hash: self.p.state_hash(),
                spawned: vec![],
                upserts: vec![],
                removals: vec![],
                despawned: vec![],
                descriptors: vec![],
            };
            vec![Message::Delta(d).encode()]
        } else {
            let Some(start) = self.recent.iter().position(|(f, _, _)| *f == from) else { return false };
            let kept: Vec<_> = self.recent.iter().skip(start).collect();
            let chained = kept.windows(2).all(|w| w[0].1 == w[1].0);
            if !chained || kept.last().map(|k| k.1) != Some(self.p.seq()) || kept.len() + 2 > v.tx.capacity() {
                return false;
            }
            kept.into_iter().map(|(_, _, p)| p.clone()).collect()
        };
        if !self.ensure_dictionary(v) {
            return false;
        }
        for f in frames {
            let payload = self.encode(v, f);
            if v.tx.try_send(payload).is_err() {
                return false;
            }
        }
        v.resync = false;
        v.described = true;
        self.hub.resumes.fetch_add(1, Relaxed);
        true
    }

    /// Sends a fresh snapshot if the viewer's queue has room for all of it.
    fn try_snapshot(&mut self, v: &mut Slot) {
        // A snapshot has at least one chunk: skip building it while the queue is (nearly) full.
        if v.tx.capacity() < 3 {
            return;
        }
        let chunk = match v.options.max_chunk_bytes {
            0 => DEFAULT_CHUNK_BYTES,
            n => n.min(DEFAULT_CHUNK_BYTES),
        };
        let chunks = if v.options.interest {
            match v.view.as_mut() {
                Some(view) => view.snapshot(&self.p, chunk),
                // No area yet: an empty projection at the current seq.
                None => self.p.snapshot(chunk, Some(&Default::default())),
            }
        } else {
            self.p.snapshot(chunk, None)
        };
        if v.tx.capacity() < chunks.len() + 2 || !self.ensure_dictionary(v) {
            return;
        }
        for c in chunks {
            let payload = self.encode(v, Message::SnapshotChunk(c).encode());
            if v.tx.try_send(payload).is_err() {
                return;
            }
        }
        v.resync = false;
        v.described = false;
        v.area_moved = false;
    }
}
