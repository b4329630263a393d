//! One session's derived state, the stateful checks, and the effects of an accepted entry.
//!
//! Owned by the committer thread only. Everything here is derived from the log. The checks
//! run from memory; the acknowledgement path writes the log blocks, the Merkle nodes and the
//! session header, plus the rare membership and policy changes. The rest of the state
//! (Lamport values, scope versions, entities, tombstones, the replay window) is written as one
//! state checkpoint every `state_checkpoint_every_entries` entries, in the same atomic batch as
//! the entry it reflects; a reopened store loads the newest one and folds the log after it, so
//! it resumes with exactly the state of its last durable entry.

use std::collections::{BTreeMap, HashMap, VecDeque};

use theta_schemas::{
    AuthorKey, Command, CommandBody, CommandKind, ComponentId, ConflictStrategy, EntityId, LogEntry, Role, SessionId,
};

use crate::backend::{Backend, WriteBatch};
use crate::blocks;
use crate::config::StoreConfig;
use crate::error::{AppendError, ConflictReason, ReadError};
use crate::guard::TokenBucket;
use crate::keys;
use crate::keys::Reader;
use crate::merkle::{self, Frontier, Hash};
use theta_schemas::policy;

/// Blocks in one group from which their compression is spread over the cores.
const PARALLEL_BLOCKS: usize = 4;

/// Compresses blocks (first seq, entries), on every core when there are many.
pub(crate) fn compress_blocks(blocks: &[(u64, &[Vec<u8>])]) -> Vec<(u64, Vec<u8>)> {
    let one = |(first, entries): &(u64, &[Vec<u8>])| (*first, blocks::encode(entries));
    let threads = if blocks.len() >= PARALLEL_BLOCKS { crate::cores().min(blocks.len()) } else { 1 };
    crate::par_map(blocks, threads, one)
}

/// A live entity: its parent and number of children.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct EntityInfo {
    pub parent: EntityId,
    pub children: u32,
}

/// Version of the state checkpoint's encoding.
const STATE_FORMAT: u8 = 1;

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

/// Accepted entries whose (author, nonce) each session remembers for the replay check.
pub(crate) const REPLAY_WINDOW: usize = 4_096;

/// The (author, nonce) pairs of a session's last [`REPLAY_WINDOW`] entries, with their seqs.
/// An envelope naming one of them is a replay (answered with the seq that used it); any older
/// envelope fails the Lamport rule, which is what makes a replay impossible for good.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub(crate) struct RecentNonces {
    order: VecDeque<(AuthorKey, u64, u64)>,
    seqs: HashMap<NonceKey, u64>,
}

/// An (author, nonce) pair keyed by one 64-bit word (the nonce mixed with the key's first
/// bytes): a fifth of the hashing of the whole pair on every append. Pairs that share the word
/// share a bucket and are told apart by equality; the window bounds any bucket to 4,096.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct NonceKey(AuthorKey, u64);

impl std::hash::Hash for NonceKey {
    fn hash<H: std::hash::Hasher>(&self, h: &mut H) {
        h.write_u64(self.1 ^ u64::from_le_bytes(self.0.0[..8].try_into().expect("8 bytes")));
    }
}

impl RecentNonces {
    pub fn get(&self, author: &AuthorKey, nonce: u64) -> Option<u64> {
        self.seqs.get(&NonceKey(*author, nonce)).copied()
    }

    pub fn push(&mut self, author: AuthorKey, nonce: u64, seq: u64) {
        if self.order.len() == REPLAY_WINDOW
            && let Some((a, n, _)) = self.order.pop_front()
        {
            self.seqs.remove(&NonceKey(a, n));
        }
        self.order.push_back((author, nonce, seq));
        self.seqs.insert(NonceKey(author, nonce), seq);
    }

