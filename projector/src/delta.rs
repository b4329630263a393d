//! Deltas: what changed between two seqs, coalesced per (entity, component).
//!
//! The tracker records, for every entity and component first touched since the last cut,
//! whether it existed at the cut. Taking a delta compares that with now: an entity moved 100
//! times yields one update; one created and deleted in between yields nothing.

use crate::fast::IdMap;

use theta_schemas::components::{QuantizedTransform, Transform};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::wire::{ComponentDescriptor, ComponentValue, Delta};
use theta_schemas::{ComponentId, EntityId};

use crate::hash::Hash;
use crate::projection::Projection;
use crate::values::{Value, descriptors};

/// First-touch bookkeeping since the last cut.
#[derive(Debug, Clone, Default)]
pub(crate) struct Tracker {
    pub from_seq: u64,
    entities: IdMap<EntityId, bool>,
    components: IdMap<(EntityId, ComponentId), bool>,
}

impl Tracker {
    pub fn starting_at(seq: u64) -> Tracker {
        Tracker { from_seq: seq, ..Tracker::default() }
    }
    pub fn touch_entity(&mut self, e: EntityId, existed: bool) {
        self.entities.entry(e).or_insert(existed);
    }
    pub fn touch_component(&mut self, e: EntityId, c: ComponentId, existed: bool) {
        self.components.entry((e, c)).or_insert(existed);
    }
}

/// Why a delta could not be applied.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ApplyError {
    /// The delta starts at another seq.
    #[error("delta from seq {from} cannot apply to a projection at seq {at}")]
    WrongBase {
        /// The delta's base.
        from: u64,
        /// The projection's seq.
        at: u64,
    },
    /// The delta is for another session.
    #[error("delta is for another session")]
    WrongSession,
    /// A value does not decode.
    #[error("entity {entity}, component {component}: {source}")]
    Decode {
        /// Entity.
        entity: EntityId,
        /// Component.
        component: ComponentId,
        /// Why.
        #[source]
        source: theta_schemas::DecodeError,
    },
    /// The delta names an entity that is missing (or spawns one that exists).
    #[error("entity {entity}: {what}")]
    Entity {
        /// Entity.
        entity: EntityId,
        /// What is wrong.
        what: &'static str,
    },
    /// After applying, the state hash differs from the delta's: resync from a snapshot.
    #[error("state hash mismatch after the delta: resync")]
    HashMismatch {
        /// The hash the delta announced.
        expected: Hash,
        /// The hash reached.
        actual: Hash,
    },
}

/// The descriptors of every registered component, as advertised once per stream.
pub fn wire_descriptors() -> Vec<ComponentDescriptor> {
    descriptors()
        .into_iter()
        .map(|d| ComponentDescriptor { name: d.name.to_string(), id: d.id, encoding_version: d.encoding_version })
        .collect()
}

impl Projection {
    /// The changes since the last cut (or since creation), and starts a new window. With
    /// `with_descriptors`, the delta also advertises every component descriptor.
    pub fn take_delta(&mut self, with_descriptors: bool) -> Delta {
        assert!(!self.is_replaying(), "take_delta during replay: call end_replay first");
        let tracker = std::mem::take(&mut self.tracker);
        self.tracker.from_seq = self.seq();
        let mut delta = Delta {
            session: self.session(),
            from_seq: tracker.from_seq,
            to_seq: self.seq(),
            state_hash: Some(self.state_hash()),
            spawned: Vec::new(),
            upserts: Vec::new(),
            removals: Vec::new(),
            despawned: Vec::new(),
            transforms: Vec::new(),
            ordered_from: 0,
            descriptors: if with_descriptors { wire_descriptors() } else { Vec::new() },
        };
        let existed_entity = |e: EntityId| tracker.entities.get(&e).copied().unwrap_or(true);
        let mut touched_entities: Vec<(EntityId, bool)> = tracker.entities.iter().map(|(e, x)| (*e, *x)).collect();
        touched_entities.sort_unstable();
        let mut touched_components: Vec<((EntityId, ComponentId), bool)> =
            tracker.components.iter().map(|(k, x)| (*k, *x)).collect();
        touched_components.sort_unstable();
        for (e, existed) in &touched_entities {
            match (*existed, self.contains(*e)) {
                (false, true) => delta.spawned.push(*e),
                (true, false) => delta.despawned.push(*e),
                _ => {}
            }
        }
        for ((e, c), existed) in &touched_components {
            if !self.contains(*e) {
                continue;
            }
            match self.get(*e, *c) {
                Some(v) => delta.upserts.push(ComponentValue { entity: *e, component: *c, data: v.encode() }),
                None => {
                    if *existed && existed_entity(*e) {
                        delta.removals.push((*e, *c));
                    }
                }
            }
        }
        delta
    }

