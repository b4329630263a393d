//! The author and entity indexes, built off the acknowledgement path.
//!
//! The committer hands every durable entry's (seq, author, entity) to the indexer thread,
//! which gathers them per session and writes a *run* every [`RUN_ENTRIES`] entries (or after
//! [`RUN_IDLE`] without one): one key per author and per entity that appear in the run
//! (`A | session | author | last seq of the run`, `I | session | entity | last seq`), holding
//! their seqs in the run, and the session's *watermark* (`W | session`: every entry up to it is
//! in the runs), all in one batch. The runs are derived data and are not flushed on their own:
//! they ride on the next durable flush, and after a crash the indexer rebuilds whatever the
//! watermark does not cover from the log.
//!
//! A read takes the watermark first, collects the seqs of the runs up to it, then scans the
//! log after it, so its result is always complete however far the indexer lags.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::mpsc::{Receiver, RecvTimeoutError, Sender};
use std::time::Duration;

use theta_schemas::{AuthorKey, EntityId, Envelope, LogEntry, SessionId};

use crate::backend::{Backend, KvIter, WriteBatch};
use crate::blocks;
use crate::error::ReadError;
use crate::keys;

/// Entries of a session gathered into one run.
pub(crate) const RUN_ENTRIES: usize = 4_096;
/// A session's gathered entries are written as a run after this long without a new one.
pub(crate) const RUN_IDLE: Duration = Duration::from_secs(1);

/// What the indexer is asked to do.
pub(crate) enum IndexJob {
    /// Durable entries of a session, in seq order: (seq, author, entity).
    Entries(SessionId, Vec<(u64, AuthorKey, EntityId)>),
    /// Index a session's log from `from` to `to` (after open, where the watermark lags).
    CatchUp(SessionId, u64, u64),
    /// Write everything gathered, then answer.
    Drain(Sender<()>),
    /// Forget everything gathered, then answer (after the store reopened its storage: the
    /// watermarks say what the runs hold, and catch-ups rebuild the rest from the log).
    Reset(Sender<()>),
}

#[derive(Default)]
struct Gathered {
    last: u64,
    count: usize,
    authors: BTreeMap<AuthorKey, Vec<u64>>,
    entities: BTreeMap<EntityId, Vec<u64>>,
}

impl Gathered {
    fn add(&mut self, seq: u64, author: AuthorKey, entity: EntityId) {
        self.authors.entry(author).or_default().push(seq);
        if entity != 0 {
            self.entities.entry(entity).or_default().push(seq);
        }
        self.last = seq;
        self.count += 1;
    }
}

/// Delta-encoded seqs (LEB128 varints of the gaps).
fn encode_seqs(seqs: &[u64]) -> Vec<u8> {
    let mut out = Vec::with_capacity(seqs.len() * 2);
    let mut prev = 0;
    for s in seqs {
        let mut d = s - prev;
        prev = *s;
        loop {
            let byte = (d & 0x7f) as u8;
            d >>= 7;
            if d == 0 {
                out.push(byte);
                break;
            }
            out.push(byte | 0x80);
        }
    }
    out
}

/// The seqs of a run value; `None` when it does not decode.
fn decode_seqs(mut b: &[u8]) -> Option<Vec<u64>> {
    let mut out = Vec::new();
    let mut prev: u64 = 0;
    while !b.is_empty() {
        let (mut d, mut shift) = (0u64, 0u32);
        loop {
            let (&byte, rest) = b.split_first()?;
            b = rest;
            if shift > 63 {
                return None;
            }
            d |= u64::from(byte & 0x7f) << shift;
            shift += 7;
            if byte & 0x80 == 0 {
                break;
            }
        }
        prev = prev.checked_add(d)?;
        out.push(prev);
    }
    Some(out)
}

