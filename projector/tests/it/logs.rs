//! Generators of valid logs: what a store would accept, built from a seed.

use std::collections::{BTreeMap, BTreeSet};

use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use theta_projector::Projection;
use theta_schemas::components::{Component, Material, Mesh, Name, Parent, Selection, ToolState, Transform};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::{
    Command, CommandBody, ComponentId, ConflictStrategy, EntityId, Envelope, LogEntry, SessionId, Shape,
};

pub const SESSION: SessionId = SessionId([7; 16]);

pub use theta_testkit::Author;

/// Signed log entries from bodies (hash fields are not checked by the projector).
pub fn entries(bodies: &[(CommandBody, &SigningKey)]) -> Vec<LogEntry> {
    bodies
        .iter()
        .enumerate()
        .map(|(i, (b, k))| LogEntry {
            seq: i as u64 + 1,
            envelope: Envelope::sign(b, k).encode(),
            prev_hash: [0; 32],
            entry_hash: [0; 32],
            receipt_time_ms: 0,
        })
        .collect()
}

pub fn mesh() -> Mesh {
    Mesh {
        positions: vec![[0.0; 3], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0], [0.5, 2.0, 0.0]],
        indices: vec![0, 1, 2],
    }
}

/// Folds bodies from seq 1 into a fresh projection.
pub fn fold(bodies: &[CommandBody]) -> Projection {
    let mut p = Projection::new(SESSION);
    for (i, b) in bodies.iter().enumerate() {
        p.apply_command(i as u64 + 1, b).unwrap_or_else(|e| panic!("entry {}: {e}\n{b:?}", i + 1));
    }
    p
}

