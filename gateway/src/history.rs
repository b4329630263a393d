//! Time travel: the projection of a session at any seq, and the checkpoints that make it fast.
//!
//! `project(store, session, S)` = the newest intact checkpoint at or below S, plus a replay of
//! the entries after it. Checkpoints are a cache kept by the store: deleting them changes only
//! speed, and a corrupt one is detected by the projector and skipped.

use theta_projector::{CheckpointError, FoldError, Projection};
use theta_schemas::{CommandBody, EntityId, Envelope, SessionId};
use theta_store::{Entries, ReadError, Store};

/// Default spacing of checkpoints, entries.
pub const DEFAULT_CHECKPOINT_EVERY_ENTRIES: u64 = 10_000;

/// Why a projection could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum HistoryError {
    /// Reading the log failed (unknown session, corruption, storage).
    #[error(transparent)]
    Read(#[from] ReadError),
    /// An entry could not be folded: the log is not a valid log.
    #[error(transparent)]
    Fold(#[from] FoldError),
    /// The seq is beyond the session's head.
    #[error("seq {seq} is beyond the head {head}")]
    OutOfRange {
        /// The requested seq.
        seq: u64,
        /// The head.
        head: u64,
    },
}

/// A projection opened at a seq, and how it was reached.
#[derive(Debug)]
pub struct Opened {
    /// The projection at the requested seq (out of replay mode, ready for deltas).
    pub projection: Projection,
    /// The checkpoint it started from, if any.
    pub checkpoint_seq: Option<u64>,
    /// Entries folded after the checkpoint.
    pub replayed: u64,
    /// Corrupt checkpoints skipped on the way: (seq, why).
    pub skipped: Vec<(u64, CheckpointError)>,
}

/// The projection of `session` at `at_seq` (0 gives the empty world).
///
/// The newest checkpoint is restored on one thread while the entries after it are read and
/// decoded on another; the decoded commands are then folded in order.
pub fn project(store: &Store, session: &SessionId, at_seq: u64) -> Result<Opened, HistoryError> {
    let head = store.head(session)?.seq;
    if at_seq > head {
        return Err(HistoryError::OutOfRange { seq: at_seq, head });
    }
    let mut skipped = Vec::new();
    let mut below = at_seq;
    loop {
        let Some((seq, bytes)) = store.checkpoint_at_or_below(session, below)? else {
            return finish(store, session, at_seq, Projection::new(*session), None, skipped);
        };
        let (restored, decoded) = std::thread::scope(|s| {
            let reader = s.spawn(|| decode_range(store, session, seq + 1, at_seq));
            let restored = Projection::from_checkpoint(&bytes);
            (restored, reader.join().expect("reader thread"))
        });
        match restored {
            Ok(p) if p.session() == *session && p.seq() == seq => {
                let mut projection = p;
                projection.begin_replay();
                let mut replayed = 0;
                for (entry_seq, body) in decoded? {
                    projection.apply_command(entry_seq, &body)?;
                    replayed += 1;
                }
                projection.end_replay();
                assert_eq!(projection.seq(), at_seq, "replay reached the requested seq");
                return Ok(Opened { projection, checkpoint_seq: Some(seq), replayed, skipped });
            }
            Ok(_) => skipped.push((seq, CheckpointError::Corrupt("checkpoint of another position".into()))),
            Err(e) => skipped.push((seq, e)),
        }
        // Try the next older checkpoint.
        match seq.checked_sub(1) {
            Some(b) => below = b,
            None => return finish(store, session, at_seq, Projection::new(*session), None, skipped),
        }
    }
}

/// Reads and decodes entries `from..=to`.
fn decode_range(
    store: &Store,
    session: &SessionId,
    from: u64,
    to: u64,
) -> Result<Vec<(u64, CommandBody)>, HistoryError> {
    let mut out = Vec::with_capacity(to.saturating_sub(from) as usize + 1);
    if from > to {
        return Ok(out);
    }
    for entry in store.read_range(session, from, to)? {
        let entry = entry?;
        let (_, body) = Envelope::open(&entry.envelope)
            .map_err(|source| HistoryError::Fold(FoldError::Decode { seq: entry.seq, source }))?;
        out.push((entry.seq, body));
    }
    Ok(out)
}

/// Replays `from` (a projection at some seq) up to `at_seq` on this thread.
fn finish(
    store: &Store,
    session: &SessionId,
    at_seq: u64,
    mut projection: Projection,
    checkpoint_seq: Option<u64>,
    skipped: Vec<(u64, CheckpointError)>,
) -> Result<Opened, HistoryError> {
    let from = projection.seq() + 1;
    projection.begin_replay();
    let mut replayed = 0;
    if from <= at_seq {
        for entry in store.read_range(session, from, at_seq)? {
            projection.apply_entry(&entry?)?;
            replayed += 1;
        }
    }
    projection.end_replay();
    assert_eq!(projection.seq(), at_seq, "replay reached the requested seq");
    Ok(Opened { projection, checkpoint_seq, replayed, skipped })
}

/// Folds the session from its newest checkpoint to its head, storing a checkpoint at every
/// multiple of `every_entries` that has none. Returns how many were written.
pub fn write_checkpoints(store: &Store, session: &SessionId, every_entries: u64) -> Result<usize, HistoryError> {
    assert!(every_entries > 0, "checkpoint spacing must be positive");
    let head = store.head(session)?.seq;
    let start = project(store, session, store.checkpoint_at_or_below(session, head)?.map_or(0, |(s, _)| s))?;
    let mut p = start.projection;
    p.begin_replay();
    let mut written = 0;
    for entry in store.read_range(session, p.seq() + 1, head)? {
        p.apply_entry(&entry?)?;
        if p.seq() % every_entries == 0 {
            store.put_checkpoint(session, p.seq(), p.checkpoint())?;
            written += 1;
        }
    }
    Ok(written)
}

/// Every entry whose scope is `entity`, with seq in `from..=to`.
pub fn entity_history(
    store: &Store,
    session: &SessionId,
    entity: EntityId,
    from: u64,
    to: u64,
) -> Result<Entries, ReadError> {
    store.read_by_entity(session, entity, from, to)
}