    /// Oldest first.
    pub fn iter(&self) -> impl Iterator<Item = &(AuthorKey, u64, u64)> {
        self.order.iter()
    }
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
    /// The replay window.
    pub recent: RecentNonces,
    /// The seq of the newest state checkpoint (0: none yet).
    pub checkpointed: u64,
    /// Encoded entries of the batch being built, from seq `pending_first`.
    pending_entries: Vec<Vec<u8>>,
    pending_first: u64,
    /// The Merkle nodes of the incomplete last 256 leaves, stored as a page once complete.
    page: Box<blocks::NodePage>,
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
            recent: RecentNonces::default(),
            checkpointed: 0,
            pending_entries: Vec::new(),
            pending_first: 0,
            page: Box::new([[0; 32]; blocks::PAGE_NODES]),
        }
    }

    /// Loads a session's state from the backend: memberships and policies from their keys, the
    /// newest state checkpoint, then the log after it folded in (no verification; see `open`).
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
        let corrupt = |seq: u64, detail: String| ReadError::Corrupted { session: id, seq, detail };
        if let Some(raw) = backend.get(&keys::state(&id))? {
            let seq = s.restore(&raw).ok_or_else(|| corrupt(meta.head_seq, "state checkpoint unreadable".into()))?;
            if seq > meta.head_seq {
                return Err(corrupt(seq, format!("state checkpoint at {seq} beyond the head {}", meta.head_seq)));
            }
            s.checkpointed = seq;
        }
        for e in blocks::Cursor::new(backend, &id, s.checkpointed + 1, meta.head_seq)? {
            let e = e?;
            let (_, body) = theta_schemas::Envelope::open(&e.envelope)
                .map_err(|err| corrupt(e.seq, format!("envelope does not decode: {err}")))?;
            s.effects(&body, e.seq, None);
        }
        s.frontier =
            Frontier::from_nodes(meta.head_seq, |level, index| blocks::node_at(backend, &id, level, index, None))?;
        *s.page = blocks::tail_page(backend, &id, meta.head_seq)?;
        s.meta = meta;
        Ok(s)
    }

    /// The state checkpoint: what `load` cannot get from keys, as of the head.
    fn checkpoint(&self) -> Vec<u8> {
        let mut w = Vec::with_capacity(
            64 + self.lamports.len() * 40 + self.versions.len() * 24 + self.entities.len() * 16 + REPLAY_WINDOW * 48,
        );
        let u64s = |w: &mut Vec<u8>, xs: &[u64]| xs.iter().for_each(|x| w.extend_from_slice(&x.to_le_bytes()));
        w.push(STATE_FORMAT);
        u64s(&mut w, &[self.meta.head_seq]);
        let mut lamports: Vec<_> = self.lamports.iter().collect();
        lamports.sort_unstable();
        u64s(&mut w, &[lamports.len() as u64]);
        for (a, l) in lamports {
            w.extend_from_slice(&a.0);
            u64s(&mut w, &[*l]);
        }
        let mut versions: Vec<_> = self.versions.iter().collect();
        versions.sort_unstable();
        u64s(&mut w, &[versions.len() as u64]);
        for ((e, c), v) in versions {
            u64s(&mut w, &[*e, c.0, *v]);
        }
        let mut entities: Vec<_> = self.entities.iter().collect();
        entities.sort_unstable_by_key(|(e, _)| **e);
        u64s(&mut w, &[entities.len() as u64]);
        for (e, info) in entities {
            u64s(&mut w, &[*e, info.parent]);
        }
        let mut deleted: Vec<_> = self.deleted.iter().collect();
        deleted.sort_unstable();
        u64s(&mut w, &[deleted.len() as u64]);
        for (e, seq) in deleted {
            u64s(&mut w, &[*e, *seq]);
        }
        u64s(&mut w, &[self.recent.order.len() as u64]);
        for (a, n, seq) in self.recent.iter() {
            w.extend_from_slice(&a.0);
            u64s(&mut w, &[*n, *seq]);
        }
        blocks::compress(&w)
    }

    /// Loads a state checkpoint; returns the seq it reflects (`None`: unreadable).
    fn restore(&mut self, raw: &[u8]) -> Option<u64> {
        let plain = zstd::stream::decode_all(raw).ok()?;
        let mut r = Reader(&plain);
        if r.take(1)?[0] != STATE_FORMAT {
            return None;
        }
        let seq = r.u64()?;
        for _ in 0..r.count(40)? {
            let a = AuthorKey(r.take(32)?.try_into().ok()?);
            self.lamports.insert(a, r.u64()?);
        }
        for _ in 0..r.count(24)? {
            let (e, c, v) = (r.u64()?, ComponentId(r.u64()?), r.u64()?);
            self.versions.insert((e, c), v);
        }
        for _ in 0..r.count(16)? {
            let (e, parent) = (r.u64()?, r.u64()?);
            self.entities.insert(e, EntityInfo { parent, children: 0 });
        }
        let parents: Vec<EntityId> = self.entities.values().map(|e| e.parent).filter(|p| *p != 0).collect();
        for p in parents {
            self.entities.get_mut(&p)?.children += 1;
        }
        for _ in 0..r.count(16)? {
            let (e, at) = (r.u64()?, r.u64()?);
            self.deleted.insert(e, at);
        }
        for _ in 0..r.count(48)? {
            let a = AuthorKey(r.take(32)?.try_into().ok()?);
            let (n, at) = (r.u64()?, r.u64()?);
            self.recent.push(a, n, at);
        }
        r.0.is_empty().then_some(seq)
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
    pub fn check(&mut self, body: &CommandBody, config: &StoreConfig, now_ms: Option<u64>) -> Result<(), AppendError> {
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
        if let Some(first_seq) = self.recent.get(&body.author, body.nonce) {
            return Err(AppendError::Replay { author: body.author, nonce: body.nonce, first_seq });
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
    /// updates the derived state, and puts the writes of the acknowledgement path into `batch`.
    pub fn apply(
        &mut self,
        body: &CommandBody,
        envelope: Vec<u8>,
        receipt_time_ms: u64,
        batch: &mut WriteBatch,
    ) -> (Accepted, LogEntry) {
        let seq = self.meta.head_seq + 1;
        let entry_hash = merkle::entry_hash(&self.id, seq, receipt_time_ms, &self.meta.last_hash, &envelope);
        self.apply_hashed(body, envelope, receipt_time_ms, entry_hash, None, batch)
    }

    /// [`SessionState::apply`] with the entry hash already computed (and checked) by the
    /// caller: `entry_hash(session, head + 1, receipt_time_ms, last hash, envelope)`; and, when
    /// given, the entry's encoding and Merkle leaf hash too.
    pub fn apply_hashed(
        &mut self,
        body: &CommandBody,
        envelope: Vec<u8>,
        receipt_time_ms: u64,
        entry_hash: Hash,
        encoded: Option<(Vec<u8>, Hash)>,
        batch: &mut WriteBatch,
    ) -> (Accepted, LogEntry) {
        let id = self.id;
        let seq = self.meta.head_seq + 1;
        let entry = LogEntry { seq, envelope, prev_hash: self.meta.last_hash, entry_hash, receipt_time_ms };
        if self.pending_entries.is_empty() {
            self.pending_first = seq;
        }
        let (bytes, leaf) = encoded.unwrap_or_else(|| (entry.encode(), merkle::leaf_hash(&entry_hash)));
        self.pending_entries.push(bytes);
        let page = &mut self.page;
        self.frontier.push(leaf, |level, index, h| {
            if level > blocks::PAGE_LEVEL {
                batch.put(keys::node(&id, level, index), h.to_vec());
            } else if let Some(p) = blocks::fill_page(page, level, index, h) {
                batch.put(keys::node_page(&id, p), blocks::encode_page(page));
            }
        });
        assert_eq!(self.frontier.size(), seq, "tree size equals the head seq");
        self.meta.head_seq = seq;
        self.meta.last_hash = entry_hash;
        self.effects(body, seq, Some(batch));
        (Accepted { seq, lamport: body.lamport, nonce: body.nonce, entry_hash }, entry)
    }

    /// The effects of the accepted entry `seq` on the derived state (and, with a batch, the
    /// membership and policy keys it changes). Folding the log after a state checkpoint runs
    /// exactly this, so a reopened session has the state it had.
    pub fn effects(&mut self, body: &CommandBody, seq: u64, mut batch: Option<&mut WriteBatch>) {
        let id = self.id;
        self.recent.push(body.author, body.nonce, seq);
        self.lamports.insert(body.author, body.lamport);
        self.meta.clock = self.meta.clock.max(body.lamport);
        let mut member = |members: &mut BTreeMap<AuthorKey, Role>, key: AuthorKey, role: Role| {
            if role == Role::None {
                members.remove(&key);
                if let Some(b) = batch.as_deref_mut() {
                    b.delete(keys::member(&id, &key));
                }
            } else {
                members.insert(key, role);
                if let Some(b) = batch.as_deref_mut() {
                    let mut v = vec![role as u8];
                    v.extend_from_slice(&seq.to_be_bytes());
                    b.put(keys::member(&id, &key), v);
                }
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
                if let Some(b) = &mut batch {
                    b.put(keys::policy(&id, *component), vec![*strategy as u8]);
                }
            }
            // Checked before apply; folding a stored log (which verification checks after
            // loading) must not panic on a damaged one, so missing relatives are skipped.
            Command::CreateEntity { parent, .. } => {
                self.entities.insert(body.entity, EntityInfo { parent: *parent, children: 0 });
                if let Some(p) = self.entities.get_mut(parent).filter(|_| *parent != 0) {
                    p.children += 1;
                }
            }
            Command::DeleteEntity => {
                if let Some(info) = self.entities.remove(&body.entity)
                    && let Some(p) = self.entities.get_mut(&info.parent)
                {
                    p.children = p.children.saturating_sub(1);
                }
                self.deleted.insert(body.entity, seq);
            }
            Command::Reparent { parent } => {
                let old = self.entities.get(&body.entity).map_or(0, |i| i.parent);
                if let Some(p) = self.entities.get_mut(&old) {
                    p.children = p.children.saturating_sub(1);
                }
                if let Some(p) = self.entities.get_mut(parent) {
                    p.children += 1;
                }
                if let Some(e) = self.entities.get_mut(&body.entity) {
                    e.parent = *parent;
                }
            }
            _ => {}
        }
        if body.entity != 0 {
            *self.versions.entry((body.entity, ComponentId::NONE)).or_insert(0) += 1;
            if body.component != ComponentId::NONE {
                *self.versions.entry((body.entity, body.component)).or_insert(0) += 1;
            }
        }
    }

    /// Ends the batch being built: writes the pending entries as compressed blocks of at most
    /// `max_block_bytes` (before compression), a state checkpoint when one is due (or `force`d),
    /// and the header.
    pub fn finish(&mut self, batch: &mut WriteBatch, config: &StoreConfig, force_checkpoint: bool) {
        self.finish_with(batch, config, force_checkpoint, None)
    }

    /// [`SessionState::finish`], taking the group's blocks already compressed when they are
    /// exactly its pending entries (`(first seq, entries, stored block)` from
    /// [`crate::blocks::layout`] over the same entries: an import chunk prepared by a worker).
    pub fn finish_with(
        &mut self,
        batch: &mut WriteBatch,
        config: &StoreConfig,
        force_checkpoint: bool,
        compressed: Option<Vec<(u64, usize, Vec<u8>)>>,
    ) {
        let id = self.id;
        let pending = std::mem::take(&mut self.pending_entries);
        let matches = compressed.as_ref().is_some_and(|c| {
            c.first().is_some_and(|b| b.0 == self.pending_first)
                && c.iter().map(|b| b.1).sum::<usize>() == pending.len()
        });
        let stored: Vec<(u64, Vec<u8>)> = match compressed {
            Some(c) if matches => c.into_iter().map(|(first, _, bytes)| (first, bytes)).collect(),
            _ => {
                let blocks: Vec<(u64, &[Vec<u8>])> = blocks::layout(&pending, config.max_block_bytes)
                    .into_iter()
                    .map(|r| (self.pending_first + r.start as u64, &pending[r]))
                    .collect();
                compress_blocks(&blocks)
            }
        };
        for (first, bytes) in stored {
            batch.put(keys::entry(&id, first), bytes);
        }
        if self.meta.head_seq - self.checkpointed >= config.state_checkpoint_every_entries.max(1) || force_checkpoint {
            self.save_state(batch);
        }
        batch.put(keys::meta(&id), self.meta.encode());
    }

    /// Puts a state checkpoint at the head into `batch`, unless the newest one is there.
    pub fn save_state(&mut self, batch: &mut WriteBatch) {
        if self.meta.head_seq > self.checkpointed {
            batch.put(keys::state(&self.id), self.checkpoint());
            self.checkpointed = self.meta.head_seq;
        }
    }
}
