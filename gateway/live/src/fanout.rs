//! One session's live fan-out as a state machine without I/O: it folds committed commands into
//! the session's projection and keeps, per viewer, a bounded queue of frame payloads (snapshot
//! chunks, dictionaries, deltas), each already encoded as that viewer agreed (zstd, a trained
//! dictionary, a continuous zstd stream; an area of interest; a resume point).
//!
//! The caller owns the I/O: it feeds commits, subscriptions, interest changes and departures
//! in (`handle_*`), and moves each viewer's frames to its connection with
//! [`FanOut::poll_frame`] as the connection has room. A viewer whose queue is full when a delta
//! is due is marked for a resync: it gets no more deltas, and once its queue has drained it gets
//! a fresh snapshot (or, when it names a seq the fan-out still holds the deltas after, those
//! deltas). Nothing here blocks, reads a clock or allocates without bound: per viewer at most
//! one snapshot (queued whole once its queue is empty, however many chunks it has) plus its
//! queue limit of other frames; per session at most [`RESUME_DELTAS`] kept deltas.
//!
//! Time is passed in (`now`, from any fixed origin the caller chooses). It matters for three
//! things only. *Pacing* ([`FanOut::set_pacing`]): deltas leave at most once per pacing
//! interval; commits folded meanwhile wait and leave together as one delta, so under load every
//! viewer gets fewer, larger deltas instead of falling behind. And two things that end in a
//! "confirm" frame (an empty delta at the current seq, with the state hash) when no delta
//! carries the news within [`CHECK_INTERVAL`]: viewers on compact streams, whose deltas carry
//! the state hash at most once per interval, and viewers under ordered visibility, whose deltas
//! say from which seq on entries are not yet durable ([`FanOut::handle_durable`]).
//! [`FanOut::poll_timeout`] says when the caller should call [`FanOut::handle_timeout`].
//!
//! The one slow computation, training a `zstd-dict` dictionary, is handed out too
//! ([`FanOut::poll_training`], [`FanOut::handle_trained`]): the caller runs it off the thread
//! that streams, so no viewer waits for it. And the per-viewer work that grows with the
//! viewers, compressing a delta into each viewer's own `zstd-stream`, can be handed to the
//! caller's threads as a batch of independent jobs ([`FanOut::set_spread`]).

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::time::Duration;

use theta_projector::interest::{Area, InterestView};
use theta_projector::{DEFAULT_CHUNK_BYTES, FoldError, Projection, Value};
use theta_schemas::components::{Component, QuantizedTransform, Transform};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::wire::{Delta, Dictionary};
use theta_schemas::{CommandBody, EntityId, MAX_ENVELOPE_BYTES, Message, SessionId};

use crate::compress::{self, Encoding, StreamCompressor, TrainJob, Trained, Trainer};

/// Recent deltas kept per session for viewers that reconnect and resume.
pub const RESUME_DELTAS: usize = 1_024;

/// On a compact stream, the most time between two deltas that carry the state hash; under
/// ordered visibility, the most time a viewer waits to learn that entries it holds are durable.
pub const CHECK_INTERVAL: Duration = Duration::from_millis(50);

/// Compresses a batch of viewers' `zstd-stream` pieces, perhaps in parallel: the caller decides
/// where the work runs ([`FanOut::set_spread`]); it must run every job before returning.
pub type Spread = Box<dyn Fn(&mut [StreamJob]) + Send>;

/// Viewers in step on `zstd-stream` from which the gateway spreads a delta's compression
/// ([`FanOut::set_spread`]); below it, one thread does them in turn.
pub const SPREAD_MIN_VIEWERS: usize = 8;

/// One viewer's next `zstd-stream` piece to compress: its stream and the delta's raw frame.
pub struct StreamJob {
    id: u64,
    stream: StreamCompressor,
    raw: Vec<u8>,
    out: Option<std::io::Result<Vec<u8>>>,
}

impl StreamJob {
    /// Compresses the piece (a few microseconds; independent of every other job).
    pub fn run(&mut self) {
        if self.out.is_none() {
            self.out = Some(self.stream.compress(&self.raw));
        }
    }
}

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
    /// Compact deltas: transforms quantized, the state hash at most once per
    /// [`CHECK_INTERVAL`] (ignored with `interest`). The viewer's mirror rounds the transforms
    /// of the snapshot it is sent the same way.
    pub compact: bool,
}

