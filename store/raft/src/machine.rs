//! A group's state machine: the node's store.
//!
//! Apply hands each committed entry to the store in log order
//! ([`theta_store::Store::submit_replicated`]); the group's applied position and membership
//! travel with it as a replica mark, written in the same atomic batch as the entry's outcome.
//! Snapshots are manifests of the group's session heads at the applied position; their data
//! is read from the store when asked for.

use std::io::Cursor;
use std::sync::Arc;

use openraft::storage::{RaftStateMachine, Snapshot};
use openraft::{
    Entry, EntryPayload, LogId, RaftSnapshotBuilder, SnapshotMeta, StorageError, StorageIOError, StoredMembership,
};
use serde::{Deserialize, Serialize};
use theta_schemas::{LogEntry, SessionId};
use theta_store::{AppendError, ImportError, ReadError, Receipt, RejectionCode, Stamp, Store};
use tokio::sync::oneshot;

use crate::{Applied, GroupId, Member, NodeId, Proposal, ReceiptData, TypeConfig, decode, encode, group_of, io_error};

/// What the store holds for a group besides the sessions: where apply got to.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
struct Mark {
    applied: Option<LogId<NodeId>>,
    membership: StoredMembership<NodeId, Member>,
}

/// The group's current snapshot: its metadata and each session's head at its position.
#[derive(Debug, Clone, Serialize, Deserialize)]
struct Manifest {
    meta: SnapshotMeta<NodeId, Member>,
    heads: Vec<([u8; 16], u64)>,
}

/// A snapshot's data: every entry of the group's sessions up to the manifest's heads.
#[derive(Debug, Serialize, Deserialize)]
struct SnapshotBody {
    sessions: Vec<SessionLog>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SessionLog {
    session: [u8; 16],
    /// `LogEntry` encodings from seq 1, in order.
    entries: Vec<Vec<u8>>,
}

/// Replica mark keys of a group: its applied position, its snapshot manifest.
fn applied_key(group: GroupId) -> u64 {
    group << 1
}
fn manifest_key(group: GroupId) -> u64 {
    group << 1 | 1
}

/// A group's state machine over the node's store.
pub struct GroupMachine {
    store: Arc<Store>,
    group: GroupId,
    groups: u64,
    mark: Mark,
}

impl GroupMachine {
    /// The state machine of data group `group` (of `groups`), resuming where the store's
    /// replica mark says apply got to.
    pub fn open(store: Arc<Store>, group: GroupId, groups: u64) -> Result<GroupMachine, StorageError<NodeId>> {
        let mark = match store.replica_mark(applied_key(group)).map_err(|e| io_error(false, e))? {
            Some(bytes) => decode(&bytes).map_err(|e| io_error(false, e))?,
            None => Mark::default(),
        };
        Ok(GroupMachine { store, group, groups, mark })
    }

    /// The last applied log id.
    pub fn applied(&self) -> Option<LogId<NodeId>> {
        self.mark.applied
    }

    /// The group's sessions and their heads, as the store holds them now.
    fn heads(&self) -> Vec<([u8; 16], u64)> {
        let mut heads: Vec<_> = self
            .store
            .sessions()
            .into_iter()
            .filter(|h| group_of(&h.session, self.groups) == self.group)
            .map(|h| (h.session.0, h.seq))
            .collect();
        heads.sort_unstable();
        heads
    }

