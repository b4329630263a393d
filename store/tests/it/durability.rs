//! Durability modes and reopening.

use theta_schemas::Command;
use theta_schemas::components::Transform;
use theta_schemas::ids::ComponentMeta;
use theta_store::{Durability, Store, StoreConfig};

use crate::helpers::*;

#[test]
fn every_mode_persists_across_a_clean_close() {
    for durability in [Durability::Sync, Durability::IntervalMs(5), Durability::None] {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig { durability, ..relaxed() };
        let s = session(1);
        let mut owner = Author::new(1);
        let head = {
            let store = Store::open(dir.path(), config.clone()).unwrap();
            create_session(&store, &mut owner, s);
            create_entity(&store, &mut owner, s, 1, 0);
            let batch: Vec<Vec<u8>> = (0..100)
                .map(|_| owner.cmd(s, 1, Transform::id(), 0, Command::SetTransform(Transform::default())))
                .collect();
            assert!(store.append_batch(batch).iter().all(Result::is_ok));
            let head = store.head(&s).unwrap();
            assert_eq!(head.seq, 102);
            let m = store.metrics();
            assert_eq!(m.appends_accepted, 102);
            if durability == Durability::Sync {
                assert!(m.flushes >= 1 && m.flushes <= m.batches_committed, "{m:?}");
            }
            head
        };
        let store = Store::open(dir.path(), config).unwrap();
        assert!(store.corrupted().is_empty());
        assert_eq!(store.head(&s).unwrap(), head, "{durability:?}");
        assert_eq!(all_entries(&store, &s).len(), 102);
    }
}

#[test]
fn concurrent_appends_are_group_committed() {
    let dir = tempfile::tempdir().unwrap();
    let store = std::sync::Arc::new(Store::open(dir.path(), relaxed()).unwrap());
    let s = session(1);
    let mut owner = Author::new(1);
    create_session(&store, &mut owner, s);
    create_entity(&store, &mut owner, s, 1, 0);
    let mut handles = Vec::new();
    for i in 0..16u8 {
        let mut a = Author::new(40 + i);
        grant(&store, &mut owner, s, &a, theta_schemas::Role::Editor);
        let store = store.clone();
        handles.push(std::thread::spawn(move || {
            for _ in 0..50 {
                store.append(&a.cmd(s, 1, Transform::id(), 0, Command::SetTransform(Transform::default()))).unwrap();
            }
        }));
    }
    for h in handles {
        h.join().unwrap();
    }
    let m = store.metrics();
    assert_eq!(store.head(&s).unwrap().seq, 2 + 16 + 800);
    // 16 writers waiting on flushes share them: fewer flushes than appends.
    assert!(m.flushes < m.appends_accepted, "{} flushes for {} appends", m.flushes, m.appends_accepted);
    assert_eq!(m.queue_depth, 0);
}
