//! The projection: a session's world folded from its log, held in flecs.
//!
//! [`Projection::apply_entry`] is the fold. It is pure: no I/O, no clock, no randomness; the
//! same entries give the same world and the same [`state hash`](crate::hash) on every machine.
//! Entities are keyed by Theta's stable entity ids; flecs ids stay inside.

use std::collections::{BTreeMap, BTreeSet};

use flecs_ecs::prelude::*;
use theta_schemas::components::{Mesh, Name, Parent, Primitive, QuantizedTransform, Selection, ToolState, Transform};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::policy::default_strategy;
use theta_schemas::{
    AuthorKey, Command, CommandBody, CommandKind, ComponentId, ConflictStrategy, DecodeError, EntityId, Envelope,
    LogEntry, SessionId,
};

use crate::delta::Tracker;
use crate::fast::IdMap;
use crate::hash::{Adjust, Hash, StateHash, item_hash};
use crate::slots::{Slots, slot};
use crate::spatial::{SpatialIndex, compose, world_of};
use crate::values::Value;

/// A last-write-wins stamp: (Lamport, author key), compared lexicographically.
pub type Stamp = (u64, AuthorKey);

/// Why an entry could not be folded. Entries accepted by a store never produce these; they
/// mean the entries did not come from a valid log (or the projection is a mirror).
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum FoldError {
    /// The entry's seq is not the next one.
    #[error("expected seq {expected}, got {got}")]
    OutOfOrder {
        /// The next seq.
        expected: u64,
        /// The entry's seq.
        got: u64,
    },
    /// The envelope, body or component bytes do not decode.
    #[error("entry {seq} does not decode: {source}")]
    Decode {
        /// The entry.
        seq: u64,
        /// Why.
        #[source]
        source: DecodeError,
    },
    /// The entry belongs to another session.
    #[error("entry {seq} belongs to session {session}")]
    WrongSession {
        /// The entry.
        seq: u64,
        /// Its session.
        session: SessionId,
    },
    /// The command contradicts the world (entity missing or existing, parent missing, a
    /// cycle, children left): a store would have rejected it.
    #[error("entry {seq} violates a log invariant on entity {entity}: {what}")]
    Invariant {
        /// The entry.
        seq: u64,
        /// The entity.
        entity: EntityId,
        /// What is violated.
        what: &'static str,
    },
}

/// Per-entity bookkeeping beside the flecs entity.
#[derive(Debug, Clone)]
pub(crate) struct Record {
    pub flecs: Entity,
    /// Item hash of every present component.
    pub items: Slots<Hash>,
    /// Last-write-wins stamps, kept after removal (tombstones).
    pub stamps: Slots<Stamp>,
    /// Per-author selection registers: (Lamport, selected).
    pub selection: BTreeMap<AuthorKey, (u64, bool)>,
    pub parent: EntityId,
    pub children: BTreeSet<EntityId>,
    /// The local Transform (a copy of the flecs value, read on every spatial update).
    pub local: Transform,
}

/// A session's world at some seq.
pub struct Projection {
    session: SessionId,
    seq: u64,
    world: World,
    pub(crate) entities: IdMap<EntityId, Record>,
    pub(crate) policies: BTreeMap<ComponentId, ConflictStrategy>,
    hash: StateHash,
    pub(crate) tracker: Tracker,
    pub(crate) spatial: SpatialIndex,
    /// Reused for canonical bytes on the fold's hot path.
    fbb: flatbuffers::FlatBufferBuilder<'static>,
    /// Replay mode: no delta tracking and no spatial upkeep until [`Projection::end_replay`].
    replaying: bool,
    /// Kept once asked for: what a compact stream's viewer holds hashes to.
    compact: Option<CompactHash>,
}

impl CompactHash {
    /// Entity `e`'s transform is now `t`, whose exact item is `item`.
    fn set(&mut self, e: EntityId, t: &Transform, item: &Hash, fbb: &mut flatbuffers::FlatBufferBuilder<'static>) {
        self.remove(e);
        let shown = QuantizedTransform::round_trip(t);
        if shown == *t {
            return;
        }
        let shown_item = item_hash(e, Transform::id(), Value::Transform(shown).write(fbb));
        let diff = Adjust::between(item, &shown_item);
        self.adjust.add(&diff);
        self.per_entity.insert(e, diff);
    }