    /// Applies a delta (a mirror following a stream), then checks the state hash when the delta
    /// carries one. Quantized transforms (a compact stream) are applied as
    /// [`QuantizedTransform::to_transform`](theta_schemas::components::QuantizedTransform::to_transform).
    pub fn apply_delta(&mut self, delta: &Delta) -> Result<(), ApplyError> {
        if delta.session != self.session() {
            return Err(ApplyError::WrongSession);
        }
        if delta.from_seq != self.seq() {
            return Err(ApplyError::WrongBase { from: delta.from_seq, at: self.seq() });
        }
        // Decode everything first so a bad delta changes nothing.
        let mut values = Vec::with_capacity(delta.upserts.len());
        for u in &delta.upserts {
            let v = Value::decode(u.component, &u.data).map_err(|source| ApplyError::Decode {
                entity: u.entity,
                component: u.component,
                source,
            })?;
            values.push((u.entity, v));
        }
        // A quantized transform is a difference from the entity's current transform when that
        // one quantizes (a compact stream's receiver holds quantized transforms), else absolute.
        for (e, q) in &delta.transforms {
            let base = match self.get(*e, Transform::id()) {
                Some(Value::Transform(t)) => QuantizedTransform::quantize(&t),
                _ => None,
            };
            let q = base.map_or(*q, |b| q.plus(&b));
            values.push((*e, Value::Transform(q.to_transform())));
        }
        let mut spawned = std::collections::BTreeSet::new();
        for e in &delta.spawned {
            if self.contains(*e) {
                return Err(ApplyError::Entity { entity: *e, what: "spawned but already exists" });
            }
            if !spawned.insert(*e) {
                return Err(ApplyError::Entity { entity: *e, what: "spawned twice" });
            }
        }
        for e in values.iter().map(|(e, _)| e).chain(delta.removals.iter().map(|(e, _)| e)).chain(&delta.despawned) {
            if !self.contains(*e) && !spawned.contains(e) {
                return Err(ApplyError::Entity { entity: *e, what: "does not exist" });
            }
        }
        for e in &delta.spawned {
            self.spawn(*e);
        }
        let mut moved = Vec::new();
        for (e, v) in values {
            match &v {
                Value::Transform(_) => moved.push(e),
                Value::Parent(p) => {
                    self.detach(e);
                    let parent = p.0;
                    self.set_value(e, v);
                    if let Some(r) = self.entities.get_mut(&parent) {
                        r.children.insert(e);
                    }
                    moved.push(e);
                    continue;
                }
                _ => {}
            }
            self.set_value(e, v);
        }
        for (e, c) in &delta.removals {
            if *c == theta_schemas::components::Parent::id() {
                self.detach(*e);
                moved.push(*e);
            }
            self.remove_value(*e, *c);
        }
        for e in &delta.despawned {
            if self.contains(*e) {
                self.despawn_mirror(*e);
            }
        }
        for e in moved.into_iter().chain(delta.spawned.iter().copied()) {
            if self.contains(e) {
                self.update_spatial(e);
            }
        }
        self.set_seq(delta.to_seq);
        self.reset_tracker();
        if let Some(expected) = delta.state_hash {
            let actual = self.state_hash();
            if actual != expected {
                return Err(ApplyError::HashMismatch { expected, actual });
            }
        }
        Ok(())
    }

    /// Takes an entity out of its parent's children (a mirror's hierarchy bookkeeping).
    fn detach(&mut self, e: EntityId) {
        let Some(parent) = self.entities.get(&e).map(|r| r.parent) else { return };
        if parent != 0 {
            if let Some(p) = self.entities.get_mut(&parent) {
                p.children.remove(&e);
            }
            self.entities.get_mut(&e).expect("entity").parent = 0;
        }
    }

    /// Despawns without hierarchy checks (a mirror learns of children in the same delta).
    fn despawn_mirror(&mut self, e: EntityId) {
        let children: Vec<EntityId> = self.entities[&e].children.iter().copied().collect();
        for c in children {
            self.entities.get_mut(&c).expect("child").parent = 0;
        }
        self.entities.get_mut(&e).expect("entity").children.clear();
        self.detach(e);
        self.despawn(e);
    }
}
