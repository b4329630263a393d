//! The verify stage: batches dispatched in order to the verify workers, their results
//! reordered for the commit thread.

use super::*;

/// A batch of jobs for one verification worker, with its place in the committer's order.
pub(super) struct WorkBatch {
    pub(super) ticket: u64,
    pub(super) jobs: Vec<Job>,
}

/// How far the committer has come in ticket order. Workers finish out of order and the
/// committer puts their results back in order (an author's commands must reach the Lamport
/// check in the order they were submitted); the dispatcher issues no ticket more than
/// [`MAX_AHEAD`] past the committer, which bounds what waits to be reordered.
#[derive(Default)]
pub(super) struct Order {
    pub(super) committed: std::sync::Mutex<u64>,
    pub(super) moved: std::sync::Condvar,
}

impl Order {
    /// Waits until `ticket` may be issued.
    pub(super) fn room_for(&self, ticket: u64) {
        let mut c = self.committed.lock().expect("order lock");
        while ticket >= *c + MAX_AHEAD {
            c = self.moved.wait(c).expect("order lock");
        }
    }

    /// Every ticket below `next` is committed.
    pub(super) fn committed_to(&self, next: u64) {
        *self.committed.lock().expect("order lock") = next;
        self.moved.notify_all();
    }
}

/// Tickets issued past the committer's position, at most.
pub(super) const MAX_AHEAD: u64 = 16;

/// Groups applied but not yet flushed, at most (the committer waits beyond).
pub(super) const FLUSH_QUEUE: usize = 8;

/// The smallest batch the dispatcher splits off for one worker (batch verification gets
/// cheaper per signature up to a few hundred).
pub(super) const MIN_SHARE: usize = 64;

/// The verification stage's dispatcher: waits for a free worker, then gives it its share of
/// what is queued (up to `max_batch_entries` gathered), so the workers verify batches as
/// large as the load allows side by side. Stops at `Shutdown` or when the committer is
/// gone, answering what is still queued.
pub(super) fn dispatch_loop(
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
pub(super) fn verify_worker(
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
            let mut inputs = Vec::with_capacity(appends.len());
            let mut rest = Vec::with_capacity(appends.len());
            for j in std::mem::take(appends) {
                inputs.push((j.bytes, j.session));
                rest.push((j.reply, j.submitted, j.stamp));
            }
            let checked = verifier::check_batch(inputs, &shared.config, &mut keys, &shared.metrics);
            out.push(Stage2::Appends(
                checked
                    .into_iter()
                    .zip(rest)
                    .map(|(c, (mut r, t, stamp))| {
                        r.nonce = c.nonce;
                        (c, r, t, stamp)
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