    fn remove(&mut self, e: EntityId) {
        if let Some(diff) = self.per_entity.remove(&e) {
            self.adjust.sub(&diff);
        }
    }
}

/// The state hash of the world a compact delta stream's viewer holds, where every transform is
/// [`QuantizedTransform::round_trip`] of the server's: the state hash's lanes plus, per entity
/// with a transform, the difference between its round-tripped item and its exact item.
#[derive(Debug, Default)]
struct CompactHash {
    adjust: Adjust,
    per_entity: IdMap<EntityId, Adjust>,
}

impl std::fmt::Debug for Projection {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Projection")
            .field("session", &self.session)
            .field("seq", &self.seq)
            .field("entities", &self.entities.len())
            .field("state_hash", &hex::encode(self.state_hash()))
            .finish()
    }
}

fn existence(entity: EntityId) -> Hash {
    item_hash(entity, ComponentId::NONE, &[])
}

/// Sorts and dedups triangles and drops those naming missing vertices: the canonical mesh.
pub(crate) fn canonical_mesh(mut mesh: Mesh) -> Mesh {
    let n = mesh.positions.len() as u32;
    let mut faces: Vec<[u32; 3]> =
        mesh.indices.chunks_exact(3).map(|t| [t[0], t[1], t[2]]).filter(|t| t.iter().all(|i| *i < n)).collect();
    faces.sort_unstable();
    faces.dedup();
    mesh.indices = faces.into_iter().flatten().collect();
    mesh
}

impl Projection {
    /// The empty projection of a session (seq 0).
    pub fn new(session: SessionId) -> Projection {
        Projection {
            session,
            seq: 0,
            world: World::new(),
            entities: IdMap::default(),
            policies: BTreeMap::new(),
            hash: StateHash::default(),
            tracker: Tracker::default(),
            spatial: SpatialIndex::default(),
            fbb: flatbuffers::FlatBufferBuilder::with_capacity(256),
            replaying: false,
            compact: None,
        }
    }

    /// Enters replay mode for a long fold (opening at a seq, rebuilding from a checkpoint):
    /// deltas are not tracked and the spatial index is not maintained, which makes the fold
    /// faster. [`Projection::end_replay`] rebuilds the index and starts a fresh delta window.
    pub fn begin_replay(&mut self) {
        self.replaying = true;
    }

    /// Whether the projection is in replay mode.
    pub fn is_replaying(&self) -> bool {
        self.replaying
    }

    /// Leaves replay mode (see [`Projection::begin_replay`]).
    pub fn end_replay(&mut self) {
        if self.replaying {
            self.replaying = false;
            self.rebuild_spatial();
            self.reset_tracker();
        }
    }

    /// The session.
    pub fn session(&self) -> SessionId {
        self.session
    }

    /// The seq of the last folded entry (0 when empty).
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub(crate) fn set_seq(&mut self, seq: u64) {
        self.seq = seq;
    }

    /// Starts a new delta window at the current seq, forgetting what was touched.
    pub(crate) fn reset_tracker(&mut self) {
        self.tracker = Tracker::starting_at(self.seq);
    }

    /// The state hash.
    pub fn state_hash(&self) -> Hash {
        self.hash.digest()
    }

    /// The state hash of the world a compact delta stream's viewer holds (every transform
    /// quantized and back, [`QuantizedTransform::round_trip`]). The first call walks every
    /// transform; from then on it is kept up to date as values change.
    pub fn compact_state_hash(&mut self) -> Hash {
        if self.compact.is_none() {
            let mut compact = CompactHash::default();
            for (e, r) in self.entities.iter() {
                if let Some(item) = r.items.get(&Transform::id()) {
                    compact.set(*e, &r.local, item, &mut self.fbb);
                }
            }
            self.compact = Some(compact);
        }
        let adjust = self.compact.as_ref().map(|c| c.adjust).unwrap_or_default();
        self.hash.digest_adjusted(&adjust)
    }

