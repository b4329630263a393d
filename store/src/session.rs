//! One session's derived state, the stateful checks, and the effects of an accepted entry.
//!
//! Owned by the committer thread only. Everything here is derived from the log and persisted
//! in the same atomic batch as the entry that changed it, so a reopened store resumes with
//! exactly the state of its last durable entry.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use theta_schemas::{
    AuthorKey, Command, CommandBody, CommandKind, ComponentId, ConflictStrategy, EntityId, LogEntry, Role, SessionId,
};

use crate::backend::{Backend, WriteBatch};
use crate::blocks::{self, STORED_MIN_LEVEL};
use crate::config::StoreConfig;
use crate::error::{AppendError, ConflictReason, ReadError};
use crate::guard::TokenBucket;
use crate::keys;
use crate::merkle::{self, Frontier, Hash};
use theta_schemas::policy;

/// A live entity: its parent and number of children.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct EntityInfo {
    pub parent: EntityId,
    pub children: u32,
}

/// Persisted session header.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub(crate) struct Meta {
    pub head_seq: u64,
    pub last_hash: Hash,
    pub clock: u64,
    pub verified_upto: u64,
    pub trail_next: u64,
    pub name: String,
}

impl Meta {
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(64 + self.name.len());
        v.extend_from_slice(&self.head_seq.to_be_bytes());
        v.extend_from_slice(&self.last_hash);
        v.extend_from_slice(&self.clock.to_be_bytes());
        v.extend_from_slice(&self.verified_upto.to_be_bytes());
        v.extend_from_slice(&self.trail_next.to_be_bytes());
        v.extend_from_slice(self.name.as_bytes());
        v
    }

    pub fn decode(b: &[u8]) -> Option<Meta> {
        if b.len() < 64 {
            return None;
        }
        Some(Meta {
            head_seq: keys::be_u64(b, 0),
            last_hash: b[8..40].try_into().ok()?,
            clock: keys::be_u64(b, 40),
            verified_upto: keys::be_u64(b, 48),
            trail_next: keys::be_u64(b, 56),
            name: String::from_utf8(b[64..].to_vec()).ok()?,
        })
    }
}

/// What an accepted entry produced, for its receipt.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Accepted {
    pub seq: u64,
    pub lamport: u64,
    pub nonce: u64,
    pub entry_hash: Hash,
}

/// One session's state.
#[derive(Debug)]
pub(crate) struct SessionState {
    pub id: SessionId,
    pub meta: Meta,
    pub frontier: Frontier,
    pub members: BTreeMap<AuthorKey, Role>,
    pub policies: BTreeMap<ComponentId, ConflictStrategy>,
    pub lamports: HashMap<AuthorKey, u64>,
    pub versions: HashMap<(EntityId, ComponentId), u64>,
    pub entities: HashMap<EntityId, EntityInfo>,
    pub deleted: HashMap<EntityId, u64>,
    pub buckets: HashMap<AuthorKey, TokenBucket>,
    /// Nonces used by entries of the batch being built (not yet in the backend).
    pub pending_nonces: HashMap<(AuthorKey, u64), u64>,
    /// Encoded entries of the batch being built, from seq `pending_first`.
    pending_entries: Vec<Vec<u8>>,
    pending_first: u64,
    /// Authors and scopes whose persisted Lamport or version must be rewritten at `finish`.
    dirty_lamports: BTreeSet<AuthorKey>,
    dirty_versions: BTreeSet<(EntityId, ComponentId)>,
}

fn conflict(body: &CommandBody, reason: ConflictReason) -> AppendError {
    AppendError::Conflict { entity: body.entity, component: body.component, reason }
}

impl SessionState {
    /// A session about to receive its create-session entry.
    pub fn new(id: SessionId) -> SessionState {
        SessionState {
            id,
            meta: Meta::default(),
            frontier: Frontier::new(),
            members: BTreeMap::new(),
            policies: BTreeMap::new(),
            lamports: HashMap::new(),
            versions: HashMap::new(),
            entities: HashMap::new(),
            deleted: HashMap::new(),
            buckets: HashMap::new(),
            pending_nonces: HashMap::new(),
            pending_entries: Vec::new(),
            pending_first: 0,
            dirty_lamports: BTreeSet::new(),
            dirty_versions: BTreeSet::new(),
        }
    }