/// What the fan-out did since the counters were last taken ([`FanOut::take_counts`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    /// Deltas queued for viewers.
    pub deltas: u64,
    /// Viewers marked for a resync because their queue was full.
    pub resyncs: u64,
    /// Delta and snapshot payload bytes before compression, for viewers with compression.
    pub raw_bytes: u64,
    /// The same payloads' bytes as queued (compressed where that was smaller).
    pub compressed_bytes: u64,
    /// Dictionaries trained.
    pub dictionaries: u64,
    /// Viewers that resumed from their seq without a snapshot.
    pub resumes: u64,
    /// Snapshots queued.
    pub snapshots: u64,
    /// Confirm frames queued (empty deltas with the state hash or durability news).
    pub confirms: u64,
}

/// One viewer's running totals.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ViewerCounts {
    /// Deltas queued for it.
    pub deltas: u64,
    /// Times it fell behind and was marked for a resync.
    pub resyncs: u64,
}

/// Why the fan-out could not take a commit.
#[derive(Debug, thiserror::Error)]
pub enum FanOutError {
    /// A command is not the next seq: commits were missed (the caller catches up from the log).
    #[error("the live projection is at seq {have}; a commit at seq {got} does not follow it")]
    Gap {
        /// The projection's seq.
        have: u64,
        /// The command's seq.
        got: u64,
    },
    /// The projection refused a command (the log and the projector disagree).
    #[error(transparent)]
    Fold(#[from] FoldError),
}

struct Viewer {
    options: ViewerOptions,
    /// Frames to send; `true` marks a snapshot chunk (not counted against the limit).
    queue: VecDeque<(bool, Vec<u8>)>,
    /// Snapshot chunks in the queue.
    snapshot_left: usize,
    /// The component descriptors went out with a delta since the last snapshot.
    described: bool,
    /// Waiting for a fresh snapshot (deltas are not queued meanwhile).
    resync: bool,
    dictionary_sent: u32,
    /// `Some` for interest-managed viewers once they named an area.
    view: Option<InterestView>,
    /// The viewer's continuous zstd stream (`zstd-stream`).
    stream: Option<StreamCompressor>,
    counts: ViewerCounts,
}

impl Viewer {
    /// On a compact stream (never with interest management).
    fn compact(&self) -> bool {
        self.options.compact && !self.options.interest
    }

    fn pop(v: &mut Viewer) -> Option<Vec<u8>> {
        let (snapshot, frame) = v.queue.pop_front()?;
        if snapshot {
            v.snapshot_left -= 1;
        }
        Some(frame)
    }
}

/// A session's live fan-out (see the module documentation).
pub struct FanOut {
    p: Projection,
    trainer: Trainer,
    /// Recent deltas as plain frames: `(from_seq, to_seq, payload)`.
    recent: VecDeque<(u64, u64, Vec<u8>)>,
    viewers: BTreeMap<u64, Viewer>,
    limit: usize,
    counts: Counts,
    /// Ordered visibility: the highest seq known durable (`None`: every seq folded is durable).
    durable: Option<u64>,
    /// The `ordered_from` the last frame to every viewer carried.
    ordered_from_sent: u64,
    /// When a compact stream's delta last carried the state hash.
    checked_at: Duration,
    /// A compact stream got a delta without the state hash since.
    unchecked: bool,
    /// When the last delta or confirm went out.
    sent_at: Duration,
    /// The quantized transform of every entity whose transform quantizes, at the seq of the
    /// last delta: what a compact stream's receiver holds, the base of the differences sent.
    /// Kept only while a compact viewer is subscribed (built from the projection when the
    /// first one subscribes: its snapshot is taken at the projection's seq or later).
    held: Option<HashMap<EntityId, QuantizedTransform>>,
    /// Write a checkpoint at every multiple of this seq (0: none).
    checkpoint_every: u64,
    /// Checkpoints taken and not yet handed out: `(seq, bytes)`.
    checkpoints: Vec<(u64, Vec<u8>)>,
    /// The least time between two deltas (zero: one delta per commit).
    pacing: Duration,
    /// Commits were folded that no delta carried yet (pacing holds them back).
    held_back: bool,
    /// The latest time passed in.
    now: Duration,
    /// A `zstd-dict` viewer subscribed at some point: recent deltas feed the trainer.
    dictionary_wanted: bool,
    /// A dictionary to train, for the caller to run off this thread ([`FanOut::poll_training`]).
    training: Option<TrainJob>,
    /// Where many viewers' stream pieces are compressed (`None`: here, in turn), and from how
    /// many viewers on.
    spread: Option<(Spread, usize)>,
}

impl std::fmt::Debug for FanOut {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("FanOut")
            .field("session", &self.p.session())
            .field("seq", &self.p.seq())
            .field("viewers", &self.viewers.len())
            .finish_non_exhaustive()
    }
}