    /// Replaces every transform with [`QuantizedTransform::round_trip`] of itself: a compact
    /// stream's viewer does this to the snapshot it was sent (checked against the exact state
    /// hash) before it follows the stream's deltas.
    pub fn round_trip_transforms(&mut self) {
        let moved: Vec<(EntityId, Transform)> = self
            .entities
            .iter()
            .filter(|(_, r)| r.items.get(&Transform::id()).is_some())
            .map(|(e, r)| (*e, QuantizedTransform::round_trip(&r.local)))
            .filter(|(e, t)| *t != self.entities[e].local)
            .collect();
        for (e, t) in &moved {
            self.set_value(*e, Value::Transform(*t));
        }
        for (e, _) in moved {
            self.update_spatial(e);
        }
        self.reset_tracker();
    }

    /// Number of (entity, component) items plus entities.
    pub fn item_count(&self) -> u64 {
        self.hash.items()
    }

    /// Number of live entities.
    pub fn entity_count(&self) -> usize {
        self.entities.len()
    }

    /// Live entity ids, in ascending order.
    pub fn entities(&self) -> impl Iterator<Item = EntityId> + use<> {
        let mut ids: Vec<EntityId> = self.entities.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter()
    }

    /// Whether an entity is live.
    pub fn contains(&self, entity: EntityId) -> bool {
        self.entities.contains_key(&entity)
    }

    /// The components present on an entity, in id order.
    pub fn components(&self, entity: EntityId) -> Vec<ComponentId> {
        self.entities.get(&entity).map(|r| r.items.keys().collect()).unwrap_or_default()
    }

    /// One component value.
    pub fn get(&self, entity: EntityId, component: ComponentId) -> Option<Value> {
        let r = self.entities.get(&entity)?;
        if !r.items.contains_key(&component) {
            return None;
        }
        Value::get_from(self.world.entity_from_id(r.flecs), component)
    }

    /// The newest write to an entity (by Lamport, then author): who edited it last. `None` for
    /// an entity that is not live.
    pub fn last_edit(&self, entity: EntityId) -> Option<Stamp> {
        self.entities.get(&entity)?.stamps.values().max().copied()
    }

    /// The flecs world (restoring checkpoints defers its writes).
    pub(crate) fn world(&self) -> &World {
        &self.world
    }

    /// The conflict policy overrides folded so far.
    pub fn policies(&self) -> &BTreeMap<ComponentId, ConflictStrategy> {
        &self.policies
    }

    /// Folds one log entry (the next seq).
    pub fn apply_entry(&mut self, entry: &LogEntry) -> Result<(), FoldError> {
        let seq = entry.seq;
        if seq != self.seq + 1 {
            return Err(FoldError::OutOfOrder { expected: self.seq + 1, got: seq });
        }
        let (_, body) = Envelope::open(&entry.envelope).map_err(|source| FoldError::Decode { seq, source })?;
        self.apply_command(seq, &body)
    }

    /// Folds one decoded command as entry `seq` (the next seq).
    pub fn apply_command(&mut self, seq: u64, body: &CommandBody) -> Result<(), FoldError> {
        if seq != self.seq + 1 {
            return Err(FoldError::OutOfOrder { expected: self.seq + 1, got: seq });
        }
        if body.session != self.session {
            return Err(FoldError::WrongSession { seq, session: body.session });
        }
        self.fold(seq, body)?;
        self.seq = seq;
        Ok(())
    }

    fn strategy(&self, kind: CommandKind, component: ComponentId) -> ConflictStrategy {
        self.policies.get(&component).copied().unwrap_or_else(|| default_strategy(kind))
    }

    fn record(&self, seq: u64, entity: EntityId) -> Result<&Record, FoldError> {
        self.entities.get(&entity).ok_or(FoldError::Invariant { seq, entity, what: "entity does not exist" })
    }

    /// Whether a write with `stamp` to (`entity`, `component`) takes effect, recording its stamp.
    fn wins(&mut self, entity: EntityId, component: ComponentId, stamp: Stamp, strategy: ConflictStrategy) -> bool {
        let r = self.entities.get_mut(&entity).expect("checked entity");
        match strategy {
            ConflictStrategy::LastWriteWins => {
                if r.stamps.get(&component).is_some_and(|old| *old >= stamp) {
                    return false;
                }
                r.stamps.insert(component, stamp);
                true
            }
            ConflictStrategy::Reject | ConflictStrategy::Merge => {
                // Reject scopes are ordered by the log; keep the stamp so a later switch back
                // to last-write-wins compares against it.
                let old = r.stamps.get(&component).copied();
                r.stamps.insert(component, old.map_or(stamp, |o| o.max(stamp)));
                true
            }
        }
    }

