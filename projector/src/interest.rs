//! Interest management: a viewer receives only the entities inside its area.
//!
//! Entities entering the area arrive as spawns with all their values; entities leaving it
//! (or deleted) leave as despawns. The state hash a filtered stream carries is the hash of
//! exactly the entities the viewer holds, so its mirror can still check itself.

use std::collections::BTreeSet;

use theta_schemas::EntityId;
use theta_schemas::wire::{ComponentValue, Delta, SnapshotChunk};

use crate::projection::Projection;

/// A sphere of interest.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Area {
    /// Centre, world metres.
    pub center: [f32; 3],
    /// Radius, metres.
    pub radius: f32,
}

/// One viewer's interest: its area and the entities it currently holds.
#[derive(Debug, Clone)]
pub struct InterestView {
    area: Area,
    known: BTreeSet<EntityId>,
}

impl InterestView {
    /// A viewer that holds nothing yet.
    pub fn new(area: Area) -> InterestView {
        InterestView { area, known: BTreeSet::new() }
    }

    /// The current area.
    pub fn area(&self) -> Area {
        self.area
    }

    /// Moves the area; the next filtered delta carries the entities entering and leaving.
    pub fn set_area(&mut self, area: Area) {
        self.area = area;
    }

    /// The entities the viewer holds.
    pub fn known(&self) -> &BTreeSet<EntityId> {
        &self.known
    }

    fn inside(&self, p: &Projection) -> BTreeSet<EntityId> {
        p.spatial.within_radius(self.area.center, self.area.radius).into_iter().collect()
    }

    /// The initial snapshot for this viewer: the entities inside its area.
    pub fn snapshot(&mut self, p: &Projection, max_chunk_bytes: usize) -> Vec<SnapshotChunk> {
        self.known = self.inside(p);
        p.snapshot(max_chunk_bytes, Some(&self.known))
    }

    /// Filters a delta taken from `p` (at `p`'s seq) for this viewer.
    pub fn filter(&mut self, p: &Projection, delta: &Delta) -> Delta {
        let inside = self.inside(p);
        let mut out = Delta {
            session: delta.session,
            from_seq: delta.from_seq,
            to_seq: delta.to_seq,
            state_hash: delta.state_hash.map(|_| p.subset_hash(&inside)),
            spawned: Vec::new(),
            upserts: Vec::new(),
            removals: Vec::new(),
            despawned: self.known.difference(&inside).copied().collect(),
            descriptors: delta.descriptors.clone(),
            transforms: Vec::new(),
            ordered_from: delta.ordered_from,
        };
        for e in inside.difference(&self.known) {
            out.spawned.push(*e);
            for c in p.components(*e) {
                let data = p.get(*e, c).expect("present").encode();
                out.upserts.push(ComponentValue { entity: *e, component: c, data });
            }
        }
        let kept: BTreeSet<EntityId> = inside.intersection(&self.known).copied().collect();
        out.upserts.extend(delta.upserts.iter().filter(|u| kept.contains(&u.entity)).cloned());
        out.removals.extend(delta.removals.iter().filter(|(e, _)| kept.contains(e)).copied());
        self.known = inside;
        out
    }
}
