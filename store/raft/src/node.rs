//! A cluster node: one Raft per data group over the node's store, the Raft port's service,
//! and appends routed to each group's leader.

use std::collections::BTreeMap;
use std::io;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use openraft::error::{
    ClientWriteError, InitializeError, InstallSnapshotError, NetworkError, RPCError, RaftError, RemoteError, Timeout,
    Unreachable,
};
use openraft::network::{RPCOption, RaftNetwork, RaftNetworkFactory};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, InstallSnapshotRequest, InstallSnapshotResponse, VoteRequest,
    VoteResponse,
};
use openraft::{RPCTypes, Raft};
use serde::{Deserialize, Serialize};
use theta_schemas::{AuthorKey, CommandBody, Envelope, SessionId};
use theta_store::Store;
use theta_store::guard::TokenBucket;
use tokio::sync::Mutex;

use crate::net::{ClusterKey, Conn, Connector, Stream};
use crate::{Applied, GroupId, GroupMachine, LogStore, Member, NodeId, Proposal, TypeConfig, decode, encode, group_of};

/// A message on the Raft port.
#[derive(Debug, Serialize, Deserialize)]
enum Request {
    AppendEntries(GroupId, AppendEntriesRequest<TypeConfig>),
    Vote(GroupId, VoteRequest<NodeId>),
    InstallSnapshot(GroupId, InstallSnapshotRequest<TypeConfig>),
    /// An append another node accepted from a client, for this node to propose as leader.
    Propose(GroupId, Vec<u8>),
    /// A client's append, for this node to order (proposed here or forwarded to the leader).
    Append(Vec<u8>),
}

/// The answer to a [`Request`].
#[derive(Debug, Serialize, Deserialize)]
enum Response {
    AppendEntries(Result<AppendEntriesResponse<NodeId>, RaftError<NodeId>>),
    Vote(Result<VoteResponse<NodeId>, RaftError<NodeId>>),
    InstallSnapshot(Result<InstallSnapshotResponse<NodeId>, RaftError<NodeId, InstallSnapshotError>>),
    Propose(Result<Applied, ProposeError>),
    Append(Result<Applied, ProposeError>),
    /// The node runs no such group.
    UnknownGroup(GroupId),
}

/// Why an append could not be ordered.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum ProposeError {
    /// The envelope does not decode far enough to name its session.
    Malformed(String),
    /// No leader took the append in time (an election, a partition, a minority side).
    Unavailable(String),
    /// Forwarded to a node that is no longer the group's leader.
    NotLeader {
        /// Who it believes leads, if anyone.
        leader: Option<NodeId>,
    },
    /// The author is over the store's append rate in this session (checked by the leader).
    RateLimited {
        /// When a token is next available.
        retry_after_ms: u64,
    },
}

impl std::fmt::Display for ProposeError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ProposeError::Malformed(e) => write!(f, "malformed envelope: {e}"),
            ProposeError::Unavailable(e) => write!(f, "no leader took the append: {e}"),
            ProposeError::NotLeader { leader: Some(l) } => write!(f, "not the leader (node {l} is)"),
            ProposeError::NotLeader { leader: None } => write!(f, "not the leader (none known)"),
            ProposeError::RateLimited { retry_after_ms } => write!(f, "rate limited, retry after {retry_after_ms} ms"),
        }
    }
}

impl std::error::Error for ProposeError {}

/// A node's settings.
#[derive(Debug, Clone)]
pub struct NodeConfig {
    /// This node's id (never reused by another node).
    pub id: NodeId,
    /// The cluster's id and secret.
    pub key: ClusterKey,
    /// Data groups in the cluster (fixed when the cluster is created).
    pub groups: u64,
    /// openraft's timing and snapshot settings.
    pub raft: openraft::Config,
    /// How long an append waits for a leader before it is refused as unavailable.
    pub propose_timeout: Duration,
}

