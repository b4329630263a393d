//! Shared bench helpers: building large logs through the trusted import path.

use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use theta_schemas::components::{Material, Name, Selection, Transform};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::signing::author_key;
use theta_schemas::{Command, CommandBody, ComponentId, Envelope, LogEntry, SessionId, Shape};
use theta_store::Store;
use theta_store::merkle::entry_hash;

/// Imports a realistic editing log of `entries` entries into `store` under session `S`:
/// a session, 7 editor grants, 10,000 entities, then mostly transforms. Entries are hashed
/// and chained here; signatures are not checked on import, so they are left zero.
#[allow(dead_code)]
#[allow(non_snake_case)]
pub fn build_log(store: &Store, S: SessionId, entries: u64) {
    let authors: Vec<_> = (1..=8u8).map(|i| author_key(&SigningKey::from_bytes(&[i; 32]))).collect();
    let mut rng = rand::rngs::StdRng::seed_from_u64(1);
    let mut lamport = [0u64; 8];
    let mut prev = [0u8; 32];
    let mut chunk = Vec::with_capacity(10_000);
    for seq in 1..=entries {
        let a = if seq <= 8 { 0 } else { rng.gen_range(0..8) };
        lamport[a] = lamport[a].max(*lamport.iter().max().unwrap_or(&0)) + 1;
        let (entity, component, command) = if seq == 1 {
            (0, ComponentId::NONE, Command::CreateSession { name: "history".into() })
        } else if seq <= 8 {
            let key = authors[seq as usize - 1];
            (0, ComponentId::NONE, Command::GrantRole { key, role: theta_schemas::Role::Editor })
        } else if seq <= 10_008 {
            (
                seq - 8,
                ComponentId::NONE,
                Command::CreateEntity { shape: Shape::Cube, name: format!("o{seq}"), parent: 0 },
            )
        } else {
            let e = rng.gen_range(1..=10_000u64);
            match rng.gen_range(0..100) {
                0..=89 => {
                    let f = rng.gen_range(-50.0f32..50.0);
                    (
                        e,
                        Transform::id(),
                        Command::SetTransform(Transform { translation: [f, 1.0, -f], ..Transform::default() }),
                    )
                }
                90..=94 => (e, Selection::id(), Command::Select),
                95..=97 => (e, Name::id(), Command::Rename { name: format!("n{seq}") }),
                _ => (e, Material::id(), Command::SetMaterial(Material::default())),
            }
        };
        let body = CommandBody {
            session: S,
            author: authors[a],
            lamport: lamport[a],
            nonce: seq,
            wall_clock_ms: 0,
            entity,
            component,
            base_version: 0,
            command,
        };
        let envelope = Envelope { body: body.encode(), signature: [0; 64] }.encode();
        let h = entry_hash(&S, seq, 0, &prev, &envelope);
        chunk.push(LogEntry { seq, envelope, prev_hash: prev, entry_hash: h, receipt_time_ms: 0 });
        prev = h;
        if chunk.len() == 10_000 || seq == entries {
            store.import(S, std::mem::take(&mut chunk)).expect("import");
        }
    }
}