/// A random valid log of about `n` commands from 3 authors (plus the session's creation).
pub fn random_log(seed: u64, n: usize) -> Vec<CommandBody> {
    let mut rng = StdRng::seed_from_u64(seed);
    let mut authors: Vec<Author> = (1..=3).map(Author::new).collect();
    let mut out =
        vec![authors[0].body(SESSION, 0, ComponentId::NONE, 0, Command::CreateSession { name: "gen".into() })];
    let mut live: BTreeMap<EntityId, EntityId> = BTreeMap::new(); // entity -> parent
    let mut meshes: BTreeMap<EntityId, usize> = BTreeMap::new(); // entity -> face count (upper bound)
    let mut next: EntityId = 1;
    let subtree = |live: &BTreeMap<EntityId, EntityId>, root: EntityId| {
        let mut set = BTreeSet::from([root]);
        loop {
            let more: Vec<EntityId> =
                live.iter().filter(|(e, p)| set.contains(p) && !set.contains(e)).map(|(e, _)| *e).collect();
            if more.is_empty() {
                return set;
            }
            set.extend(more);
        }
    };
    while out.len() < n {
        let a = rng.gen_range(0..authors.len());
        // Authors' clocks drift apart, so last-write-wins has real conflicts to decide.
        authors[a].lamport += rng.gen_range(0..3);
        let pick = |rng: &mut StdRng, live: &BTreeMap<EntityId, EntityId>| {
            let keys: Vec<EntityId> = live.keys().copied().collect();
            keys[rng.gen_range(0..keys.len())]
        };
        let op = if live.is_empty() { 0 } else { rng.gen_range(0..20) };
        let author = &mut authors[a];
        let body = match op {
            0 | 1 if live.len() < 40 => {
                let e = next;
                next += 1;
                let parent = if !live.is_empty() && rng.gen_bool(0.3) { pick(&mut rng, &live) } else { 0 };
                live.insert(e, parent);
                let shape = Shape::ALL[rng.gen_range(0..Shape::ALL.len())];
                author.body(
                    SESSION,
                    e,
                    ComponentId::NONE,
                    0,
                    Command::CreateEntity { shape, name: format!("e{e}"), parent },
                )
            }
            2..=7 => {
                let e = pick(&mut rng, &live);
                let mut f = || rng.gen_range(-20.0f32..20.0);
                let t = Transform { translation: [f(), f(), f()], rotation: [0.0, 0.0, 0.0, 1.0], scale: [1.0; 3] };
                author.body(SESSION, e, Transform::id(), 0, Command::SetTransform(t))
            }
            8 => author.body(
                SESSION,
                pick(&mut rng, &live),
                Name::id(),
                0,
                Command::Rename { name: format!("n{}", rng.gen_range(0..100)) },
            ),
            9 => {
                let m =
                    Material { base_color: [rng.gen_range(0.0..1.0), 0.5, 0.5, 1.0], metallic: 0.1, roughness: 0.9 };
                author.body(SESSION, pick(&mut rng, &live), Material::id(), 0, Command::SetMaterial(m))
            }
            10 => author.body(SESSION, pick(&mut rng, &live), Selection::id(), 0, Command::Select),
            11 => author.body(SESSION, pick(&mut rng, &live), Selection::id(), 0, Command::Deselect),
            12 => author.body(
                SESSION,
                pick(&mut rng, &live),
                ToolState::id(),
                0,
                Command::ChangeTool { tool: ["move", "scale", "paint"][rng.gen_range(0..3)].into() },
            ),
            13 => {
                let e = pick(&mut rng, &live);
                meshes.insert(e, 1);
                author.body(SESSION, e, Mesh::id(), 0, Command::SetComponent { data: mesh().encode() })
            }
            14 if !meshes.is_empty() => {
                let e = *meshes.keys().nth(rng.gen_range(0..meshes.len())).unwrap();
                let i = rng.gen_range(0..5u32);
                author.body(
                    SESSION,
                    e,
                    Mesh::id(),
                    0,
                    Command::MoveVertices { indices: vec![i], positions: vec![[i as f32, 3.0, 1.0]] },
                )
            }
            15 if !meshes.is_empty() => {
                let e = *meshes.keys().nth(rng.gen_range(0..meshes.len())).unwrap();
                *meshes.get_mut(&e).unwrap() += 1;
                let t = [rng.gen_range(0..5u32), rng.gen_range(0..5u32), rng.gen_range(0..5u32)];
                author.body(SESSION, e, Mesh::id(), 0, Command::AddFaces { indices: t.to_vec() })
            }
            16 if !meshes.is_empty() => {
                let e = *meshes.keys().nth(rng.gen_range(0..meshes.len())).unwrap();
                author.body(SESSION, e, Mesh::id(), 0, Command::RemoveFaces { faces: vec![rng.gen_range(0..3)] })
            }
            17 => {
                let e = pick(&mut rng, &live);
                let banned = subtree(&live, e);
                let candidates: Vec<EntityId> = live.keys().filter(|x| !banned.contains(x)).copied().collect();
                let parent = if candidates.is_empty() || rng.gen_bool(0.3) {
                    0
                } else {
                    candidates[rng.gen_range(0..candidates.len())]
                };
                live.insert(e, parent);
                author.body(SESSION, e, Parent::id(), 0, Command::Reparent { parent })
            }
            18 => {
                // Delete a leaf.
                let leaves: Vec<EntityId> = live.keys().filter(|e| !live.values().any(|p| p == *e)).copied().collect();
                let e = leaves[rng.gen_range(0..leaves.len())];
                live.remove(&e);
                meshes.remove(&e);
                author.body(SESSION, e, ComponentId::NONE, 0, Command::DeleteEntity)
            }
            19 => {
                let strategy =
                    if rng.gen_bool(0.5) { ConflictStrategy::Reject } else { ConflictStrategy::LastWriteWins };
                author.body(
                    SESSION,
                    0,
                    ComponentId::NONE,
                    0,
                    Command::SetConflictPolicy { component: Transform::id(), strategy },
                )
            }
            _ => author.body(SESSION, pick(&mut rng, &live), Name::id(), 0, Command::RemoveComponent),
        };
        out.push(body);
    }
    out
}
