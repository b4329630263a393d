//! A group's state machine on real stores: replicas that apply the same Raft log hold the same
//! sessions byte for byte, whatever the chunks apply is called with; the applied position
//! survives a restart with the store; snapshots bring lagging and empty replicas up to date;
//! the Raft log and vote survive reopening sled.

mod common;
use common::contents;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::Arc;

use openraft::storage::{RaftLogStorage, RaftLogStorageExt, RaftStateMachine};
use openraft::{CommittedLeaderId, Entry, EntryPayload, LogId, Membership, RaftLogReader, RaftSnapshotBuilder, Vote};
use tempfile::TempDir;
use theta_raft::{Applied, GroupMachine, LogStore, Member, Proposal, TypeConfig};
use theta_schemas::components::{Component, Name};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::{Command, ComponentId, Envelope, LogEntry, Role, SessionId, Shape};
use theta_store::{RejectionCode, Store, StoreConfig};
use theta_testkit::Author;

const T0: u64 = 1_780_000_000_000;

fn log_id(index: u64) -> LogId<u64> {
    LogId::new(CommittedLeaderId::new(1, 1), index)
}

fn membership(index: u64) -> Entry<TypeConfig> {
    let members = BTreeSet::from([1u64, 2, 3]);
    let nodes = members.iter().map(|&n| (n, Member { raft_addr: format!("n{n}:1"), grpc_addr: format!("n{n}:2") }));
    Entry {
        log_id: log_id(index),
        payload: EntryPayload::Membership(Membership::new(
            vec![members.clone()],
            nodes.collect::<std::collections::BTreeMap<_, _>>(),
        )),
    }
}

fn append(index: u64, envelope: Vec<u8>) -> Entry<TypeConfig> {
    // Every entry's leader clock is distinct and known: the receipt time on every replica.
    Entry { log_id: log_id(index), payload: EntryPayload::Normal(Proposal::Append { envelope, time_ms: T0 + index }) }
}

/// A Raft log of one group: a membership entry, a blank one, then commands on two sessions,
/// among them a replay, a forged signature and a command by a key without a role, and a burst
/// by one author far beyond the store's rate limit, all at nearly the same leader clock.
fn raft_log() -> Vec<Entry<TypeConfig>> {
    let (a, b) = (SessionId([0xa1; 16]), SessionId([0xb2; 16]));
    let mut owner = Author::new(1);
    let mut editor = Author::new(2);
    let mut stranger = Author::new(3);
    let mut cmds = vec![
        owner.cmd(a, 0, ComponentId::NONE, 0, Command::CreateSession { name: "a".into() }),
        owner.cmd(a, 0, ComponentId::NONE, 0, Command::GrantRole { key: editor.id(), role: Role::Editor }),
        owner.cmd(b, 0, ComponentId::NONE, 0, Command::CreateSession { name: "b".into() }),
    ];
    for e in 1..=20u64 {
        cmds.push(editor.cmd(
            a,
            e,
            ComponentId::NONE,
            0,
            Command::CreateEntity { shape: Shape::Cube, name: format!("e{e}"), parent: 0 },
        ));
    }
    let replayed = cmds[4].clone();
    cmds.push(replayed);
    let mut forged = Envelope::decode(&editor.cmd(
        a,
        1,
        Name::id(),
        0,
        Command::SetComponent { data: Name("forged".into()).encode() },
    ))
    .unwrap();
    forged.signature[0] ^= 1;
    cmds.push(forged.encode());
    cmds.push(stranger.cmd(a, 1, Name::id(), 0, Command::SetComponent { data: Name("no role".into()).encode() }));
    for e in 1..=10u64 {
        cmds.push(owner.cmd(
            b,
            e,
            ComponentId::NONE,
            0,
            Command::CreateEntity { shape: Shape::Sphere, name: format!("s{e}"), parent: 0 },
        ));
    }
    let mut log = vec![membership(1), Entry { log_id: log_id(2), payload: EntryPayload::Blank }];
    log.extend(cmds.into_iter().enumerate().map(|(i, c)| append(i as u64 + 3, c)));
    log
}