/// Encoded forms of one delta for viewers without interest filtering, built on first use.
struct Shared {
    plain: Vec<u8>,
    /// The compact form (transforms quantized, the state hash when a check is due).
    compact: Option<Delta>,
    /// Raw frames by (with descriptors, compact).
    raw: HashMap<(bool, bool), Vec<u8>>,
    /// Encoded frames by (with descriptors, compact, encoding).
    forms: HashMap<(bool, bool, Encoding), Vec<u8>>,
}

impl Shared {
    /// The uncompressed frame: with the component descriptors for a viewer's first delta after
    /// a snapshot, plain otherwise; compact or exact.
    fn raw(&mut self, delta: &Delta, described: bool, compact: bool) -> &[u8] {
        if described && !compact {
            return &self.plain;
        }
        let form = if compact { self.compact.as_ref().expect("compact form built") } else { delta };
        self.raw.entry((described, compact)).or_insert_with(|| {
            let mut d = form.clone();
            if !described {
                d.descriptors = theta_projector::wire_descriptors();
            }
            Message::Delta(d).encode()
        })
    }
}

fn empty_delta(session: SessionId, seq: u64, state_hash: Option<[u8; 32]>) -> Delta {
    Delta {
        session,
        from_seq: seq,
        to_seq: seq,
        state_hash,
        spawned: vec![],
        upserts: vec![],
        removals: vec![],
        despawned: vec![],
        transforms: vec![],
        ordered_from: 0,
        descriptors: vec![],
    }
}

/// The transforms a delta sets, in upsert order: each quantized, or `None` when it cannot be.
fn quantize_moves(delta: &Delta) -> Vec<(EntityId, Option<QuantizedTransform>)> {
    delta
        .upserts
        .iter()
        .filter(|u| u.component == Transform::id())
        .map(|u| (u.entity, Transform::decode(&u.data).ok().and_then(|t| QuantizedTransform::quantize(&t))))
        .collect()
}

/// `delta` as a compact stream carries it: each transform upsert quantized (those that cannot
/// be are kept exact) and sent as the difference from the quantized transform the receiver
/// holds (`held`, at the delta's `from_seq`) where it holds one, and `state_hash` in place of
/// the exact one.
fn compact_form(
    delta: &Delta,
    moves: &[(EntityId, Option<QuantizedTransform>)],
    held: &HashMap<EntityId, QuantizedTransform>,
    state_hash: Option<[u8; 32]>,
) -> Delta {
    let mut out = Delta { state_hash, ..empty_delta(delta.session, 0, None) };
    out.from_seq = delta.from_seq;
    out.to_seq = delta.to_seq;
    out.spawned = delta.spawned.clone();
    out.removals = delta.removals.clone();
    out.despawned = delta.despawned.clone();
    out.descriptors = delta.descriptors.clone();
    out.ordered_from = delta.ordered_from;
    let mut moves = moves.iter();
    for u in &delta.upserts {
        if u.component != Transform::id() {
            out.upserts.push(u.clone());
            continue;
        }
        match moves.next() {
            Some((e, Some(q))) => out.transforms.push((*e, held.get(e).map_or(*q, |base| q.minus(base)))),
            _ => out.upserts.push(u.clone()),
        }
    }
    out
}

impl FanOut {
    /// A fan-out over `projection` (the session folded up to its current seq), queueing at most
    /// `queue_frames` frames per viewer.
    pub fn new(mut projection: Projection, queue_frames: usize) -> FanOut {
        let _ = projection.take_delta(false);
        FanOut {
            held: None,
            checkpoint_every: 0,
            checkpoints: Vec::new(),
            p: projection,
            trainer: Trainer::new(),
            recent: VecDeque::new(),
            viewers: BTreeMap::new(),
            limit: queue_frames.max(3),
            counts: Counts::default(),
            durable: None,
            ordered_from_sent: 0,
            checked_at: Duration::ZERO,
            unchecked: false,
            sent_at: Duration::ZERO,
            pacing: Duration::ZERO,
            held_back: false,
            now: Duration::ZERO,
            dictionary_wanted: false,
            training: None,
            spread: None,
        }
    }