/// The indexer thread's loop.
pub(crate) fn run(backend: Arc<dyn Backend>, rx: Receiver<IndexJob>) {
    let mut gathered: BTreeMap<SessionId, Gathered> = BTreeMap::new();
    // Writes one session's gathered entries as a run. A run that cannot be written goes back
    // in front of what the session gathers next: a later run must never move the watermark
    // past entries no run holds.
    let write = |gathered: &mut BTreeMap<SessionId, Gathered>, session: SessionId| {
        let Some(g) = gathered.remove(&session) else { return };
        if g.count == 0 {
            return;
        }
        let mut batch = WriteBatch::default();
        for (a, seqs) in &g.authors {
            batch.put(keys::by_author(&session, a, g.last), encode_seqs(seqs));
        }
        for (e, seqs) in &g.entities {
            batch.put(keys::by_entity(&session, *e, g.last), encode_seqs(seqs));
        }
        batch.put(keys::watermark(&session), g.last.to_be_bytes().to_vec());
        if let Err(e) = backend.apply(batch) {
            // Derived data: reads scan the log past the watermark, so nothing is missing
            // meanwhile; the next write tries again.
            eprintln!("theta-store: index run of session {session} not written (kept for the next one): {e}");
            gathered.insert(session, g);
        }
    };
    let write_all = |gathered: &mut BTreeMap<SessionId, Gathered>| {
        let sessions: Vec<SessionId> = gathered.keys().copied().collect();
        for s in sessions {
            write(gathered, s);
        }
    };
    loop {
        match rx.recv_timeout(RUN_IDLE) {
            Ok(IndexJob::Entries(session, entries)) => {
                let g = gathered.entry(session).or_default();
                for (seq, author, entity) in entries {
                    g.add(seq, author, entity);
                }
                if g.count >= RUN_ENTRIES {
                    write(&mut gathered, session);
                }
            }
            Ok(IndexJob::CatchUp(session, from, to)) => {
                let Ok(cursor) = blocks::Cursor::new(&*backend, &session, from, to) else { continue };
                for e in cursor {
                    let Ok(e) = e else { break };
                    let Ok((_, body)) = Envelope::open(&e.envelope) else { break };
                    let g = gathered.entry(session).or_default();
                    g.add(e.seq, body.author, body.entity);
                    if g.count >= RUN_ENTRIES {
                        write(&mut gathered, session);
                    }
                }
                write(&mut gathered, session);
            }
            Ok(IndexJob::Drain(done)) => {
                write_all(&mut gathered);
                let _ = done.send(());
            }
            Ok(IndexJob::Reset(done)) => {
                gathered.clear();
                let _ = done.send(());
            }
            Err(RecvTimeoutError::Timeout) => write_all(&mut gathered),
            Err(RecvTimeoutError::Disconnected) => {
                write_all(&mut gathered);
                return;
            }
        }
    }
}

/// The watermark of a session's index (0: nothing indexed).
pub(crate) fn watermark(backend: &dyn Backend, session: &SessionId) -> Result<u64, ReadError> {
    Ok(backend.get(&keys::watermark(session))?.and_then(|v| v.try_into().ok()).map_or(0, u64::from_be_bytes))
}

/// Which entries an index read wants.
#[derive(Debug, Clone, Copy)]
pub(crate) enum Wanted {
    Author(AuthorKey),
    Entity(EntityId),
}

impl Wanted {
    fn prefix(&self, session: &SessionId) -> Vec<u8> {
        match self {
            Wanted::Author(a) => keys::Key::new(keys::tag::BY_AUTHOR, session).bytes(&a.0).done(),
            Wanted::Entity(e) => keys::Key::new(keys::tag::BY_ENTITY, session).u64(*e).done(),
        }
    }

    fn matches(&self, e: &LogEntry) -> Result<bool, String> {
        let (_, body) = Envelope::open(&e.envelope).map_err(|err| format!("envelope does not decode: {err}"))?;
        Ok(match self {
            Wanted::Author(a) => body.author == *a,
            Wanted::Entity(x) => body.entity == *x,
        })
    }
}

/// The entries an index read yields: the runs' seqs up to the watermark, then the log after it.
pub(crate) struct IndexRead {
    session: SessionId,
    backend: Arc<dyn Backend>,
    wanted: Wanted,
    from: u64,
    to: u64,
    watermark: u64,
    runs: Option<KvIter>,
    seqs: std::vec::IntoIter<u64>,
    cache: Arc<blocks::BlockCache>,
    block: Option<Arc<blocks::Block>>,
    tail: Option<blocks::Cursor>,
    failed: bool,
}