    fn fold(&mut self, seq: u64, body: &CommandBody) -> Result<(), FoldError> {
        let e = body.entity;
        let stamp: Stamp = (body.lamport, body.author);
        let kind = body.command.kind();
        let strategy = self.strategy(kind, body.component);
        let invariant = |what| FoldError::Invariant { seq, entity: e, what };
        match &body.command {
            Command::CreateSession { .. } | Command::GrantRole { .. } | Command::RevokeRole { .. } => {}
            Command::SetConflictPolicy { component, strategy } => {
                self.policies.insert(*component, *strategy);
            }
            Command::CreateEntity { shape, name, parent } => {
                if self.entities.contains_key(&e) {
                    return Err(invariant("entity already exists"));
                }
                if *parent != 0 && !self.entities.contains_key(parent) {
                    return Err(invariant("parent does not exist"));
                }
                self.spawn(e);
                let r = self.entities.get_mut(&e).expect("spawned");
                for c in [Primitive::id(), Name::id(), Parent::id(), Transform::id()] {
                    r.stamps.insert(c, stamp);
                }
                self.set_value(e, Value::Primitive(Primitive { shape: *shape }));
                self.set_value(e, Value::Transform(Transform::default()));
                if !name.is_empty() {
                    self.set_value(e, Value::Name(Name(name.clone())));
                }
                if *parent != 0 {
                    self.link(e, *parent);
                }
                self.update_spatial(e);
            }
            Command::DeleteEntity => {
                let r = self.record(seq, e)?;
                if !r.children.is_empty() {
                    return Err(invariant("entity still has children"));
                }
                self.despawn(e);
            }
            Command::SetComponent { data } => {
                self.record(seq, e)?;
                let value = Value::decode(body.component, data).map_err(|source| FoldError::Decode { seq, source })?;
                if matches!(value, Value::Parent(_) | Value::Selection(_)) {
                    return Err(invariant("Parent and Selection change only through their commands"));
                }
                if self.wins(e, body.component, stamp, strategy) {
                    let value = match value {
                        Value::Mesh(m) => Value::Mesh(canonical_mesh(m)),
                        v => v,
                    };
                    self.set_value(e, value);
                    if body.component == Transform::id() {
                        self.update_spatial(e);
                    }
                }
            }
            Command::RemoveComponent => {
                self.record(seq, e)?;
                if slot(body.component).is_none() {
                    return Err(invariant("unknown component"));
                }
                if body.component == Parent::id() || body.component == Selection::id() {
                    return Err(invariant("Parent and Selection change only through their commands"));
                }
                if self.wins(e, body.component, stamp, strategy) {
                    self.remove_value(e, body.component);
                    if body.component == Transform::id() {
                        self.update_spatial(e);
                    }
                }
            }
            Command::SetTransform(t) => {
                self.record(seq, e)?;
                if self.wins(e, Transform::id(), stamp, strategy) {
                    self.set_value(e, Value::Transform(*t));
                    self.update_spatial(e);
                }
            }
            Command::Select | Command::Deselect => {
                self.record(seq, e)?;
                let selected = matches!(body.command, Command::Select);
                let r = self.entities.get_mut(&e).expect("checked");
                let reg = r.selection.entry(body.author).or_insert((0, false));
                // Each author's own flag is a register ordered by that author's Lamport clock,
                // so concurrent selections of different authors commute.
                if body.lamport > reg.0 {
                    *reg = (body.lamport, selected);
                    let authors: Vec<AuthorKey> =
                        r.selection.iter().filter(|(_, (_, s))| *s).map(|(a, _)| *a).collect();
                    if authors.is_empty() {
                        self.remove_value(e, Selection::id());
                    } else {
                        self.set_value(e, Value::Selection(Selection { authors }));
                    }
                }
            }
            Command::ChangeTool { tool } => {
                self.record(seq, e)?;
                if self.wins(e, ToolState::id(), stamp, strategy) {
                    self.set_value(e, Value::ToolState(ToolState { author: body.author, tool: tool.clone() }));
                }
            }
            Command::MoveVertices { indices, positions } => {
                self.record(seq, e)?;
                if let Some(Value::Mesh(mut mesh)) = self.get(e, Mesh::id())
                    && self.wins(e, Mesh::id(), stamp, strategy)
                {
                    for (i, p) in indices.iter().zip(positions) {
                        if let Some(slot) = mesh.positions.get_mut(*i as usize) {
                            *slot = *p;
                        }
                    }
                    self.set_value(e, Value::Mesh(mesh));
                }
            }
            Command::AddFaces { indices } => {
                self.record(seq, e)?;
                if let Some(Value::Mesh(mut mesh)) = self.get(e, Mesh::id()) {
                    // A set union of triangles: commutative and idempotent.
                    mesh.indices.extend_from_slice(indices);
                    self.set_value(e, Value::Mesh(canonical_mesh(mesh)));
                }
            }
            Command::RemoveFaces { faces } => {
                self.record(seq, e)?;
                if let Some(Value::Mesh(mut mesh)) = self.get(e, Mesh::id())
                    && self.wins(e, Mesh::id(), stamp, strategy)
                {
                    let drop: BTreeSet<usize> = faces.iter().map(|f| *f as usize).collect();
                    mesh.indices = mesh
                        .indices
                        .chunks_exact(3)
                        .enumerate()
                        .filter(|(i, _)| !drop.contains(i))
                        .flat_map(|(_, t)| t.iter().copied())
                        .collect();
                    self.set_value(e, Value::Mesh(mesh));
                }
            }
            Command::Rename { name } => {
                self.record(seq, e)?;
                if self.wins(e, Name::id(), stamp, strategy) {
                    self.set_value(e, Value::Name(Name(name.clone())));
                }
            }
            Command::Reparent { parent } => {
                let old = self.record(seq, e)?.parent;
                if *parent != 0 {
                    if !self.entities.contains_key(parent) {
                        return Err(invariant("parent does not exist"));
                    }
                    let mut a = *parent;
                    while a != 0 {
                        if a == e {
                            return Err(invariant("reparent would create a cycle"));
                        }
                        a = self.entities[&a].parent;
                    }
                }
                if self.wins(e, Parent::id(), stamp, strategy) && old != *parent {
                    if old != 0 {
                        self.unlink(e);
                    }
                    if *parent != 0 {
                        self.link(e, *parent);
                    } else {
                        self.remove_value(e, Parent::id());
                    }
                    self.update_spatial(e);
                }
            }
            Command::SetMaterial(m) => {
                self.record(seq, e)?;
                if self.wins(e, theta_schemas::components::Material::id(), stamp, strategy) {
                    self.set_value(e, Value::Material(*m));
                }
            }
        }
        Ok(())
    }