    /// Loads a session's state from the backend (no verification; see `open`).
    pub fn load(backend: &dyn Backend, id: SessionId, meta: Meta) -> Result<SessionState, ReadError> {
        let mut s = SessionState::new(id);
        let scan = |tag: u8| {
            let p = keys::prefix(tag, &id);
            backend.range(&p, &keys::prefix_end(&p))
        };
        let skip = 1 + 16;
        for kv in scan(keys::tag::MEMBER) {
            let (k, v) = kv?;
            let key = AuthorKey(k[skip..skip + 32].try_into().expect("member key"));
            let role = Role::ALL.get(usize::from(v[0])).copied().unwrap_or(Role::None);
            s.members.insert(key, role);
        }
        for kv in scan(keys::tag::POLICY) {
            let (k, v) = kv?;
            let strategy =
                ConflictStrategy::ALL.get(usize::from(v[0])).copied().unwrap_or(ConflictStrategy::LastWriteWins);
            s.policies.insert(ComponentId(keys::be_u64(&k, skip)), strategy);
        }
        for kv in scan(keys::tag::LAMPORT) {
            let (k, v) = kv?;
            s.lamports.insert(AuthorKey(k[skip..skip + 32].try_into().expect("author")), keys::be_u64(&v, 0));
        }
        for kv in scan(keys::tag::VERSION) {
            let (k, v) = kv?;
            s.versions.insert((keys::be_u64(&k, skip), ComponentId(keys::be_u64(&k, skip + 8))), keys::be_u64(&v, 0));
        }
        for kv in scan(keys::tag::ENTITY) {
            let (k, v) = kv?;
            s.entities.insert(keys::be_u64(&k, skip), EntityInfo { parent: keys::be_u64(&v, 0), children: 0 });
        }
        let parents: Vec<EntityId> = s.entities.values().map(|e| e.parent).filter(|p| *p != 0).collect();
        for p in parents {
            if let Some(e) = s.entities.get_mut(&p) {
                e.children += 1;
            }
        }
        for kv in scan(keys::tag::DELETED) {
            let (k, v) = kv?;
            s.deleted.insert(keys::be_u64(&k, skip), keys::be_u64(&v, 0));
        }
        s.frontier = Frontier::from_nodes(meta.head_seq, |level, index| blocks::node_at(backend, &id, level, index))?;
        s.meta = meta;
        Ok(s)
    }

    fn role(&self, key: &AuthorKey) -> Role {
        self.members.get(key).copied().unwrap_or(Role::None)
    }

    fn owners(&self) -> usize {
        self.members.values().filter(|r| **r == Role::Owner).count()
    }

    fn depth(&self, mut e: EntityId) -> usize {
        let mut d = 0;
        while e != 0 {
            d += 1;
            e = self.entities.get(&e).map_or(0, |i| i.parent);
        }
        d
    }

    /// Runs the stateful checks in their documented order: role, replay, Lamport, rate,
    /// conflict. `rate` is skipped for trusted imports (`now_ms` = None).
    pub fn check(
        &mut self,
        body: &CommandBody,
        backend: &dyn Backend,
        config: &StoreConfig,
        now_ms: Option<u64>,
    ) -> Result<(), AppendError> {
        let kind = body.command.kind();
        let is_create = kind == CommandKind::CreateSession;
        if is_create {
            if self.meta.head_seq > 0 {
                return Err(AppendError::SessionExists { session: self.id });
            }
        } else {
            let role = self.role(&body.author);
            if !policy::allowed(role, kind) {
                return Err(AppendError::PermissionDenied { author: body.author, role, kind });
            }
        }
        // Replay.
        if let Some(seq) = self.pending_nonces.get(&(body.author, body.nonce)) {
            return Err(AppendError::Replay { author: body.author, nonce: body.nonce, first_seq: *seq });
        }
        if let Some(v) = backend
            .get(&keys::nonce(&self.id, &body.author, body.nonce))
            .map_err(|e| AppendError::Storage(e.to_string()))?
        {
            return Err(AppendError::Replay { author: body.author, nonce: body.nonce, first_seq: keys::be_u64(&v, 0) });
        }
        // Lamport.
        let previous = self.lamports.get(&body.author).copied().unwrap_or(0);
        if body.lamport <= previous {
            return Err(AppendError::LamportRegression { author: body.author, lamport: body.lamport, previous });
        }
        if body.lamport > self.meta.clock.saturating_add(config.max_lamport_skew) {
            return Err(AppendError::LamportSkew {
                lamport: body.lamport,
                clock: self.meta.clock,
                max_skew: config.max_lamport_skew,
            });
        }
        // Rate.
        if let Some(now_ms) = now_ms {
            let bucket =
                self.buckets.entry(body.author).or_insert_with(|| TokenBucket::full(config.rate_burst, now_ms));
            bucket
                .take(config.rate_per_sec, config.rate_burst, now_ms)
                .map_err(|retry_after_ms| AppendError::RateLimited { author: body.author, retry_after_ms })?;
        }
        self.check_conflict(body, config)
    }