impl IndexRead {
    pub fn new(
        backend: Arc<dyn Backend>,
        cache: Arc<blocks::BlockCache>,
        session: SessionId,
        wanted: Wanted,
        from: u64,
        to: u64,
    ) -> Result<IndexRead, ReadError> {
        let from = from.max(1);
        let watermark = watermark(&*backend, &session)?;
        let prefix = wanted.prefix(&session);
        let mut start = prefix.clone();
        start.extend_from_slice(&from.to_be_bytes());
        let runs = backend.range(&start, &keys::prefix_end(&prefix));
        Ok(IndexRead {
            session,
            backend,
            wanted,
            from,
            to,
            watermark,
            runs: Some(runs),
            seqs: Vec::new().into_iter(),
            cache,
            block: None,
            tail: None,
            failed: false,
        })
    }

    fn corrupt(&self, seq: u64, detail: impl Into<String>) -> ReadError {
        ReadError::Corrupted { session: self.session, seq, detail: detail.into() }
    }

    /// The next seq from the runs, or `None` past the watermark, `to` or the last run.
    fn next_indexed(&mut self) -> Option<Result<u64, ReadError>> {
        let limit = self.to.min(self.watermark);
        loop {
            if let Some(seq) = self.seqs.next() {
                if seq < self.from {
                    continue;
                }
                if seq > limit {
                    self.runs = None;
                    return None;
                }
                return Some(Ok(seq));
            }
            let runs = self.runs.as_mut()?;
            let (k, v) = match runs.next() {
                None => {
                    self.runs = None;
                    return None;
                }
                Some(Err(e)) => return Some(Err(e.into())),
                Some(Ok(kv)) => kv,
            };
            let last = keys::be_u64(&k, k.len() - 8);
            let Some(seqs) = decode_seqs(&v) else {
                return Some(Err(self.corrupt(last, "index run does not decode")));
            };
            self.seqs = seqs.into_iter();
        }
    }

    fn fetch(&mut self, seq: u64) -> Result<LogEntry, ReadError> {
        // Keep the last block: the hits of one author or entity often share blocks.
        if !self.block.as_ref().is_some_and(|b| b.contains(seq)) {
            self.block = Some(blocks::load(&*self.backend, &self.session, seq, Some(&self.cache))?);
        }
        self.block.as_ref().expect("loaded above").entry(&self.session, seq)
    }
}

impl Iterator for IndexRead {
    type Item = Result<LogEntry, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if self.runs.is_some() {
            match self.next_indexed() {
                Some(Ok(seq)) => {
                    let r = self.fetch(seq);
                    self.failed = r.is_err();
                    return Some(r);
                }
                Some(Err(e)) => {
                    self.failed = true;
                    return Some(Err(e));
                }
                None => {}
            }
        }
        if self.tail.is_none() {
            let from = self.from.max(self.watermark + 1);
            if from > self.to {
                return None;
            }
            match blocks::Cursor::new(&*self.backend, &self.session, from, self.to) {
                Ok(c) => self.tail = Some(c),
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
        let tail = self.tail.as_mut().expect("set above");
        loop {
            match tail.next()? {
                Ok(e) => match self.wanted.matches(&e) {
                    Ok(true) => return Some(Ok(e)),
                    Ok(false) => continue,
                    Err(detail) => {
                        self.failed = true;
                        return Some(Err(ReadError::Corrupted { session: self.session, seq: e.seq, detail }));
                    }
                },
                Err(e) => {
                    self.failed = true;
                    return Some(Err(e));
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn seqs_round_trip_through_the_run_encoding() {
        for seqs in [vec![], vec![1], vec![1, 2, 3, 200, 70_000, 1 << 40, u64::MAX]] {
            assert_eq!(decode_seqs(&encode_seqs(&seqs)), Some(seqs));
        }
        assert_eq!(decode_seqs(&[0x80]), None, "a cut varint");
        assert_eq!(decode_seqs(&[0xff; 11]), None, "an overlong varint");
    }
}
