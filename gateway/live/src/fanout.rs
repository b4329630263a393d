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

use std::collections::{BTreeMap, HashMap, VecDeque};

use theta_projector::interest::{Area, InterestView};
use theta_projector::{DEFAULT_CHUNK_BYTES, FoldError, Projection};
use theta_schemas::wire::{Delta, Dictionary};
use theta_schemas::{CommandBody, MAX_ENVELOPE_BYTES, Message, SessionId};

use crate::compress::{self, Encoding, StreamCompressor, Trainer};

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

fn empty_delta(session: SessionId, seq: u64, state_hash: [u8; 32]) -> Delta {
    Delta {
        session,
        from_seq: seq,
        to_seq: seq,
        state_hash,
        spawned: vec![],
        upserts: vec![],
        removals: vec![],
        despawned: vec![],
        descriptors: vec![],
    }
}

impl FanOut {
    /// A fan-out over `projection` (the session folded up to its current seq), queueing at most
    /// `queue_frames` frames per viewer.
    pub fn new(mut projection: Projection, queue_frames: usize) -> FanOut {
        let _ = projection.take_delta(false);
        FanOut {
            p: projection,
            trainer: Trainer::new(),
            recent: VecDeque::new(),
            viewers: BTreeMap::new(),
            limit: queue_frames.max(3),
            counts: Counts::default(),
        }
    }

    /// The live projection.
    pub fn projection(&self) -> &Projection {
        &self.p
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
    pub fn handle_committed<'a, I>(&mut self, commands: I) -> Result<(), FanOutError>
    where
        I: IntoIterator<Item = (u64, &'a CommandBody)>,
    {
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
        }
        if self.p.seq() > before {
            let delta = self.p.take_delta(false);
            self.fan_out(&delta);
        }
        result
    }

    /// Subscribes viewer `id`: it gets the deltas after its resume point when they are still
    /// held, else a snapshot (at once, or when its queue has room).
    pub fn handle_subscribe(&mut self, id: u64, options: ViewerOptions) {
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
        let Some(mut v) = self.viewers.remove(&id) else { return };
        if v.options.interest {
            match &mut v.view {
                Some(view) => {
                    view.set_area(area);
                    if !v.resync {
                        let empty = empty_delta(self.p.session(), self.p.seq(), [0; 32]);
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
    }

    /// The next frame for viewer `id`, if any. When its queue has drained and it waits for a
    /// resync, the snapshot is queued here.
    pub fn poll_frame(&mut self, id: u64) -> Option<Vec<u8>> {
        let v = self.viewers.get_mut(&id)?;
        let frame = Viewer::pop(v);
        if !(v.resync && v.queue.is_empty()) {
            return frame;
        }
        // The rare path: the snapshot is built with the fan-out borrowed whole.
        let mut v = self.viewers.remove(&id)?;
        self.try_snapshot(&mut v);
        let frame = frame.or_else(|| Viewer::pop(&mut v));
        self.viewers.insert(id, v);
        frame
    }

    fn fan_out(&mut self, delta: &Delta) {
        let plain = Message::Delta(delta.clone()).encode();
        let mut viewers = std::mem::take(&mut self.viewers);
        if plain.len() > MAX_ENVELOPE_BYTES {
            // Too big for one frame: everyone not filtering gets a fresh snapshot instead.
            for v in viewers.values_mut().filter(|v| !v.options.interest && !v.resync) {
                v.resync = true;
            }
            self.recent.clear();
        } else {
            if self.trainer.add(&plain) {
                self.counts.dictionaries += 1;
            }
            self.recent.push_back((delta.from_seq, delta.to_seq, plain.clone()));
            if self.recent.len() > RESUME_DELTAS {
                self.recent.pop_front();
            }
        }
        let mut shared = Shared { plain, described: None, forms: HashMap::new() };
        for v in viewers.values_mut() {
            if v.resync {
                if v.queue.is_empty() {
                    self.try_snapshot(v);
                }
            } else {
                self.send_delta(v, delta, Some(&mut shared));
            }
        }
        self.viewers = viewers;
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
                let raw = shared.raw(delta, v.described).to_vec();
                self.encode(v, raw)
            } else {
                self.encode_shared(v, delta, shared)
            }
        };
        if !self.ensure_dictionary(v) {
            return;
        }
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
        if from == 0 || v.options.interest || from > self.p.seq() {
            return false;
        }
        let frames: Vec<Vec<u8>> = if from == self.p.seq() {
            // Already current: an empty delta confirms the state hash.
            vec![Message::Delta(empty_delta(self.p.session(), from, self.p.state_hash())).encode()]
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
        v.resync = false;
        v.described = false;
        self.counts.snapshots += 1;
    }
}