impl NodeConfig {
    /// Defaults for node `id`: 100 ms heartbeats, elections after 500–1,000 ms of silence, a
    /// snapshot every 10,000 entries (keeping the last 1,000 in the log), 5 s for an append.
    pub fn new(id: NodeId, key: ClusterKey, groups: u64) -> NodeConfig {
        let raft = openraft::Config {
            cluster_name: "theta".into(),
            heartbeat_interval: 100,
            election_timeout_min: 500,
            election_timeout_max: 1_000,
            snapshot_policy: openraft::SnapshotPolicy::LogsSinceLast(10_000),
            max_in_snapshot_log_to_keep: 1_000,
            ..Default::default()
        };
        NodeConfig { id, key, groups, raft, propose_timeout: Duration::from_secs(5) }
    }
}

/// A running cluster node.
pub struct Node {
    config: NodeConfig,
    store: Arc<Store>,
    rafts: BTreeMap<GroupId, Raft<TypeConfig>>,
    links: Arc<Links>,
    /// The append rate per (session, author), taken by the leader before it proposes (the
    /// store's `rate_per_sec` and `rate_burst`; replicas do not check rates).
    rates: std::sync::Mutex<BTreeMap<(SessionId, AuthorKey), TokenBucket>>,
}

/// Rate buckets the leader remembers at once; at the bound, full ones are forgotten.
const MAX_RATE_BUCKETS: usize = 65_536;

/// Outbound connections: the connector, and idle connections per peer for forwarded appends.
struct Links {
    me: NodeId,
    key: ClusterKey,
    connector: Arc<dyn Connector>,
    idle: Mutex<BTreeMap<NodeId, Vec<Conn>>>,
}

impl Links {
    async fn connect(&self, to: NodeId, addr: &str) -> io::Result<Conn> {
        let stream = self.connector.connect(addr).await?;
        Conn::client(stream, &self.key, self.me, to).await
    }

    /// One request and its answer on a pooled connection (a new one when none is idle).
    async fn call(&self, to: NodeId, addr: &str, request: &Request, ttl: Duration) -> io::Result<Response> {
        let pooled = self.idle.lock().await.get_mut(&to).and_then(Vec::pop);
        let exchange = async {
            let mut conn = match pooled {
                Some(c) => c,
                None => self.connect(to, addr).await?,
            };
            conn.send(&encode(request)).await?;
            let answer = conn.recv().await?;
            let response = decode::<Response>(&answer).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            Ok::<_, io::Error>((conn, response))
        };
        let (conn, response) = tokio::time::timeout(ttl, exchange)
            .await
            .map_err(|_| io::Error::new(io::ErrorKind::TimedOut, "raft call timed out"))??;
        let mut idle = self.idle.lock().await;
        let slot = idle.entry(to).or_default();
        if slot.len() < 8 {
            slot.push(conn);
        }
        Ok(response)
    }
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// The session an envelope names (the store checks everything else).
fn session_of(envelope: &[u8]) -> Result<SessionId, ProposeError> {
    let e = Envelope::decode(envelope).map_err(|e| ProposeError::Malformed(e.to_string()))?;
    let body = CommandBody::decode(&e.body).map_err(|e| ProposeError::Malformed(e.to_string()))?;
    Ok(body.session)
}

impl Node {
    /// Starts node `config.id` over `store` with every group's Raft log in `raft_db`.
    pub async fn start(
        config: NodeConfig,
        store: Arc<Store>,
        raft_db: &sled::Db,
        connector: Arc<dyn Connector>,
    ) -> Result<Arc<Node>, String> {
        let raft_config = Arc::new(config.raft.clone().validate().map_err(|e| e.to_string())?);
        let links =
            Arc::new(Links { me: config.id, key: config.key.clone(), connector, idle: Mutex::new(BTreeMap::new()) });
        let mut rafts = BTreeMap::new();
        for group in 1..=config.groups {
            let log = LogStore::open(raft_db, group).map_err(|e| format!("group {group}'s Raft log: {e}"))?;
            let machine = GroupMachine::open(store.clone(), group, config.groups)
                .map_err(|e| format!("group {group}'s state machine: {e}"))?;
            let network = NetworkFactory { group, links: links.clone() };
            let raft = Raft::new(config.id, raft_config.clone(), network, log, machine)
                .await
                .map_err(|e| format!("group {group}: {e}"))?;
            rafts.insert(group, raft);
        }
        Ok(Arc::new(Node { config, store, rafts, links, rates: std::sync::Mutex::new(BTreeMap::new()) }))
    }