    fn check_conflict(&self, body: &CommandBody, config: &StoreConfig) -> Result<(), AppendError> {
        let kind = body.command.kind();
        match &body.command {
            Command::CreateSession { .. } | Command::SetConflictPolicy { .. } => return Ok(()),
            Command::GrantRole { key, role } => {
                if self.role(key) == Role::Owner && *role != Role::Owner && self.owners() == 1 {
                    return Err(conflict(body, ConflictReason::LastOwner));
                }
                return Ok(());
            }
            Command::RevokeRole { key } => {
                if self.role(key) == Role::Owner && self.owners() == 1 {
                    return Err(conflict(body, ConflictReason::LastOwner));
                }
                return Ok(());
            }
            Command::CreateEntity { parent, .. } => {
                if self.entities.contains_key(&body.entity) {
                    return Err(conflict(body, ConflictReason::EntityExists));
                }
                if let Some(at) = self.deleted.get(&body.entity) {
                    return Err(conflict(body, ConflictReason::EntityDeleted { deleted_at: *at }));
                }
                self.check_parent(body, *parent, config)?;
            }
            _ => {
                if !self.entities.contains_key(&body.entity) {
                    return Err(conflict(
                        body,
                        match self.deleted.get(&body.entity) {
                            Some(at) => ConflictReason::EntityDeleted { deleted_at: *at },
                            None => ConflictReason::EntityMissing,
                        },
                    ));
                }
            }
        }
        let strategy = self.policies.get(&body.component).copied().unwrap_or_else(|| policy::default_strategy(kind));
        if strategy == ConflictStrategy::Reject {
            let current = self.versions.get(&(body.entity, body.component)).copied().unwrap_or(0);
            if body.base_version != current {
                return Err(conflict(body, ConflictReason::StaleVersion { base: body.base_version, current }));
            }
        }
        match &body.command {
            Command::DeleteEntity => {
                let children = self.entities[&body.entity].children;
                if children > 0 {
                    return Err(conflict(body, ConflictReason::HasChildren { children }));
                }
            }
            Command::Reparent { parent } => {
                self.check_parent(body, *parent, config)?;
                let mut e = *parent;
                while e != 0 {
                    if e == body.entity {
                        return Err(conflict(body, ConflictReason::WouldCycle { parent: *parent }));
                    }
                    e = self.entities.get(&e).map_or(0, |i| i.parent);
                }
            }
            _ => {}
        }
        Ok(())
    }

    fn check_parent(&self, body: &CommandBody, parent: EntityId, config: &StoreConfig) -> Result<(), AppendError> {
        if parent == 0 {
            return Ok(());
        }
        if !self.entities.contains_key(&parent) {
            return Err(conflict(body, ConflictReason::ParentMissing { parent }));
        }
        if self.depth(parent) + 1 > config.max_hierarchy_depth {
            return Err(conflict(body, ConflictReason::TooDeep { max: config.max_hierarchy_depth }));
        }
        Ok(())
    }