    /// Creates an entity with no components.
    pub(crate) fn spawn(&mut self, e: EntityId) {
        assert!(!self.entities.contains_key(&e), "entity {e} spawned twice");
        if !self.replaying {
            self.tracker.touch_entity(e, false);
        }
        let flecs = self.world.entity().id();
        self.entities.insert(
            e,
            Record {
                flecs,
                items: Slots::default(),
                stamps: Slots::default(),
                selection: BTreeMap::new(),
                parent: 0,
                children: BTreeSet::new(),
                local: Transform::default(),
            },
        );
        self.hash.add(&existence(e));
    }

    /// Deletes an entity and all its components.
    pub(crate) fn despawn(&mut self, e: EntityId) {
        let comps: Vec<ComponentId> = self.entities[&e].items.keys().collect();
        for c in comps {
            self.remove_value(e, c);
        }
        if self.entities[&e].parent != 0 {
            self.unlink(e);
        }
        if !self.replaying {
            self.tracker.touch_entity(e, true);
        }
        let r = self.entities.remove(&e).expect("live entity");
        assert!(r.children.is_empty(), "despawned entity {e} has children");
        self.world.entity_from_id(r.flecs).destruct();
        self.hash.remove(&existence(e));
        self.spatial.remove(e);
    }

    /// Sets a component value, updating the hash and the delta tracker.
    pub(crate) fn set_value(&mut self, e: EntityId, value: Value) {
        let item = item_hash(e, value.id(), value.write(&mut self.fbb));
        self.set_value_hashed(e, value, item);
    }

