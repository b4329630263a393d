//! Property: any interleaving of appends from up to 8 authors yields a verifiable log.

use std::sync::Arc;

use proptest::prelude::*;
use theta_schemas::components::{Name, Transform};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::{Command, ComponentId, Role, Shape};
use theta_store::backend::MemoryBackend;
use theta_store::merkle::{self, verify_consistency};
use theta_store::{Store, StoreConfig};

use crate::helpers::*;

#[derive(Debug, Clone)]
enum Step {
    /// Author creates a new entity.
    Create { author: usize },
    /// Author moves an entity (index into created ones).
    Move { author: usize, entity: usize },
    /// Author renames an entity.
    Rename { author: usize, entity: usize },
    /// Author's Lamport clock jumps (possibly backwards: the append is then rejected).
    Jump { author: usize, delta: i64 },
    /// Author re-sends its previous command (a replay).
    Replay { author: usize },
}

fn step() -> impl Strategy<Value = Step> {
    prop_oneof![
        (0..8usize).prop_map(|author| Step::Create { author }),
        (0..8usize, 0..32usize).prop_map(|(author, entity)| Step::Move { author, entity }),
        (0..8usize, 0..32usize).prop_map(|(author, entity)| Step::Rename { author, entity }),
        (0..8usize, -5i64..50).prop_map(|(author, delta)| Step::Jump { author, delta }),
        (0..8usize).prop_map(|author| Step::Replay { author }),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, .. ProptestConfig::default() })]

    #[test]
    fn interleaved_appends_give_a_verifiable_log(steps in proptest::collection::vec(step(), 1..120)) {
        let backend = Arc::new(MemoryBackend::new());
        let key = ed25519_dalek::SigningKey::from_bytes(&[77; 32]);
        let store = Store::with_backend(backend.clone(), relaxed(), key.clone()).unwrap();
        let s = session(5);
        let mut owner = Author::new(1);
        create_session(&store, &mut owner, s);
        let mut authors: Vec<Author> = (0..8).map(|i| Author::new(10 + i as u8)).collect();
        for a in &authors {
            grant(&store, &mut owner, s, a, Role::Editor);
        }
        let mut entities: Vec<u64> = Vec::new();
        let mut last: Vec<Option<Vec<u8>>> = vec![None; 8];
        let mut clock = store.head(&s).unwrap().clock;
        let mut accepted = store.head(&s).unwrap().seq;
        for st in steps {
            let (author, bytes) = match st {
                Step::Create { author } => {
                    let e = 1_000 + entities.len() as u64;
                    entities.push(e);
                    let b = authors[author].cmd(s, e, ComponentId::NONE, 0, Command::CreateEntity { shape: Shape::Cube, name: String::new(), parent: 0 });
                    (author, b)
                }
                Step::Move { author, entity } if !entities.is_empty() => {
                    let e = entities[entity % entities.len()];
                    let t = Transform { translation: [entity as f32, 1.0, 2.0], ..Transform::default() };
                    (author, authors[author].cmd(s, e, Transform::id(), 0, Command::SetTransform(t)))
                }
                Step::Rename { author, entity } if !entities.is_empty() => {
                    let e = entities[entity % entities.len()];
                    (author, authors[author].cmd(s, e, Name::id(), 0, Command::Rename { name: format!("n{entity}") }))
                }
                Step::Jump { author, delta } => {
                    let a = &mut authors[author];
                    a.lamport = a.lamport.saturating_add_signed(delta);
                    continue;
                }
                Step::Replay { author } => match &last[author] {
                    Some(b) => (author, b.clone()),
                    None => continue,
                },
                _ => continue,
            };
            let r = store.append(&bytes);
            last[author] = Some(bytes);
            if let Ok(r) = r {
                accepted += 1;
                prop_assert_eq!(r.seq, accepted, "gapless seq");
            }
            let head = store.head(&s).unwrap();
            prop_assert!(head.clock >= clock, "the session clock never goes backward");
            clock = head.clock;
        }
        let entries = all_entries(&store, &s);
        prop_assert_eq!(entries.len() as u64, accepted);
        let head = store.head(&s).unwrap();
        // Chain.
        let mut prev = [0u8; 32];
        for e in &entries {
            prop_assert_eq!(e.prev_hash, prev);
            prop_assert_eq!(merkle::entry_hash(&s, e.seq, e.receipt_time_ms, &e.prev_hash, &e.envelope), e.entry_hash);
            prev = e.entry_hash;
        }
        // Tree: every inclusion proof against the head, consistency from every size.
        for e in &entries {
            let p = store.inclusion_proof(&s, e.seq, head.seq).unwrap();
            prop_assert!(merkle::verify_inclusion(&merkle::leaf_hash(&e.entry_hash), e.seq - 1, head.seq, &p.path, &head.tree_root));
        }
        for old in 0..=head.seq {
            let proof = store.consistency_proof(&s, old, head.seq).unwrap();
            prop_assert!(verify_consistency(old, head.seq, &store.tree_root(&s, old).unwrap(), &head.tree_root, &proof));
        }
        // No (author, nonce) twice.
        let mut seen = std::collections::BTreeSet::new();
        for e in &entries {
            let (_, b) = theta_schemas::Envelope::open(&e.envelope).unwrap();
            prop_assert!(seen.insert((b.author, b.nonce)));
        }
        // Reopening over the same storage verifies everything again.
        store.close();
        drop(store);
        let reopened = Store::with_backend(backend, StoreConfig::default(), key).unwrap();
        prop_assert!(reopened.corrupted().is_empty());
        prop_assert_eq!(reopened.head(&s).unwrap(), head);
    }
}