    /// This node's id.
    pub fn id(&self) -> NodeId {
        self.config.id
    }

    /// The node's store (every group's sessions, as applied here).
    pub fn store(&self) -> &Arc<Store> {
        &self.store
    }

    /// Group `group`'s Raft on this node.
    pub fn raft(&self, group: GroupId) -> Option<&Raft<TypeConfig>> {
        self.rafts.get(&group)
    }

    /// The data groups and their Rafts.
    pub fn rafts(&self) -> impl Iterator<Item = (GroupId, &Raft<TypeConfig>)> {
        self.rafts.iter().map(|(g, r)| (*g, r))
    }

    /// Creates the cluster: every group starts with `members` as its voters. Calling it on a
    /// node whose groups are already initialized changes nothing.
    pub async fn initialize(&self, members: BTreeMap<NodeId, Member>) -> Result<(), String> {
        for (group, raft) in &self.rafts {
            match raft.initialize(members.clone()).await {
                Ok(()) | Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
                Err(e) => return Err(format!("group {group}: {e}")),
            }
        }
        Ok(())
    }

    /// Orders an append in its session's group: proposed here when this node leads the group,
    /// forwarded to the leader otherwise, retried across elections until
    /// `propose_timeout`. The answer is the leader's apply result, given once a majority holds
    /// the entry durably.
    pub async fn append(&self, envelope: Vec<u8>) -> Result<Applied, ProposeError> {
        let group = group_of(&session_of(&envelope)?, self.config.groups);
        let deadline = tokio::time::Instant::now() + self.config.propose_timeout;
        loop {
            let last = match self.propose_here(group, envelope.clone()).await {
                Ok(applied) => return Ok(applied),
                Err(ProposeError::NotLeader { leader: Some(l) }) if l != self.config.id => {
                    match self.address_of(group, l).await {
                        Some(addr) => {
                            let ttl = deadline.saturating_duration_since(tokio::time::Instant::now());
                            match self.links.call(l, &addr, &Request::Propose(group, envelope.clone()), ttl).await {
                                Ok(Response::Propose(Ok(applied))) => return Ok(applied),
                                Ok(Response::Propose(Err(
                                    e @ (ProposeError::Malformed(_) | ProposeError::RateLimited { .. }),
                                ))) => return Err(e),
                                Ok(Response::Propose(Err(e))) => e.to_string(),
                                Ok(other) => format!("unexpected answer {other:?}"),
                                Err(e) => format!("node {l}: {e}"),
                            }
                        }
                        None => format!("node {l} has no known address"),
                    }
                }
                Err(ProposeError::NotLeader { leader }) => format!("no leader (last known {leader:?})"),
                Err(e) => return Err(e),
            };
            if tokio::time::Instant::now() >= deadline {
                return Err(ProposeError::Unavailable(format!("group {group}: {last}")));
            }
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Proposes as the group's leader; `NotLeader` when this node is not, `RateLimited` when
    /// the author is over the store's rate in the session.
    async fn propose_here(&self, group: GroupId, envelope: Vec<u8>) -> Result<Applied, ProposeError> {
        let raft = self.rafts.get(&group).ok_or_else(|| ProposeError::Unavailable(format!("no group {group}")))?;
        let leader = raft.current_leader().await;
        if leader != Some(self.config.id) {
            return Err(ProposeError::NotLeader { leader });
        }
        // The leader's clock, stamped once: the receipt time on every replica.
        let now = now_ms();
        let (_, body) = Envelope::open(&envelope).map_err(|e| ProposeError::Malformed(e.to_string()))?;
        self.take_rate(body.session, body.author, now)?;
        let proposal = Proposal::Append { envelope, time_ms: now };
        match raft.client_write(proposal).await {
            Ok(r) => Ok(r.data),
            Err(RaftError::APIError(ClientWriteError::ForwardToLeader(f))) => {
                Err(ProposeError::NotLeader { leader: f.leader_id })
            }
            Err(e) => Err(ProposeError::Unavailable(e.to_string())),
        }
    }

    fn take_rate(&self, session: SessionId, author: AuthorKey, now: u64) -> Result<(), ProposeError> {
        let config = self.store.config();
        let (rate, burst) = (config.rate_per_sec, config.rate_burst);
        let mut rates = self.rates.lock().expect("rate lock");
        if rates.len() >= MAX_RATE_BUCKETS && !rates.contains_key(&(session, author)) {
            rates.retain(|_, b| {
                let mut probe = *b;
                probe.take(rate, burst, now).is_err()
            });
        }
        rates
            .entry((session, author))
            .or_insert_with(|| TokenBucket::full(burst, now))
            .take(rate, burst, now)
            .map_err(|retry_after_ms| ProposeError::RateLimited { retry_after_ms })
    }

    async fn address_of(&self, group: GroupId, node: NodeId) -> Option<String> {
        let metrics = self.rafts.get(&group)?.metrics().borrow().clone();
        metrics.membership_config.membership().get_node(&node).map(|m| m.raft_addr.clone())
    }

    /// Serves one inbound connection on the Raft port until it closes.
    pub async fn serve(self: Arc<Self>, stream: Box<dyn Stream>) -> io::Result<()> {
        let (mut conn, _peer) = Conn::server(stream, &self.config.key, self.config.id).await?;
        loop {
            let bytes = match conn.recv().await {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::UnexpectedEof => return Ok(()),
                Err(e) => return Err(e),
            };
            let request = decode::<Request>(&bytes).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))?;
            let response = self.handle(request).await;
            conn.send(&encode(&response)).await?;
        }
    }

