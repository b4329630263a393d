//! A group's Raft log and vote on sled.
//!
//! One sled database per node holds every group's Raft state, two trees per group:
//! `raft-log-<group>` (big-endian index → entry, postcard) and `raft-meta-<group>` (the vote,
//! the committed log id, the last purged log id). Nothing is reported durable before sled's
//! flush (which fsyncs) has covered it: the vote before `save_vote` returns, appended entries
//! before their `LogFlushed` callback, which a flusher task calls in order, one flush for
//! every append queued behind the one it is flushing (group commit).

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{Entry, LogId, OptionalSend, RaftLogId, RaftLogReader, StorageError, Vote};
use tokio::sync::mpsc;

use crate::{GroupId, NodeId, TypeConfig, decode, encode, io_error};

const VOTE: &[u8] = b"vote";
const COMMITTED: &[u8] = b"committed";
const PURGED: &[u8] = b"purged";

/// A group's Raft log storage.
pub struct LogStore {
    db: sled::Db,
    reader: LogReader,
    meta: sled::Tree,
    flushes: mpsc::UnboundedSender<LogFlushed<TypeConfig>>,
}

/// Reads a group's Raft log (cheap to clone; openraft's replication tasks hold one each).
#[derive(Clone)]
pub struct LogReader {
    log: sled::Tree,
}

impl LogStore {
    /// Opens `group`'s log in the node's Raft database. Starts the group's flusher task, so it
    /// must be called within a tokio runtime.
    pub fn open(db: &sled::Db, group: GroupId) -> sled::Result<LogStore> {
        let log = db.open_tree(format!("raft-log-{group}"))?;
        let meta = db.open_tree(format!("raft-meta-{group}"))?;
        let (tx, rx) = mpsc::unbounded_channel();
        tokio::spawn(flusher(db.clone(), rx));
        Ok(LogStore { db: db.clone(), reader: LogReader { log }, meta, flushes: tx })
    }

    fn get_meta<T: for<'a> serde::Deserialize<'a>>(&self, key: &[u8]) -> Result<Option<T>, StorageError<NodeId>> {
        match self.meta.get(key).map_err(|e| io_error(false, e))? {
            None => Ok(None),
            Some(v) => decode(&v).map(Some).map_err(|e| io_error(false, e)),
        }
    }

    async fn flush(&self) -> Result<(), StorageError<NodeId>> {
        self.db.flush_async().await.map(|_| ()).map_err(|e| io_error(true, e))
    }
}

/// Flushes what was appended and answers the callbacks in order: one flush covers every append
/// that queued while the previous one ran.
async fn flusher(db: sled::Db, mut rx: mpsc::UnboundedReceiver<LogFlushed<TypeConfig>>) {
    let mut waiting = Vec::new();
    while rx.recv_many(&mut waiting, 1024).await > 0 {
        let result = db.flush_async().await.map(|_| ());
        for callback in waiting.drain(..) {
            callback.log_io_completed(result.as_ref().map(|_| ()).map_err(|e| std::io::Error::other(e.to_string())));
        }
    }
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
}

impl RaftLogReader<TypeConfig> for LogReader {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        let start = match range.start_bound() {
            Bound::Included(&i) => i,
            Bound::Excluded(&i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let end = match range.end_bound() {
            Bound::Included(&i) => Bound::Included(index_key(i)),
            Bound::Excluded(&i) => Bound::Excluded(index_key(i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut out = Vec::new();
        for kv in self.log.range::<[u8; 8], _>((Bound::Included(index_key(start)), end)) {
            let (_, v) = kv.map_err(|e| io_error(false, e))?;
            out.push(decode::<Entry<TypeConfig>>(&v).map_err(|e| io_error(false, e))?);
        }
        Ok(out)
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry<TypeConfig>>, StorageError<NodeId>> {
        self.reader.try_get_log_entries(range).await
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogReader;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError<NodeId>> {
        let purged: Option<LogId<NodeId>> = self.get_meta(PURGED)?;
        let last = match self.reader.log.last().map_err(|e| io_error(false, e))? {
            Some((_, v)) => Some(*decode::<Entry<TypeConfig>>(&v).map_err(|e| io_error(false, e))?.get_log_id()),
            None => None,
        };
        // A purge cut short leaves entries at or below the purged mark: they do not count.
        let last = match (last, purged) {
            (Some(l), Some(p)) if l.index <= p.index => Some(p),
            (None, p) => p,
            (l, _) => l,
        };
        Ok(LogState { last_purged_log_id: purged, last_log_id: last })
    }

    async fn get_log_reader(&mut self) -> LogReader {
        self.reader.clone()
    }

    async fn save_vote(&mut self, vote: &Vote<NodeId>) -> Result<(), StorageError<NodeId>> {
        self.meta.insert(VOTE, encode(vote)).map_err(|e| io_error(true, e))?;
        self.flush().await
    }

    async fn read_vote(&mut self) -> Result<Option<Vote<NodeId>>, StorageError<NodeId>> {
        self.get_meta(VOTE)
    }

    async fn save_committed(&mut self, committed: Option<LogId<NodeId>>) -> Result<(), StorageError<NodeId>> {
        // Made durable by the next flush; openraft reads it back only as a hint on restart.
        self.meta.insert(COMMITTED, encode(&committed)).map_err(|e| io_error(true, e))?;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId<NodeId>>, StorageError<NodeId>> {
        Ok(self.get_meta::<Option<LogId<NodeId>>>(COMMITTED)?.flatten())
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        for entry in entries {
            batch.insert(&index_key(entry.get_log_id().index), encode(&entry));
        }
        // Readable once applied to the tree; durable once the flusher's flush covers it.
        self.reader.log.apply_batch(batch).map_err(|e| io_error(true, e))?;
        self.flushes.send(callback).map_err(|_| io_error(true, "the Raft log's flusher stopped"))?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // Everything from `log_id.index` on, in one batch: never a hole.
        let mut batch = sled::Batch::default();
        for kv in self.reader.log.range(index_key(log_id.index)..) {
            let (k, _) = kv.map_err(|e| io_error(false, e))?;
            batch.remove(k);
        }
        self.reader.log.apply_batch(batch).map_err(|e| io_error(true, e))?;
        self.flush().await
    }

    async fn purge(&mut self, log_id: LogId<NodeId>) -> Result<(), StorageError<NodeId>> {
        // The purged mark first and durably: should the removal be cut short, the log still
        // starts right after it.
        self.meta.insert(PURGED, encode(&log_id)).map_err(|e| io_error(true, e))?;
        self.flush().await?;
        let mut batch = sled::Batch::default();
        for kv in self.reader.log.range(..=index_key(log_id.index)) {
            let (k, _) = kv.map_err(|e| io_error(false, e))?;
            batch.remove(k);
        }
        self.reader.log.apply_batch(batch).map_err(|e| io_error(true, e))?;
        Ok(())
    }
}