/// A node's store with a rate limit the burst above exceeds many times over.
fn open_store(dir: &Path) -> Arc<Store> {
    let config = StoreConfig { rate_per_sec: 1.0, rate_burst: 2.0, ..StoreConfig::default() };
    Arc::new(Store::open(dir.join("store"), config).expect("store"))
}

fn node() -> (TempDir, Arc<Store>, GroupMachine) {
    let dir = tempfile::tempdir().expect("tempdir");
    let store = open_store(dir.path());
    let machine = GroupMachine::open(store.clone(), 1, 1).expect("machine");
    (dir, store, machine)
}

/// Outcomes without the tree a receipt was made durable in (that depends on group commit).
fn verdicts(outcomes: &[Applied]) -> Vec<String> {
    outcomes
        .iter()
        .map(|o| match o {
            Applied::Nothing => "nothing".into(),
            Applied::Accepted(r) => format!("seq {} {}", r.seq, hex(&r.entry_hash)),
            Applied::Rejected { code, first_seq, .. } => format!("rejected {code} {first_seq:?}"),
        })
        .collect()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn replicas_applying_the_same_log_hold_the_same_sessions() {
    let log = raft_log();
    let (_d1, store1, mut m1) = node();
    let (_d2, store2, mut m2) = node();
    let all = m1.apply(log.clone()).await.expect("apply at once");
    let mut one_by_one = Vec::new();
    for entry in log.clone() {
        one_by_one.extend(m2.apply([entry]).await.expect("apply one by one"));
    }
    assert_eq!(verdicts(&all), verdicts(&one_by_one));

    let v = verdicts(&all);
    assert_eq!(&v[..2], ["nothing", "nothing"]);
    let accepted = all.iter().filter(|o| matches!(o, Applied::Accepted(_))).count();
    assert_eq!(accepted, 3 + 20 + 10, "every honest command, the burst beyond the rate limit included");
    let codes: Vec<_> = all
        .iter()
        .filter_map(|o| match o {
            Applied::Rejected { code, first_seq, .. } => Some((*code, *first_seq)),
            _ => None,
        })
        .collect();
    assert_eq!(
        codes,
        [
            (RejectionCode::Replay as u8, Some(4)),
            (RejectionCode::Signature as u8, None),
            (RejectionCode::Permission as u8, None),
        ]
    );

    let (c1, c2) = (contents(&store1), contents(&store2));
    assert_eq!(c1.len(), 2);
    assert_eq!(c1, c2, "both replicas hold the same entries, byte for byte");
    let mut heads1 = store1.sessions();
    let mut heads2 = store2.sessions();
    heads1.sort_by_key(|h| h.session);
    heads2.sort_by_key(|h| h.session);
    assert_eq!(heads1, heads2);
    // Receipt times are the leader's clock, not the replicas'.
    let first = LogEntry::decode(&c1[0].1[0]).unwrap();
    assert_eq!(first.receipt_time_ms, T0 + 3);

    let last = log.last().unwrap().log_id;
    assert_eq!(m1.applied_state().await.unwrap().0, Some(last));
    assert_eq!(m2.applied_state().await.unwrap().0, Some(last));
    assert_eq!(m1.applied_state().await.unwrap().1.log_id(), &Some(log_id(1)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_applied_position_survives_a_restart_with_the_store() {
    let log = raft_log();
    let dir = tempfile::tempdir().unwrap();
    let (applied, membership, before) = {
        let store = open_store(dir.path());
        let mut m = GroupMachine::open(store.clone(), 1, 1).unwrap();
        m.apply(log[..20].to_vec()).await.unwrap();
        let (applied, membership) = m.applied_state().await.unwrap();
        let before = contents(&store);
        drop(m);
        store.close();
        (applied, membership, before)
    };
    assert_eq!(applied, Some(log[19].log_id));
    let store = open_store(dir.path());
    let mut m = GroupMachine::open(store.clone(), 1, 1).unwrap();
    let (again, again_membership) = m.applied_state().await.unwrap();
    assert_eq!((again, &again_membership), (applied, &membership));
    assert_eq!(contents(&store), before);
    // Apply goes on where it stopped and ends where a replica that never stopped ends.
    m.apply(log[20..].to_vec()).await.unwrap();
    let (_d, reference, mut r) = node();
    r.apply(log.clone()).await.unwrap();
    assert_eq!(contents(&store), contents(&reference));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_brings_lagging_and_empty_replicas_up_to_date() {
    let log = raft_log();
    let (_dl, leader, mut l) = node();
    l.apply(log.clone()).await.unwrap();
    let snapshot = l.get_snapshot_builder().await.build_snapshot().await.unwrap();
    assert_eq!(snapshot.meta.last_log_id, Some(log.last().unwrap().log_id));
    let current = l.get_current_snapshot().await.unwrap().expect("a current snapshot");
    assert_eq!(current.meta, snapshot.meta);
    assert_eq!(current.snapshot.get_ref(), snapshot.snapshot.get_ref(), "the manifest reads back the same data");

    for prefix in [0, 12] {
        let (_df, follower, mut f) = node();
        f.apply(log[..prefix].to_vec()).await.unwrap();
        let mut data = f.begin_receiving_snapshot().await.unwrap();
        *data = (*snapshot.snapshot).clone();
        f.install_snapshot(&snapshot.meta, data).await.expect("install");
        assert_eq!(contents(&follower), contents(&leader), "after {prefix} entries applied");
        assert_eq!(f.applied_state().await.unwrap(), l.applied_state().await.unwrap());
        assert_eq!(f.get_current_snapshot().await.unwrap().unwrap().meta, snapshot.meta);
        // Installing the same snapshot again changes nothing.
        let mut data = f.begin_receiving_snapshot().await.unwrap();
        *data = (*snapshot.snapshot).clone();
        f.install_snapshot(&snapshot.meta, data).await.expect("install again");
        assert_eq!(contents(&follower), contents(&leader));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_snapshot_that_disagrees_with_the_replica_is_refused() {
    let log = raft_log();
    let (_dl, _leader, mut l) = node();
    l.apply(log.clone()).await.unwrap();
    let snapshot = l.get_snapshot_builder().await.build_snapshot().await.unwrap();
    // Same session ids, different history: the replica's entry at a common seq differs.
    let mut other = log[..4].to_vec();
    let mut owner = Author::new(1);
    owner.lamport = 10;
    owner.nonce = 999;
    other.push(append(
        5,
        owner.cmd(
            SessionId([0xa1; 16]),
            0,
            ComponentId::NONE,
            0,
            Command::SetConflictPolicy { component: Name::id(), strategy: theta_schemas::ConflictStrategy::Reject },
        ),
    ));
    let (_df, follower, mut f) = node();
    f.apply(other).await.unwrap();
    let before = contents(&follower);
    let mut data = f.begin_receiving_snapshot().await.unwrap();
    *data = (*snapshot.snapshot).clone();
    let err = f.install_snapshot(&snapshot.meta, data).await.expect_err("a diverged replica refuses");
    assert!(err.to_string().contains("differs"), "{err}");
    assert_eq!(contents(&follower), before, "nothing changed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_raft_log_and_vote_survive_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let log = raft_log();
    let vote = Vote::new_committed(3, 2);
    {
        let db = sled::open(dir.path().join("raft")).unwrap();
        let mut s = LogStore::open(&db, 1).unwrap();
        s.save_vote(&vote).await.unwrap();
        s.blocking_append(log.clone()).await.unwrap();
        s.purge(log_id(3)).await.unwrap();
    }
    // The flusher task lets go of the database once its store is gone.
    let db = loop {
        match sled::open(dir.path().join("raft")) {
            Ok(db) => break db,
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    };
    let mut s = LogStore::open(&db, 1).unwrap();
    assert_eq!(s.read_vote().await.unwrap(), Some(vote));
    let state = s.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, Some(log_id(3)));
    assert_eq!(state.last_log_id, Some(log.last().unwrap().log_id));
    let entries = s.try_get_log_entries(4..).await.unwrap();
    assert_eq!(entries, log[3..].to_vec());
    // Another group's log in the same database is its own.
    let mut other = LogStore::open(&db, 2).unwrap();
    assert_eq!(other.get_log_state().await.unwrap().last_log_id, None);
    assert_eq!(other.read_vote().await.unwrap(), None);
}