    async fn handle(&self, request: Request) -> Response {
        let (group, request) = match request {
            Request::Append(envelope) => return Response::Append(self.append(envelope).await),
            Request::AppendEntries(g, _)
            | Request::Vote(g, _)
            | Request::InstallSnapshot(g, _)
            | Request::Propose(g, _) => (g, request),
        };
        let Some(raft) = self.rafts.get(&group) else { return Response::UnknownGroup(group) };
        match request {
            Request::AppendEntries(_, rpc) => Response::AppendEntries(raft.append_entries(rpc).await),
            Request::Vote(_, rpc) => Response::Vote(raft.vote(rpc).await),
            Request::InstallSnapshot(_, rpc) => Response::InstallSnapshot(raft.install_snapshot(rpc).await),
            // A forwarded append is proposed here or refused; never forwarded again.
            Request::Propose(_, envelope) => Response::Propose(self.propose_here(group, envelope).await),
            Request::Append(_) => unreachable!("answered above"),
        }
    }

    /// Accepts connections on a TCP listener until the task is dropped.
    pub async fn accept_tcp(self: Arc<Self>, listener: tokio::net::TcpListener) {
        loop {
            let Ok((stream, peer)) = listener.accept().await else { continue };
            let _ = stream.set_nodelay(true);
            let node = self.clone();
            tokio::spawn(async move {
                if let Err(e) = node.serve(Box::new(stream)).await {
                    tracing::debug!("raft connection from {peer}: {e}");
                }
            });
        }
    }

    /// Stops every group's Raft.
    pub async fn shutdown(&self) {
        for raft in self.rafts.values() {
            let _ = raft.shutdown().await;
        }
    }
}

/// A client of a node's Raft port (another process of the cluster, or a test): sends appends
/// for the node to order.
pub struct RaftClient {
    conn: Conn,
}

impl RaftClient {
    /// Connects to node `to` at `addr`, as `from` (an id no node has).
    pub async fn connect(
        connector: &dyn Connector,
        key: &ClusterKey,
        from: NodeId,
        to: NodeId,
        addr: &str,
    ) -> io::Result<RaftClient> {
        let stream = connector.connect(addr).await?;
        Ok(RaftClient { conn: Conn::client(stream, key, from, to).await? })
    }

    /// Has the node order `envelope` and waits for the leader's apply result.
    pub async fn append(&mut self, envelope: Vec<u8>) -> io::Result<Result<Applied, ProposeError>> {
        self.conn.send(&encode(&Request::Append(envelope))).await?;
        match decode::<Response>(&self.conn.recv().await?) {
            Ok(Response::Append(r)) => Ok(r),
            Ok(other) => Err(io::Error::new(io::ErrorKind::InvalidData, format!("unexpected answer {other:?}"))),
            Err(e) => Err(io::Error::new(io::ErrorKind::InvalidData, e)),
        }
    }
}

/// Makes a group's connections to its peers.
struct NetworkFactory {
    group: GroupId,
    links: Arc<Links>,
}

impl RaftNetworkFactory<TypeConfig> for NetworkFactory {
    type Network = Peer;