    /// Hands the `zstd-stream` compression of each delta to `spread` when at least
    /// `min_viewers` viewers in step need it (the gateway uses [`SPREAD_MIN_VIEWERS`]): each
    /// viewer's stream is its own, so the caller may run the jobs on several threads, and the
    /// last viewer no longer waits for every other viewer's piece. The frames and their order
    /// per viewer are the same either way.
    pub fn set_spread(&mut self, spread: Spread, min_viewers: usize) {
        self.spread = Some((spread, min_viewers.max(1)));
    }

    /// Samples to train a `zstd-dict` dictionary from, when due (at 64 and 1,024 deltas after
    /// the first `zstd-dict` viewer subscribed). Training takes tens of milliseconds: run it on
    /// another thread and hand the result to [`FanOut::handle_trained`]; until then those
    /// viewers get frames compressed with the dictionary they have (or none).
    pub fn poll_training(&mut self) -> Option<TrainJob> {
        self.training.take()
    }

    /// A dictionary trained from [`FanOut::poll_training`]'s samples: `zstd-dict` viewers get it
    /// before their next delta.
    pub fn handle_trained(&mut self, trained: Trained) {
        if self.trainer.install(trained) {
            self.counts.dictionaries += 1;
        }
    }

    /// Deltas leave at most once per `pacing` (zero, the default: one delta per commit).
    /// Commits folded within the interval leave together, as one delta, when it ends
    /// ([`FanOut::poll_timeout`]): a viewer waits at most `pacing` longer, and a session's
    /// viewers get at most one delta per interval however fast commits come.
    pub fn set_pacing(&mut self, pacing: Duration) {
        self.pacing = pacing;
    }

    /// Sends the folded changes no delta carried yet, as one delta.
    fn flush(&mut self, now: Duration) {
        if !self.held_back {
            return;
        }
        self.held_back = false;
        let mut delta = self.p.take_delta(false);
        delta.ordered_from = self.ordered_from();
        self.fan_out(&delta, now);
    }

    /// The time passed in most recently (time never runs backwards here).
    fn tick(&mut self, now: Duration) -> Duration {
        self.now = self.now.max(now);
        self.now
    }

    /// The live projection.
    pub fn projection(&self) -> &Projection {
        &self.p
    }

    /// The state hash a compact stream's viewer's mirror has at the current seq
    /// ([`Projection::compact_state_hash`]).
    pub fn compact_state_hash(&mut self) -> [u8; 32] {
        self.p.compact_state_hash()
    }

    /// The seq folded so far.
    pub fn seq(&self) -> u64 {
        self.p.seq()
    }

    /// Whether no viewer is subscribed.
    pub fn is_idle(&self) -> bool {
        self.viewers.is_empty()
    }

