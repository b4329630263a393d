//! Spatial index for interest management: a uniform grid over world positions.
//!
//! World positions compose each entity's Transform with its ancestors'. Queries return ids in
//! ascending order, so nothing about the grid's hash map reaches any output.

use crate::fast::IdMap;

use theta_schemas::EntityId;
use theta_schemas::components::Transform;

use crate::projection::Projection;

/// Edge of a grid cell, metres.
pub const CELL_METRES: f32 = 4.0;

type Cell = [i32; 3];

fn cell_of(p: [f32; 3]) -> Cell {
    p.map(|x| (x / CELL_METRES).floor().clamp(i32::MIN as f32, i32::MAX as f32) as i32)
}

/// Entities by grid cell, and each entity's world position.
#[derive(Debug, Clone, Default)]
pub struct SpatialIndex {
    /// Unordered ids per cell (queries sort their results).
    cells: IdMap<Cell, Vec<EntityId>>,
    positions: IdMap<EntityId, [f32; 3]>,
}

impl SpatialIndex {
    /// Sets an entity's world position.
    pub fn insert(&mut self, e: EntityId, p: [f32; 3]) {
        if let Some(old) = self.positions.insert(e, p) {
            let c = cell_of(old);
            if c == cell_of(p) {
                return;
            }
            self.unlist(c, e);
        }
        self.cells.entry(cell_of(p)).or_default().push(e);
    }

    /// Forgets an entity.
    pub fn remove(&mut self, e: EntityId) {
        if let Some(old) = self.positions.remove(&e) {
            self.unlist(cell_of(old), e);
        }
    }

    fn unlist(&mut self, c: Cell, e: EntityId) {
        if let Some(list) = self.cells.get_mut(&c) {
            if let Some(i) = list.iter().position(|x| *x == e) {
                list.swap_remove(i);
            }
            if list.is_empty() {
                self.cells.remove(&c);
            }
        }
    }

    /// An entity's world position.
    pub fn position(&self, e: EntityId) -> Option<[f32; 3]> {
        self.positions.get(&e).copied()
    }

    /// Entities whose world position lies in the axis-aligned box `[min, max]`, ascending.
    pub fn within_box(&self, min: [f32; 3], max: [f32; 3]) -> Vec<EntityId> {
        let (lo, hi) = (cell_of(min), cell_of(max));
        let cells = (0..3).map(|i| i64::from(hi[i]) - i64::from(lo[i]) + 1).product::<i64>();
        let inside = |p: [f32; 3]| (0..3).all(|i| p[i] >= min[i] && p[i] <= max[i]);
        let mut out: Vec<EntityId> = if cells as usize > self.cells.len() {
            // A box larger than the populated grid: scan the cells instead.
            self.positions.iter().filter(|(_, p)| inside(**p)).map(|(e, _)| *e).collect()
        } else {
            let mut v = Vec::new();
            for x in lo[0]..=hi[0] {
                for y in lo[1]..=hi[1] {
                    for z in lo[2]..=hi[2] {
                        if let Some(set) = self.cells.get(&[x, y, z]) {
                            v.extend(set.iter().filter(|e| inside(self.positions[e])));
                        }
                    }
                }
            }
            v
        };
        out.sort_unstable();
        out
    }

    /// Entities within `radius` metres of `center`, ascending.
    pub fn within_radius(&self, center: [f32; 3], radius: f32) -> Vec<EntityId> {
        let r = radius.max(0.0);
        let min = center.map(|c| c - r);
        let max = center.map(|c| c + r);
        self.within_box(min, max)
            .into_iter()
            .filter(|e| {
                let p = self.positions[e];
                let d: f32 = (0..3).map(|i| (p[i] - center[i]) * (p[i] - center[i])).sum();
                d <= r * r
            })
            .collect()
    }
}

fn rotate(q: [f32; 4], v: [f32; 3]) -> [f32; 3] {
    let [qx, qy, qz, qw] = q;
    // v' = v + 2w(q×v) + 2 q×(q×v)
    let t = [2.0 * (qy * v[2] - qz * v[1]), 2.0 * (qz * v[0] - qx * v[2]), 2.0 * (qx * v[1] - qy * v[0])];
    [
        v[0] + qw * t[0] + (qy * t[2] - qz * t[1]),
        v[1] + qw * t[1] + (qz * t[0] - qx * t[2]),
        v[2] + qw * t[2] + (qx * t[1] - qy * t[0]),
    ]
}

fn mul_quat(a: [f32; 4], b: [f32; 4]) -> [f32; 4] {
    let [ax, ay, az, aw] = a;
    let [bx, by, bz, bw] = b;
    [
        aw * bx + ax * bw + ay * bz - az * by,
        aw * by - ax * bz + ay * bw + az * bx,
        aw * bz + ax * by - ay * bx + az * bw,
        aw * bw - ax * bx - ay * by - az * bz,
    ]
}

/// Composes a parent's world transform with a child's local one.
pub fn compose(parent: &Transform, local: &Transform) -> Transform {
    let scaled = [0, 1, 2].map(|i| parent.scale[i] * local.translation[i]);
    let moved = rotate(parent.rotation, scaled);
    Transform {
        translation: [0, 1, 2].map(|i| parent.translation[i] + moved[i]),
        rotation: mul_quat(parent.rotation, local.rotation),
        scale: [0, 1, 2].map(|i| parent.scale[i] * local.scale[i]),
    }
}

/// An entity's world transform (its local Transform composed with its ancestors').
pub fn world_of(p: &Projection, e: EntityId) -> Transform {
    let mut chain = Vec::new();
    let mut x = e;
    while x != 0 && chain.len() <= 1_024 {
        match p.entities.get(&x) {
            Some(r) => {
                chain.push(r.local);
                x = r.parent;
            }
            None => break,
        }
    }
    chain.iter().rev().fold(Transform::default(), |world, local| compose(&world, local))
}
