//! Three nodes in one process, over loopback TCP: appends made on any node are ordered by their
//! group's leader and reach every replica byte for byte; when a leader stops, the others elect
//! a new one and appends go on.

mod common;
use common::contents;

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tempfile::TempDir;
use theta_raft::{Applied, ClusterKey, GroupId, Member, Node, NodeConfig, NodeId, TcpConnector, group_of};
use theta_schemas::{Command, ComponentId, SessionId, Shape};
use theta_store::{Store, StoreConfig};
use theta_testkit::Author;

const GROUPS: u64 = 2;

struct Running {
    node: Arc<Node>,
    accept: tokio::task::JoinHandle<()>,
    _dir: TempDir,
}

async fn cluster(n: u64) -> BTreeMap<NodeId, Running> {
    cluster_with(n, StoreConfig::default()).await
}

async fn cluster_with(n: u64, config: StoreConfig) -> BTreeMap<NodeId, Running> {
    let key = ClusterKey { cluster: [3; 16], secret: [4; 32] };
    let mut listeners = BTreeMap::new();
    let mut members = BTreeMap::new();
    for id in 1..=n {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap().to_string();
        members.insert(id, Member { raft_addr: addr, grpc_addr: String::new() });
        listeners.insert(id, l);
    }
    let mut nodes = BTreeMap::new();
    for (id, listener) in listeners {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path().join("store"), config.clone()).unwrap());
        let db = sled::open(dir.path().join("raft")).unwrap();
        let node =
            Node::start(NodeConfig::new(id, key.clone(), GROUPS), store, &db, Arc::new(TcpConnector)).await.unwrap();
        let accept = tokio::spawn(node.clone().accept_tcp(listener));
        nodes.insert(id, Running { node, accept, _dir: dir });
    }
    nodes[&1].node.initialize(members).await.unwrap();
    nodes
}