    /// Sets a component value whose canonical bytes are already at hand.
    pub(crate) fn set_value_bytes(&mut self, e: EntityId, value: Value, bytes: &[u8]) {
        let item = item_hash(e, value.id(), bytes);
        self.set_value_hashed(e, value, item);
    }

    fn set_value_hashed(&mut self, e: EntityId, value: Value, item: Hash) {
        let c = value.id();
        let r = self.entities.get_mut(&e).expect("live entity");
        let old = r.items.insert(c, item);
        if !self.replaying {
            self.tracker.touch_component(e, c, old.is_some());
        }
        if let Some(old) = old {
            self.hash.remove(&old);
        }
        self.hash.add(&item);
        match &value {
            Value::Parent(p) => r.parent = p.0,
            Value::Transform(t) => {
                r.local = *t;
                if let Some(compact) = &mut self.compact {
                    compact.set(e, t, &item, &mut self.fbb);
                }
            }
            _ => {}
        }
        value.set_on(self.world.entity_from_id(r.flecs));
    }

    /// Removes a component value if present.
    pub(crate) fn remove_value(&mut self, e: EntityId, c: ComponentId) {
        let r = self.entities.get_mut(&e).expect("live entity");
        if let Some(old) = r.items.remove(&c) {
            if c == Transform::id() {
                r.local = Transform::default();
                if let Some(compact) = &mut self.compact {
                    compact.remove(e);
                }
            }
            if !self.replaying {
                self.tracker.touch_component(e, c, true);
            }
            self.hash.remove(&old);
            Value::remove_from(self.world.entity_from_id(r.flecs), c);
        }
    }

    fn link(&mut self, e: EntityId, parent: EntityId) {
        self.entities.get_mut(&parent).expect("parent").children.insert(e);
        self.set_value(e, Value::Parent(Parent(parent)));
    }

    fn unlink(&mut self, e: EntityId) {
        let old = self.entities[&e].parent;
        self.entities.get_mut(&old).expect("old parent").children.remove(&e);
        self.entities.get_mut(&e).expect("entity").parent = 0;
    }

    /// Recomputes world positions of `e` and its descendants in the spatial index.
    pub(crate) fn update_spatial(&mut self, e: EntityId) {
        if self.replaying {
            return;
        }
        let parent = self.entities[&e].parent;
        let base = if parent == 0 { Transform::default() } else { world_of(self, parent) };
        let mut stack = vec![(e, base)];
        while let Some((x, parent_world)) = stack.pop() {
            let r = &self.entities[&x];
            let world = if r.parent == 0 { r.local } else { compose(&parent_world, &r.local) };
            for c in r.children.iter().rev() {
                stack.push((*c, world));
            }
            self.spatial.insert(x, world.translation);
        }
    }

    /// Links children to parents after entities were restored without hierarchy bookkeeping
    /// (snapshots, checkpoints), then rebuilds the spatial index.
    pub(crate) fn rebuild_hierarchy(&mut self) {
        self.link_hierarchy();
        self.rebuild_spatial();
    }

    /// Recomputes every world position from the roots down.
    fn rebuild_spatial(&mut self) {
        self.spatial = SpatialIndex::default();
        let roots: Vec<EntityId> = self.entities().filter(|e| self.entities[e].parent == 0).collect();
        for e in roots {
            self.update_spatial(e);
        }
    }

    /// Sets every entity's parent and children from the Parent components.
    pub(crate) fn link_hierarchy(&mut self) {
        let links: Vec<(EntityId, EntityId)> = self
            .entities()
            .filter_map(|e| match self.get(e, Parent::id()) {
                Some(Value::Parent(p)) if p.0 != 0 => Some((e, p.0)),
                _ => None,
            })
            .collect();
        for r in self.entities.values_mut() {
            r.children.clear();
            r.parent = 0;
        }
        for (child, parent) in links {
            self.entities.get_mut(&child).expect("child").parent = parent;
            if let Some(p) = self.entities.get_mut(&parent) {
                p.children.insert(child);
            }
        }
    }
}