    /// The subscribed viewers' ids, ascending.
    pub fn viewers(&self) -> impl Iterator<Item = u64> + '_ {
        self.viewers.keys().copied()
    }

    /// Frames queued for viewer `id`, snapshot chunks included (0 for an unknown viewer).
    pub fn queued(&self, id: u64) -> usize {
        self.viewers.get(&id).map_or(0, |v| v.queue.len())
    }

    /// Frames queued for viewer `id` that count against its limit (snapshot chunks do not).
    pub fn queued_beyond_snapshot(&self, id: u64) -> usize {
        self.viewers.get(&id).map_or(0, |v| v.queue.len() - v.snapshot_left)
    }

    /// Whether viewer `id` waits for a resync.
    pub fn is_resyncing(&self, id: u64) -> bool {
        self.viewers.get(&id).is_some_and(|v| v.resync)
    }

    /// Viewer `id`'s running totals.
    pub fn viewer_counts(&self, id: u64) -> Option<ViewerCounts> {
        self.viewers.get(&id).map(|v| v.counts)
    }

    /// The counts since the last call, reset.
    pub fn take_counts(&mut self) -> Counts {
        std::mem::take(&mut self.counts)
    }

    /// Folds committed commands (seq, body) in order and queues the resulting delta for every
    /// viewer. Commands at or below the current seq are skipped (already folded); a command
    /// past the next seq is a [`FanOutError::Gap`] and leaves the fan-out unchanged from that
    /// command on.
    pub fn handle_committed<'a, I>(&mut self, commands: I, now: Duration) -> Result<(), FanOutError>
    where
        I: IntoIterator<Item = (u64, &'a CommandBody)>,
    {
        let now = self.tick(now);
        let before = self.p.seq();
        let mut result = Ok(());
        for (seq, body) in commands {
            if seq <= self.p.seq() {
                continue;
            }
            if seq != self.p.seq() + 1 {
                result = Err(FanOutError::Gap { have: self.p.seq(), got: seq });
                break;
            }
            if let Err(e) = self.p.apply_command(seq, body) {
                result = Err(e.into());
                break;
            }
            if self.checkpoint_every > 0 && seq % self.checkpoint_every == 0 {
                self.checkpoints.push((seq, self.p.checkpoint()));
            }
        }
        self.held_back |= self.p.seq() > before;
        if self.pacing.is_zero() || now >= self.sent_at + self.pacing {
            self.flush(now);
        }
        result
    }

    /// Takes a checkpoint of the projection at every seq that is a multiple of `every` (0: none)
    /// as commits are folded, so the log is folded once for the live stream and the
    /// checkpoints together. The caller stores them ([`FanOut::take_checkpoints`]), under
    /// ordered visibility only once their seq is durable.
    pub fn set_checkpoint_every(&mut self, every: u64) {
        self.checkpoint_every = every;
    }

    /// The checkpoints taken since the last call, `(seq, bytes)` in seq order.
    pub fn take_checkpoints(&mut self) -> Vec<(u64, Vec<u8>)> {
        std::mem::take(&mut self.checkpoints)
    }

    /// Ordered visibility: entries up to `seq` are durable. The first call switches the fan-out
    /// to ordered visibility (its deltas then say from which seq on entries are not yet
    /// durable); without any, everything folded counts as durable.
    pub fn handle_durable(&mut self, seq: u64) {
        self.durable = Some(self.durable.map_or(seq, |d| d.max(seq)));
    }

    /// When [`FanOut::handle_timeout`] has a held-back delta or a confirm frame to send, if ever.
    pub fn poll_timeout(&self) -> Option<Duration> {
        if self.held_back {
            return Some(self.sent_at + self.pacing);
        }
        let waiting = self.unchecked || self.ordered_from() != self.ordered_from_sent;
        (waiting && !self.viewers.is_empty()).then(|| self.sent_at.max(self.checked_at) + CHECK_INTERVAL)
    }

    /// Sends the delta pacing held back, or a confirm frame (an empty delta at the current seq
    /// with the state hash and the durability news) to every viewer in step, when
    /// [`FanOut::poll_timeout`] is due.
    pub fn handle_timeout(&mut self, now: Duration) {
        let now = self.tick(now);
        if self.held_back && now >= self.sent_at + self.pacing {
            self.flush(now);
        }
        if self.poll_timeout().is_some_and(|at| at <= now) {
            let mut confirm = empty_delta(self.p.session(), self.p.seq(), Some(self.p.state_hash()));
            confirm.ordered_from = self.ordered_from();
            self.counts.confirms += 1;
            self.fan_out(&confirm, now);
        }
    }

    /// The first seq not yet durable (0: all are).
    fn ordered_from(&self) -> u64 {
        match self.durable {
            Some(d) if d < self.p.seq() => d + 1,
            _ => 0,
        }
    }

    /// Subscribes viewer `id`: it gets the deltas after its resume point when they are still
    /// held, else a snapshot (at once, or when its queue has room).
    pub fn handle_subscribe(&mut self, id: u64, options: ViewerOptions) {
        // Everyone already in step gets what pacing held back first: the newcomer's snapshot
        // (or resume) starts where the deltas sent so far end.
        self.flush(self.now);
        if options.compact && !options.interest && self.held.is_none() {
            let p = &self.p;
            self.held = Some(
                p.entities()
                    .filter_map(|e| match p.get(e, Transform::id()) {
                        Some(Value::Transform(t)) => QuantizedTransform::quantize(&t).map(|q| (e, q)),
                        _ => None,
                    })
                    .collect(),
            );
        }
        self.dictionary_wanted |= options.encoding == Encoding::ZstdDict;
        let mut v = Viewer {
            options,
            queue: VecDeque::new(),
            snapshot_left: 0,
            described: false,
            resync: true,
            dictionary_sent: 0,
            view: None,
            stream: None,
            counts: ViewerCounts::default(),
        };
        if !self.resume(&mut v) {
            self.try_snapshot(&mut v);
        }
        self.viewers.insert(id, v);
    }

    /// Sets (or moves) an interest-managed viewer's area; the entities entering and leaving it
    /// are queued at once. Ignored for unknown viewers and viewers without interest management.
    pub fn handle_interest(&mut self, id: u64, area: Area) {
        if !self.viewers.contains_key(&id) {
            return;
        }
        // The area's entities are sent as of the current seq: the deltas must have reached it.
        self.flush(self.now);
        let Some(mut v) = self.viewers.remove(&id) else { return };
        if v.options.interest {
            match &mut v.view {
                Some(view) => {
                    view.set_area(area);
                    if !v.resync {
                        let mut empty = empty_delta(self.p.session(), self.p.seq(), Some([0; 32]));
                        empty.ordered_from = self.ordered_from();
                        self.send_delta(&mut v, &empty, None);
                    }
                }
                None => {
                    // The first area: the viewer holds the empty snapshot it got on subscribing,
                    // at an older seq than the deltas now due, so it gets a snapshot of its area.
                    v.view = Some(InterestView::new(area));
                    v.resync = true;
                    self.try_snapshot(&mut v);
                }
            }
        }
        self.viewers.insert(id, v);
    }

    /// Viewer `id` is gone (its connection closed): its queue is dropped.
    pub fn handle_cut(&mut self, id: u64) {
        self.viewers.remove(&id);
        if !self.viewers.values().any(Viewer::compact) {
            self.held = None;
        }
    }

    /// The next frame for viewer `id`, if any. When its queue has drained and it waits for a
    /// resync, the snapshot is queued here.
    pub fn poll_frame(&mut self, id: u64) -> Option<Vec<u8>> {
        let v = self.viewers.get_mut(&id)?;
        let frame = Viewer::pop(v);
        if !(v.resync && v.queue.is_empty()) {
            return frame;
        }
        // The rare path: the snapshot is built with the fan-out borrowed whole, at the seq the
        // deltas sent so far reach.
        self.flush(self.now);
        let mut v = self.viewers.remove(&id)?;
        self.try_snapshot(&mut v);
        let frame = frame.or_else(|| Viewer::pop(&mut v));
        self.viewers.insert(id, v);
        frame
    }

    fn fan_out(&mut self, delta: &Delta, now: Duration) {
        let plain = Message::Delta(delta.clone()).encode();
        self.sent_at = now;
        self.ordered_from_sent = delta.ordered_from;
        // Transforms are decoded and quantized only while a compact viewer is subscribed.
        let moves = if self.held.is_some() { quantize_moves(delta) } else { Vec::new() };
        let compact = self.viewers.values().any(|v| v.compact() && !v.resync).then(|| {
            let check = delta.from_seq == delta.to_seq || now >= self.checked_at + CHECK_INTERVAL;
            if check {
                self.checked_at = now;
                self.unchecked = false;
            } else {
                self.unchecked = true;
            }
            let held = self.held.as_ref().expect("kept while a compact viewer is subscribed");
            compact_form(delta, &moves, held, check.then(|| self.p.compact_state_hash()))
        });
        // What a compact receiver holds from now on (kept whether or not one is in step: one
        // resyncing gets a snapshot at this seq or later and differences from it).
        if let Some(held) = &mut self.held {
            for (e, q) in moves {
                match q {
                    Some(q) => held.insert(e, q),
                    None => held.remove(&e),
                };
            }
            for (e, c) in &delta.removals {
                if *c == Transform::id() {
                    held.remove(e);
                }
            }
            for e in &delta.despawned {
                held.remove(e);
            }
        }
        if compact.is_none() {
            // No compact stream in step: nothing for a confirm to check (a viewer resyncing
            // gets a snapshot, which carries its hash).
            self.unchecked = false;
        }
        let mut viewers = std::mem::take(&mut self.viewers);
        if plain.len() > MAX_ENVELOPE_BYTES {
            // Too big for one frame: everyone not filtering gets a fresh snapshot instead.
            for v in viewers.values_mut().filter(|v| !v.options.interest && !v.resync) {
                v.resync = true;
            }
            self.recent.clear();
        } else {
            if self.dictionary_wanted
                && let Some(job) = self.trainer.add(&plain)
            {
                // A newer job has more samples: it replaces one not yet taken.
                self.training = Some(job);
            }
            self.recent.push_back((delta.from_seq, delta.to_seq, plain.clone()));
            if self.recent.len() > RESUME_DELTAS {
                self.recent.pop_front();
            }
        }
        let mut shared = Shared { plain, compact, raw: HashMap::new(), forms: HashMap::new() };
        let mut jobs = self.stream_jobs(&mut viewers, delta, &mut shared);
        let in_jobs: std::collections::BTreeSet<u64> = jobs.iter().map(|j| j.id).collect();
        for (id, v) in viewers.iter_mut() {
            if v.resync {
                if v.queue.is_empty() {
                    self.try_snapshot(v);
                }
            } else if !in_jobs.contains(id) {
                self.send_delta(v, delta, Some(&mut shared));
            }
        }
        if let Some((spread, _)) = &self.spread
            && !jobs.is_empty()
        {
            spread(&mut jobs);
        }
        for mut job in jobs {
            job.run();
            let Some(v) = viewers.get_mut(&job.id) else { continue };
            let raw_len = job.raw.len();
            let payload = match job.out.take() {
                Some(Ok(piece)) => {
                    v.stream = Some(job.stream);
                    self.count(Encoding::ZstdStream, raw_len, piece.len());
                    piece
                }
                // zstd failed: the stream is unusable, so plain frames from now on.
                _ => {
                    v.options.encoding = Encoding::Raw;
                    job.raw
                }
            };
            self.queue_delta(v, payload);
        }
        self.viewers = viewers;
    }

    /// With a spread set and enough viewers in step on `zstd-stream`, takes each such viewer's
    /// stream out into a job with the delta's raw frame (empty otherwise: the viewers are then
    /// served in turn by `send_delta`). A viewer whose stream is in a job has `stream: None`
    /// until the job's piece is queued.
    fn stream_jobs(
        &mut self,
        viewers: &mut BTreeMap<u64, Viewer>,
        delta: &Delta,
        shared: &mut Shared,
    ) -> Vec<StreamJob> {
        let Some((_, min_viewers)) = &self.spread else { return Vec::new() };
        if shared.plain.len() > MAX_ENVELOPE_BYTES {
            return Vec::new();
        }
        let due = |v: &Viewer| !v.resync && !v.options.interest && v.options.encoding == Encoding::ZstdStream;
        if viewers.values().filter(|v| due(v)).count() < *min_viewers {
            return Vec::new();
        }
        let mut jobs = Vec::new();
        for (&id, v) in viewers.iter_mut().filter(|(_, v)| due(v)) {
            if self.room(v) == 0 {
                self.mark_resync(v);
                continue;
            }
            let stream = match v.stream.take() {
                Some(s) => s,
                None => match StreamCompressor::new() {
                    Ok(s) => s,
                    Err(_) => {
                        v.options.encoding = Encoding::Raw;
                        continue;
                    }
                },
            };
            let raw = shared.raw(delta, v.described, v.compact()).to_vec();
            jobs.push(StreamJob { id, stream, raw, out: None });
        }
        jobs
    }

    /// Queues `frame` for the viewer: false when its queue is full.
    fn push(&self, v: &mut Viewer, frame: Vec<u8>) -> bool {
        if self.room(v) == 0 {
            return false;
        }
        v.queue.push_back((false, frame));
        true
    }

    /// Frames the viewer's queue takes before it is full (snapshot chunks not counted).
    fn room(&self, v: &Viewer) -> usize {
        self.limit.saturating_sub(v.queue.len() - v.snapshot_left)
    }

    /// Queues `delta` for one viewer (filtered to its area when it manages interest). A full
    /// queue or an oversized frame marks the viewer for a resync.
    fn send_delta(&mut self, v: &mut Viewer, delta: &Delta, shared: Option<&mut Shared>) {
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
            if self.room(v) == 0 {
                self.mark_resync(v);
                return;
            }
            self.encode(v, raw)
        } else {
            let Some(shared) = shared else { return };
            if shared.plain.len() > MAX_ENVELOPE_BYTES {
                return; // marked for resync by the caller
            }
            if self.room(v) == 0 {
                self.mark_resync(v);
                return;
            }
            if v.options.encoding == Encoding::ZstdStream {
                // Per-viewer stream state: only the raw form is shared.
                let raw = shared.raw(delta, v.described, v.compact()).to_vec();
                self.encode(v, raw)
            } else {
                self.encode_shared(v, delta, shared)
            }
        };
        if !self.ensure_dictionary(v) {
            return;
        }
        self.queue_delta(v, payload);
    }

    /// Queues an encoded delta for the viewer and counts it; a full queue marks it for a resync.
    fn queue_delta(&mut self, v: &mut Viewer, payload: Vec<u8>) {
        if self.push(v, payload) {
            v.described = true;
            v.counts.deltas += 1;
            self.counts.deltas += 1;
        } else {
            self.mark_resync(v);
        }
    }

    /// The viewer's encoded form of a delta from the per-delta cache.
    fn encode_shared(&mut self, v: &mut Viewer, delta: &Delta, shared: &mut Shared) -> Vec<u8> {
        let key = (v.described, v.compact(), v.options.encoding);
        if let Some(sent) = shared.forms.get(&key).map(Vec::len) {
            let raw_len = shared.raw(delta, v.described, v.compact()).len();
            self.count(v.options.encoding, raw_len, sent);
            return shared.forms[&key].clone();
        }
        let raw = shared.raw(delta, v.described, v.compact()).to_vec();
        let p = self.encode(v, raw);
        shared.forms.insert(key, p.clone());
        p
    }

    fn mark_resync(&mut self, v: &mut Viewer) {
        v.resync = true;
        v.counts.resyncs += 1;
        self.counts.resyncs += 1;
    }

    /// Queues the current dictionary for a `zstd-dict` viewer that lacks it. False when its
    /// queue is full (the viewer is then marked for a resync).
    fn ensure_dictionary(&mut self, v: &mut Viewer) -> bool {
        if v.options.encoding != Encoding::ZstdDict {
            return true;
        }
        let Some((id, data)) = self.trainer.dictionary() else { return true };
        if v.dictionary_sent == id {
            return true;
        }
        let frame = Message::Dictionary(Dictionary { id, data: data.to_vec() }).encode();
        if !self.push(v, frame) {
            self.mark_resync(v);
            return false;
        }
        v.dictionary_sent = id;
        true
    }

    /// Compresses `raw` as the viewer's encoding asks.
    fn encode(&mut self, v: &mut Viewer, raw: Vec<u8>) -> Vec<u8> {
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

    fn count(&mut self, encoding: Encoding, raw: usize, sent: usize) {
        if encoding != Encoding::Raw {
            self.counts.raw_bytes += raw as u64;
            self.counts.compressed_bytes += sent as u64;
        }
    }

    /// Queues the deltas after the viewer's resume point when they are all still kept and fit
    /// its queue. False when it needs a snapshot instead.
    fn resume(&mut self, v: &mut Viewer) -> bool {
        let from = v.options.resume_seq;
        if from == 0 || v.options.interest || v.compact() || from > self.p.seq() {
            return false;
        }
        let frames: Vec<Vec<u8>> = if from == self.p.seq() {
            // Already current: an empty delta confirms the state hash.
            let mut confirm = empty_delta(self.p.session(), from, Some(self.p.state_hash()));
            confirm.ordered_from = self.ordered_from();
            vec![Message::Delta(confirm).encode()]
        } else {
            let Some(start) = self.recent.iter().position(|(f, _, _)| *f == from) else { return false };
            let kept: Vec<_> = self.recent.iter().skip(start).collect();
            let chained = kept.windows(2).all(|w| w[0].1 == w[1].0);
            if !chained || kept.last().map(|k| k.1) != Some(self.p.seq()) || kept.len() + 2 > self.room(v) {
                return false;
            }
            kept.into_iter().map(|(_, _, p)| p.clone()).collect()
        };
        if !self.ensure_dictionary(v) {
            return false;
        }
        for f in frames {
            let payload = self.encode(v, f);
            if !self.push(v, payload) {
                return false;
            }
        }
        v.resync = false;
        v.described = true;
        self.counts.resumes += 1;
        true
    }

    /// Queues a fresh snapshot, whole, once the viewer's queue is empty (older frames first:
    /// a compression stream must not skip any).
    fn try_snapshot(&mut self, v: &mut Viewer) {
        if !v.queue.is_empty() {
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
        if !self.ensure_dictionary(v) {
            return;
        }
        for c in chunks {
            let payload = self.encode(v, Message::SnapshotChunk(c).encode());
            v.queue.push_back((true, payload));
            v.snapshot_left += 1;
        }
        if self.ordered_from() != 0 {
            // Ordered visibility: the snapshot holds entries not yet durable; say so at once.
            let mut confirm = empty_delta(self.p.session(), self.p.seq(), None);
            confirm.ordered_from = self.ordered_from();
            let payload = self.encode(v, Message::Delta(confirm).encode());
            v.queue.push_back((true, payload));
            v.snapshot_left += 1;
        }
        v.resync = false;
        v.described = false;
        self.counts.snapshots += 1;
    }
}
