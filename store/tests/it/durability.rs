//! Durability modes and reopening.

use theta_schemas::components::Transform;
use theta_schemas::ids::ComponentMeta;
use theta_schemas::{Command, Envelope};
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

/// Verification runs on several workers that finish out of order; the committer must still
/// see every author's commands in the order they were submitted (or the Lamport rule would
/// refuse some). More workers than cores and small batches make reordering likely; forged
/// signatures among them make some batches slow (split in halves).
#[test]
fn pipelined_appends_commit_in_submission_order_across_verification_workers() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig { verify_threads: 4, max_batch_entries: 24, ..relaxed() };
    let store = Store::open(dir.path(), config).unwrap();
    let s = session(7);
    let mut owner = Author::new(1);
    create_session(&store, &mut owner, s);
    let mut authors: Vec<Author> = (0..6).map(|i| Author::new(20 + i)).collect();
    for a in &authors {
        grant(&store, &mut owner, s, a, theta_schemas::Role::Editor);
    }
    create_entity(&store, &mut owner, s, 1, 0);
    let forger = ed25519_dalek::SigningKey::from_bytes(&[99; 32]);
    let (tx, rx) = std::sync::mpsc::channel();
    let mut expected_ok = 0;
    for round in 0..300u64 {
        for (i, a) in authors.iter_mut().enumerate() {
            let body = a.body(s, 1, Transform::id(), 0, Command::SetTransform(Transform::default()));
            // Every 50th command of author 0 is signed by someone else.
            let forged = i == 0 && round % 50 == 25;
            let bytes = if forged { Envelope::sign(&body, &forger).encode() } else { a.seal(&body) };
            if forged {
                // The author's clock moved on: its next command must still be accepted.
                a.lamport -= 1;
            } else {
                expected_ok += 1;
            }
            let tx = tx.clone();
            store.submit(bytes, move |r| {
                let _ = tx.send((i, body.lamport, forged, r));
            });
        }
    }
    drop(tx);
    let (mut accepted, mut refused) = (0, 0);
    for (i, lamport, forged, r) in rx {
        match (forged, r) {
            (false, Ok(_)) => accepted += 1,
            (true, Err(theta_store::AppendError::Signature(_))) => refused += 1,
            (forged, other) => panic!("author {i} lamport {lamport} (forged {forged}): {other:?}"),
        }
    }
    assert_eq!((accepted, refused), (expected_ok, 6));
    // Each author's entries are in the log in Lamport order.
    let mut last = vec![0u64; authors.len()];
    for e in all_entries(&store, &s).iter().skip(1 + authors.len() + 1) {
        let body = Envelope::open(&e.envelope).unwrap().1;
        let i = authors.iter().position(|a| a.id() == body.author).expect("a test author");
        assert!(body.lamport > last[i], "author {i}: lamport {} after {}", body.lamport, last[i]);
        last[i] = body.lamport;
    }
    assert!(store.metrics().batch_verify_fallbacks >= 1, "forged signatures took the split path");
}