    /// Appends an accepted command: assigns its seq, hashes it into the chain and the tree,
    /// updates the derived state, and puts every write into `batch`.
    pub fn apply(
        &mut self,
        body: &CommandBody,
        envelope: Vec<u8>,
        receipt_time_ms: u64,
        batch: &mut WriteBatch,
    ) -> (Accepted, LogEntry) {
        let id = self.id;
        let seq = self.meta.head_seq + 1;
        let entry_hash = merkle::entry_hash(&id, seq, receipt_time_ms, &self.meta.last_hash, &envelope);
        let entry = LogEntry { seq, envelope, prev_hash: self.meta.last_hash, entry_hash, receipt_time_ms };
        if self.pending_entries.is_empty() {
            self.pending_first = seq;
        }
        self.pending_entries.push(entry.encode());
        self.frontier.push(merkle::leaf_hash(&entry_hash), |level, index, h| {
            if level >= STORED_MIN_LEVEL {
                batch.put(keys::node(&id, level, index), h.to_vec());
            }
        });
        assert_eq!(self.frontier.size(), seq, "tree size equals the head seq");
        batch.put(keys::by_author(&id, &body.author, seq), Vec::new());
        if body.entity != 0 {
            batch.put(keys::by_entity(&id, body.entity, seq), Vec::new());
        }
        batch.put(keys::nonce(&id, &body.author, body.nonce), seq.to_be_bytes().to_vec());
        self.pending_nonces.insert((body.author, body.nonce), seq);
        self.lamports.insert(body.author, body.lamport);
        self.dirty_lamports.insert(body.author);
        self.meta.clock = self.meta.clock.max(body.lamport);
        self.meta.head_seq = seq;
        self.meta.last_hash = entry_hash;

        let mut member = |members: &mut BTreeMap<AuthorKey, Role>, key: AuthorKey, role: Role| {
            if role == Role::None {
                members.remove(&key);
                batch.delete(keys::member(&id, &key));
            } else {
                members.insert(key, role);
                let mut v = vec![role as u8];
                v.extend_from_slice(&seq.to_be_bytes());
                batch.put(keys::member(&id, &key), v);
            }
        };
        match &body.command {
            Command::CreateSession { name } => {
                self.meta.name = name.clone();
                member(&mut self.members, body.author, Role::Owner);
            }
            Command::GrantRole { key, role } => member(&mut self.members, *key, *role),
            Command::RevokeRole { key } => member(&mut self.members, *key, Role::None),
            Command::SetConflictPolicy { component, strategy } => {
                self.policies.insert(*component, *strategy);
                batch.put(keys::policy(&id, *component), vec![*strategy as u8]);
            }
            Command::CreateEntity { parent, .. } => {
                self.entities.insert(body.entity, EntityInfo { parent: *parent, children: 0 });
                if *parent != 0 {
                    self.entities.get_mut(parent).expect("checked parent").children += 1;
                }
                batch.put(keys::entity(&id, body.entity), parent.to_be_bytes().to_vec());
            }
            Command::DeleteEntity => {
                let info = self.entities.remove(&body.entity).expect("checked entity");
                assert_eq!(info.children, 0, "deleted entities have no children");
                if info.parent != 0 {
                    self.entities.get_mut(&info.parent).expect("parent of live entity").children -= 1;
                }
                self.deleted.insert(body.entity, seq);
                batch.delete(keys::entity(&id, body.entity));
                batch.put(keys::deleted(&id, body.entity), seq.to_be_bytes().to_vec());
            }
            Command::Reparent { parent } => {
                let old = self.entities[&body.entity].parent;
                if old != 0 {
                    self.entities.get_mut(&old).expect("old parent").children -= 1;
                }
                if *parent != 0 {
                    self.entities.get_mut(parent).expect("checked parent").children += 1;
                }
                self.entities.get_mut(&body.entity).expect("checked entity").parent = *parent;
                batch.put(keys::entity(&id, body.entity), parent.to_be_bytes().to_vec());
            }
            _ => {}
        }
        if body.entity != 0 {
            let mut bump = |scope: (EntityId, ComponentId)| {
                *self.versions.entry(scope).or_insert(0) += 1;
                self.dirty_versions.insert(scope);
            };
            bump((body.entity, ComponentId::NONE));
            if body.component != ComponentId::NONE {
                bump((body.entity, body.component));
            }
        }
        (Accepted { seq, lamport: body.lamport, nonce: body.nonce, entry_hash }, entry)
    }

    /// Ends the batch being built: writes the pending entries as blocks of at most
    /// `max_block_bytes`, the changed Lamport timestamps and scope versions, and the header.
    pub fn finish(&mut self, batch: &mut WriteBatch, max_block_bytes: usize) {
        let id = self.id;
        let mut first = self.pending_first;
        let mut block: Vec<Vec<u8>> = Vec::new();
        let mut size = 0;
        for e in std::mem::take(&mut self.pending_entries) {
            if !block.is_empty() && size + e.len() + 4 > max_block_bytes {
                let n = block.len() as u64;
                batch.put(keys::entry(&id, first), blocks::encode(&block));
                first += n;
                block.clear();
                size = 0;
            }
            size += e.len() + 4;
            block.push(e);
        }
        if !block.is_empty() {
            batch.put(keys::entry(&id, first), blocks::encode(&block));
        }
        for a in std::mem::take(&mut self.dirty_lamports) {
            batch.put(keys::lamport(&id, &a), self.lamports[&a].to_be_bytes().to_vec());
        }
        for scope in std::mem::take(&mut self.dirty_versions) {
            batch.put(keys::version(&id, scope.0, scope.1), self.versions[&scope].to_be_bytes().to_vec());
        }
        self.pending_nonces.clear();
        batch.put(keys::meta(&id), self.meta.encode());
    }
}