    async fn new_client(&mut self, target: NodeId, node: &Member) -> Peer {
        Peer { group: self.group, target, addr: node.raft_addr.clone(), links: self.links.clone(), conn: None }
    }
}

/// A group's connection to one peer (openraft sends one RPC at a time on it).
struct Peer {
    group: GroupId,
    target: NodeId,
    addr: String,
    links: Arc<Links>,
    conn: Option<Conn>,
}

type RpcResult<T, E = openraft::error::Infallible> = Result<T, RPCError<NodeId, Member, RaftError<NodeId, E>>>;

impl Peer {
    async fn call(&mut self, request: Request, option: &RPCOption, action: RPCTypes) -> Result<Response, RpcError> {
        let ttl = option.hard_ttl();
        let exchange = async {
            if self.conn.is_none() {
                self.conn = Some(self.links.connect(self.target, &self.addr).await?);
            }
            let conn = self.conn.as_mut().expect("connected");
            conn.send(&encode(&request)).await?;
            let answer = conn.recv().await?;
            decode::<Response>(&answer).map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e))
        };
        match tokio::time::timeout(ttl, exchange).await {
            Ok(Ok(Response::UnknownGroup(g))) => {
                Err(RpcError::Network(io::Error::other(format!("node {} runs no group {g}", self.target))))
            }
            Ok(Ok(r)) => Ok(r),
            Ok(Err(e)) => {
                self.conn = None;
                Err(RpcError::Unreachable(e))
            }
            Err(_) => {
                self.conn = None;
                Err(RpcError::Timeout(Timeout { action, id: self.links.me, target: self.target, timeout: ttl }))
            }
        }
    }
}

/// A failed exchange, before it becomes openraft's error of the RPC's type.
enum RpcError {
    Unreachable(io::Error),
    Network(io::Error),
    Timeout(Timeout<NodeId>),
}

impl RpcError {
    fn into_rpc<E: std::error::Error>(self) -> RPCError<NodeId, Member, RaftError<NodeId, E>> {
        match self {
            RpcError::Unreachable(e) => RPCError::Unreachable(Unreachable::new(&e)),
            RpcError::Network(e) => RPCError::Network(NetworkError::new(&e)),
            RpcError::Timeout(t) => RPCError::Timeout(t),
        }
    }
}

fn unexpected<E: std::error::Error>(what: &str) -> RPCError<NodeId, Member, RaftError<NodeId, E>> {
    RPCError::Network(NetworkError::new(&io::Error::other(format!("unexpected answer to {what}"))))
}

impl RaftNetwork<TypeConfig> for Peer {
    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<AppendEntriesResponse<NodeId>> {
        match self.call(Request::AppendEntries(self.group, rpc), &option, RPCTypes::AppendEntries).await {
            Ok(Response::AppendEntries(r)) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            Ok(_) => Err(unexpected("append entries")),
            Err(e) => Err(e.into_rpc()),
        }
    }

    async fn install_snapshot(
        &mut self,
        rpc: InstallSnapshotRequest<TypeConfig>,
        option: RPCOption,
    ) -> RpcResult<InstallSnapshotResponse<NodeId>, InstallSnapshotError> {
        match self.call(Request::InstallSnapshot(self.group, rpc), &option, RPCTypes::InstallSnapshot).await {
            Ok(Response::InstallSnapshot(r)) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            Ok(_) => Err(unexpected("install snapshot")),
            Err(e) => Err(e.into_rpc()),
        }
    }

    async fn vote(&mut self, rpc: VoteRequest<NodeId>, option: RPCOption) -> RpcResult<VoteResponse<NodeId>> {
        match self.call(Request::Vote(self.group, rpc), &option, RPCTypes::Vote).await {
            Ok(Response::Vote(r)) => r.map_err(|e| RPCError::RemoteError(RemoteError::new(self.target, e))),
            Ok(_) => Err(unexpected("vote")),
            Err(e) => Err(e.into_rpc()),
        }
    }
}