async fn leader(nodes: &BTreeMap<NodeId, Running>, group: GroupId) -> NodeId {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        for r in nodes.values() {
            if let Some(l) = r.node.raft(group).unwrap().current_leader().await
                && nodes.contains_key(&l)
            {
                return l;
            }
        }
        assert!(Instant::now() < deadline, "group {group} elected no leader");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// Waits until every node's store holds the same entries and returns them.
async fn converged(nodes: &BTreeMap<NodeId, Running>) -> Vec<(SessionId, Vec<Vec<u8>>)> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let all: Vec<_> = nodes.values().map(|r| contents(r.node.store())).collect();
        if all.windows(2).all(|w| w[0] == w[1]) {
            return all.into_iter().next().unwrap();
        }
        assert!(Instant::now() < deadline, "replicas did not converge");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

fn accepted(a: &Applied) -> u64 {
    match a {
        Applied::Accepted(r) => r.seq,
        other => panic!("refused: {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_on_any_node_reach_every_replica() {
    let nodes = cluster(3).await;
    for g in 1..=GROUPS {
        leader(&nodes, g).await;
    }
    // Sessions on both groups, each edited through every node in turn.
    let sessions: Vec<SessionId> = (1..=6u8).map(|i| SessionId([i; 16])).collect();
    let groups: std::collections::BTreeSet<_> = sessions.iter().map(|s| group_of(s, GROUPS)).collect();
    assert_eq!(groups.len() as u64, GROUPS, "the sessions cover every group");
    let mut owner = Author::new(1);
    let ids: Vec<NodeId> = nodes.keys().copied().collect();
    let mut k = 0;
    for s in &sessions {
        let node = &nodes[&ids[k % 3]].node;
        k += 1;
        let create = owner.cmd(*s, 0, ComponentId::NONE, 0, Command::CreateSession { name: "s".into() });
        assert_eq!(accepted(&node.append(create).await.unwrap()), 1);
        for e in 1..=10u64 {
            let node = &nodes[&ids[k % 3]].node;
            k += 1;
            let cmd = owner.cmd(
                *s,
                e,
                ComponentId::NONE,
                0,
                Command::CreateEntity { shape: Shape::Cube, name: format!("e{e}"), parent: 0 },
            );
            assert_eq!(accepted(&node.append(cmd).await.unwrap()), e + 1);
        }
    }
    // A command sent twice (a client retrying through another node) is applied once.
    let again = owner.cmd(sessions[0], 1, ComponentId::NONE, 1, Command::DeleteEntity);
    assert_eq!(accepted(&nodes[&1].node.append(again.clone()).await.unwrap()), 12);
    match nodes[&2].node.append(again).await.unwrap() {
        Applied::Rejected { first_seq, .. } => assert_eq!(first_seq, Some(12)),
        other => panic!("{other:?}"),
    }
    let all = converged(&nodes).await;
    assert_eq!(all.len(), 6);
    assert_eq!(all[0].1.len(), 12);
    for r in nodes.values() {
        r.node.shutdown().await;
        r.accept.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn appends_resume_after_the_leader_stops() {
    let mut nodes = cluster(3).await;
    let session = SessionId([0x51; 16]);
    let group = group_of(&session, GROUPS);
    let first = leader(&nodes, group).await;
    let mut owner = Author::new(7);
    let create = owner.cmd(session, 0, ComponentId::NONE, 0, Command::CreateSession { name: "failover".into() });
    assert_eq!(accepted(&nodes[&first].node.append(create).await.unwrap()), 1);
    for e in 1..=5u64 {
        let cmd = owner.cmd(
            session,
            e,
            ComponentId::NONE,
            0,
            Command::CreateEntity { shape: Shape::Cube, name: format!("e{e}"), parent: 0 },
        );
        nodes[&first].node.append(cmd).await.unwrap();
    }

    // The leader stops: its Raft and its port.
    let gone = nodes.remove(&first).unwrap();
    gone.node.shutdown().await;
    gone.accept.abort();
    let stopped = Instant::now();

    // The next append, through a surviving node, waits for the election and lands.
    let via = *nodes.keys().next().unwrap();
    let cmd = owner.cmd(
        session,
        6,
        ComponentId::NONE,
        0,
        Command::CreateEntity { shape: Shape::Cube, name: "e6".into(), parent: 0 },
    );
    assert_eq!(accepted(&nodes[&via].node.append(cmd).await.unwrap()), 7);
    let failover = stopped.elapsed();
    let second = leader(&nodes, group).await;
    assert_ne!(second, first);
    println!(
        "failover: leader {first} stopped, first acknowledged append through node {via} after {failover:?} (new leader {second})"
    );

    let all = converged(&nodes).await;
    assert_eq!(all.iter().find(|(s, _)| *s == session).unwrap().1.len(), 7);
    for r in nodes.values() {
        r.node.shutdown().await;
        r.accept.abort();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_leader_enforces_the_append_rate_wherever_the_client_sends() {
    // 1 append a second after a burst of 5, per author and session.
    let nodes = cluster_with(3, StoreConfig { rate_per_sec: 1.0, rate_burst: 5.0, ..StoreConfig::default() }).await;
    let session = SessionId([0x77; 16]);
    let group = group_of(&session, GROUPS);
    let lead = leader(&nodes, group).await;
    let follower = *nodes.keys().find(|&&id| id != lead).unwrap();
    let mut owner = Author::new(9);
    let mut outcomes = Vec::new();
    for e in 0..8u64 {
        let command = if e == 0 {
            Command::CreateSession { name: "rate".into() }
        } else {
            Command::CreateEntity { shape: Shape::Cube, name: format!("e{e}"), parent: 0 }
        };
        // Alternately through the leader and through a follower, which forwards.
        let via = if e % 2 == 0 { lead } else { follower };
        outcomes.push(nodes[&via].node.append(owner.cmd(session, e, ComponentId::NONE, 0, command)).await);
    }
    let accepted = outcomes.iter().filter(|o| matches!(o, Ok(Applied::Accepted(_)))).count();
    assert_eq!(accepted, 5, "{outcomes:?}");
    for o in &outcomes[5..] {
        match o {
            Err(theta_raft::ProposeError::RateLimited { retry_after_ms }) => assert!(*retry_after_ms > 0),
            other => panic!("{other:?}"),
        }
    }
    // Refused appends were never proposed: every replica holds the 5 accepted ones only.
    let all = converged(&nodes).await;
    assert_eq!(all.iter().find(|(s, _)| *s == session).unwrap().1.len(), 5);
    for r in nodes.values() {
        r.node.shutdown().await;
        r.accept.abort();
    }
}