    fn manifest(&self) -> Result<Option<Manifest>, StorageError<NodeId>> {
        match self.store.replica_mark(manifest_key(self.group)).map_err(|e| io_error(false, e))? {
            Some(bytes) => decode(&bytes).map(Some).map_err(|e| io_error(false, e)),
            None => Ok(None),
        }
    }
}

/// One entry's outcome from the store.
enum Outcome {
    Append(Result<Receipt, AppendError>),
    Mark(Result<(), ImportError>),
}

impl RaftStateMachine<TypeConfig> for GroupMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(
        &mut self,
    ) -> Result<(Option<LogId<NodeId>>, StoredMembership<NodeId, Member>), StorageError<NodeId>> {
        Ok((self.mark.applied, self.mark.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<Applied>, StorageError<NodeId>>
    where
        I: IntoIterator<Item = Entry<TypeConfig>> + Send,
        I::IntoIter: Send,
    {
        // Everything is submitted first (the store commits it in groups, in order), then the
        // outcomes are awaited in order.
        let key = applied_key(self.group);
        let mut pending = Vec::new();
        for entry in entries {
            self.mark.applied = Some(entry.log_id);
            let (tx, rx) = oneshot::channel();
            match entry.payload {
                EntryPayload::Normal(Proposal::Append { envelope, time_ms }) => {
                    let stamp = Stamp { time_ms, mark: Some((key, encode(&self.mark))) };
                    self.store.submit_replicated(envelope, stamp, move |r| {
                        let _ = tx.send(Outcome::Append(r));
                    });
                }
                payload => {
                    if let EntryPayload::Membership(m) = payload {
                        self.mark.membership = StoredMembership::new(Some(entry.log_id), m);
                    }
                    self.store.submit_replica_marks(vec![(key, encode(&self.mark))], move |r| {
                        let _ = tx.send(Outcome::Mark(r));
                    });
                }
            }
            pending.push((entry.log_id, rx));
        }
        let mut out = Vec::with_capacity(pending.len());
        for (log_id, rx) in pending {
            let failed = |e: &dyn std::fmt::Display| -> StorageError<NodeId> {
                StorageIOError::apply(log_id, openraft::AnyError::error(e)).into()
            };
            out.push(match rx.await {
                Ok(Outcome::Append(Ok(receipt))) => Applied::Accepted(ReceiptData::from(&receipt)),
                // Storage failures, corruption and shutdown are this replica's, not the
                // entry's: apply stops (openraft then stops the group on this node).
                Ok(Outcome::Append(Err(e))) if e.code() == RejectionCode::Unavailable => return Err(failed(&e)),
                Ok(Outcome::Append(Err(e))) => Applied::Rejected {
                    code: e.code() as u8,
                    reason: e.to_string(),
                    first_seq: match e {
                        AppendError::Replay { first_seq, .. } => Some(first_seq),
                        _ => None,
                    },
                },
                Ok(Outcome::Mark(Ok(()))) => Applied::Nothing,
                Ok(Outcome::Mark(Err(e))) => return Err(failed(&e)),
                Err(_) => return Err(failed(&"the store dropped an entry")),
            });
        }
        Ok(out)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // The heads are taken here, on the state machine's task, where they match the applied
        // position; the builder may run while later entries are applied.
        SnapshotBuilder {
            store: self.store.clone(),
            group: self.group,
            meta: SnapshotMeta {
                last_log_id: self.mark.applied,
                last_membership: self.mark.membership.clone(),
                snapshot_id: snapshot_id(self.group, self.mark.applied),
            },
            heads: self.heads(),
        }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError<NodeId>> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(
        &mut self,
        meta: &SnapshotMeta<NodeId, Member>,
        snapshot: Box<Cursor<Vec<u8>>>,
    ) -> Result<(), StorageError<NodeId>> {
        let signature = Some(meta.signature());
        let bad = |e: &dyn std::fmt::Display| -> StorageError<NodeId> {
            StorageIOError::write_snapshot(signature.clone(), openraft::AnyError::error(e)).into()
        };
        let body: SnapshotBody = decode(snapshot.get_ref()).map_err(|e| bad(&e))?;
        let store = self.store.clone();
        let heads = tokio::task::spawn_blocking(move || install(&store, body))
            .await
            .map_err(|e| bad(&e))?
            .map_err(|e| bad(&e))?;
        let mark = Mark { applied: meta.last_log_id, membership: meta.last_membership.clone() };
        let manifest = Manifest { meta: meta.clone(), heads };
        let marks = vec![(manifest_key(self.group), encode(&manifest)), (applied_key(self.group), encode(&mark))];
        write_marks(&self.store, marks).await.map_err(|e| io_error(true, e))?;
        self.mark = mark;
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot<TypeConfig>>, StorageError<NodeId>> {
        let Some(manifest) = self.manifest()? else { return Ok(None) };
        let store = self.store.clone();
        let signature = Some(manifest.meta.signature());
        let heads = manifest.heads.clone();
        let data = tokio::task::spawn_blocking(move || materialize(&store, &heads))
            .await
            .map_err(|e| io_error(false, e))?
            .map_err(|e| StorageIOError::read_snapshot(signature, openraft::AnyError::error(e)))?;
        Ok(Some(Snapshot { meta: manifest.meta, snapshot: Box::new(Cursor::new(data)) }))
    }
}

/// Writes replica marks in one batch and waits until they are durable.
async fn write_marks(store: &Store, marks: Vec<(u64, Vec<u8>)>) -> Result<(), String> {
    let (tx, rx) = oneshot::channel();
    store.submit_replica_marks(marks, move |r| {
        let _ = tx.send(r);
    });
    match rx.await {
        Ok(r) => r.map_err(|e| e.to_string()),
        Err(_) => Err("the store dropped a replica mark".into()),
    }
}

fn snapshot_id(group: GroupId, applied: Option<LogId<NodeId>>) -> String {
    match applied {
        Some(id) => format!("g{group}-t{}-n{}-i{}", id.leader_id.term, id.leader_id.node_id, id.index),
        None => format!("g{group}-empty"),
    }
}

/// Builds a group's snapshot from the heads taken when it was asked for.
pub struct SnapshotBuilder {
    store: Arc<Store>,
    group: GroupId,
    meta: SnapshotMeta<NodeId, Member>,
    heads: Vec<([u8; 16], u64)>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot<TypeConfig>, StorageError<NodeId>> {
        let signature = Some(self.meta.signature());
        let store = self.store.clone();
        let heads = self.heads.clone();
        let data = tokio::task::spawn_blocking(move || materialize(&store, &heads))
            .await
            .map_err(|e| io_error(false, e))?
            .map_err(|e| StorageIOError::read_snapshot(signature.clone(), openraft::AnyError::error(e)))?;
        // The manifest is all a snapshot keeps: its data is the log, read again when needed.
        let manifest = Manifest { meta: self.meta.clone(), heads: self.heads.clone() };
        write_marks(&self.store, vec![(manifest_key(self.group), encode(&manifest))])
            .await
            .map_err(|e| StorageIOError::write_snapshot(signature, openraft::AnyError::error(e)))?;
        Ok(Snapshot { meta: self.meta.clone(), snapshot: Box::new(Cursor::new(data)) })
    }
}

/// A snapshot's data: the sessions' entries up to `heads`, read from the store.
fn materialize(store: &Store, heads: &[([u8; 16], u64)]) -> Result<Vec<u8>, ReadError> {
    let mut sessions = Vec::with_capacity(heads.len());
    for &(id, seq) in heads {
        let session = SessionId(id);
        let entries =
            store.read_range(&session, 1, seq)?.map(|e| e.map(|e| e.encode())).collect::<Result<Vec<_>, _>>()?;
        sessions.push(SessionLog { session: id, entries });
    }
    Ok(encode(&SnapshotBody { sessions }))
}

/// Why an installed snapshot cannot be taken.
#[derive(Debug)]
enum InstallError {
    Decode(String),
    Import(ImportError),
    Read(ReadError),
    /// The replica's entry at a seq the snapshot also has differs: the logs diverged.
    Diverged {
        session: SessionId,
        seq: u64,
    },
}

impl std::fmt::Display for InstallError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            InstallError::Decode(e) => write!(f, "snapshot entry does not decode: {e}"),
            InstallError::Import(e) => write!(f, "snapshot import: {e}"),
            InstallError::Read(e) => write!(f, "snapshot install read: {e}"),
            InstallError::Diverged { session, seq } => {
                write!(f, "session {session}: this replica's entry {seq} differs from the snapshot's")
            }
        }
    }
}

/// Imports what this replica lacks of each session in a snapshot (entries past its head, which
/// the import checks link by link), after checking that what it has agrees with the snapshot.
fn install(store: &Store, body: SnapshotBody) -> Result<Vec<([u8; 16], u64)>, InstallError> {
    let mut heads = Vec::with_capacity(body.sessions.len());
    for log in body.sessions {
        let session = SessionId(log.session);
        let seq = log.entries.len() as u64;
        let local = match store.head(&session) {
            Ok(h) => h.seq,
            Err(ReadError::UnknownSession { .. }) => 0,
            Err(e) => return Err(InstallError::Read(e)),
        };
        // The last entry both hold must be the same (the hash chain covers the ones before).
        let common = local.min(seq);
        if common > 0 {
            let ours = store.entry(&session, common).map_err(InstallError::Read)?;
            let theirs =
                LogEntry::decode(&log.entries[common as usize - 1]).map_err(|e| InstallError::Decode(e.to_string()))?;
            if ours.entry_hash != theirs.entry_hash {
                return Err(InstallError::Diverged { session, seq: common });
            }
        }
        if local < seq {
            let missing = log.entries[local as usize..]
                .iter()
                .map(|b| LogEntry::decode(b).map_err(|e| InstallError::Decode(e.to_string())))
                .collect::<Result<Vec<_>, _>>()?;
            store.import(session, missing).map_err(InstallError::Import)?;
        }
        heads.push((log.session, seq));
    }
    heads.sort_unstable();
    Ok(heads)
}
