//! Time travel over a real store: any seq from checkpoints equals the fold from scratch.

use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use theta_gateway::history::{entity_history, project, write_checkpoints};
use theta_projector::Projection;
use theta_schemas::components::{Name, Transform};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::signing::author_key;
use theta_schemas::{Command, CommandBody, ComponentId, Envelope, SessionId, Shape};
use theta_store::{Store, StoreConfig};

const S: SessionId = SessionId([5; 16]);

/// A store holding one session of `n` entries (creates, moves, renames, deletes).
fn store_with_log(n: u64) -> Store {
    let store = Store::open_in_memory(StoreConfig { rate_per_sec: 1e9, rate_burst: 1e9, ..StoreConfig::default() });
    let key = SigningKey::from_bytes(&[1; 32]);
    let mut lamport = 0;
    let mut body = |entity: u64, component: ComponentId, command: Command| {
        lamport += 1;
        let b = CommandBody {
            session: S,
            author: author_key(&key),
            lamport,
            nonce: lamport,
            wall_clock_ms: 0,
            entity,
            component,
            base_version: 0,
            command,
        };
        Envelope::sign(&b, &key).encode()
    };
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    let mut batch = vec![body(0, ComponentId::NONE, Command::CreateSession { name: "h".into() })];
    for e in 1..=20 {
        batch.push(body(
            e,
            ComponentId::NONE,
            Command::CreateEntity { shape: Shape::Cube, name: format!("{e}"), parent: 0 },
        ));
    }
    while (batch.len() as u64) < n {
        let e = rng.gen_range(1..=20u64);
        batch.push(if rng.gen_bool(0.8) {
            let t = Transform { translation: [rng.gen_range(-5.0..5.0), 0.0, 0.0], ..Transform::default() };
            body(e, Transform::id(), Command::SetTransform(t))
        } else {
            body(e, Name::id(), Command::Rename { name: format!("r{}", rng.gen_range(0..9)) })
        });
    }
    assert!(store.append_batch(batch).iter().all(Result::is_ok));
    store
}

fn scratch(store: &Store, at: u64) -> Projection {
    let mut p = Projection::new(S);
    for e in store.read_range(&S, 1, at).unwrap() {
        p.apply_entry(&e.unwrap()).unwrap();
    }
    p
}

#[test]
fn every_seq_from_checkpoints_equals_the_fold_from_scratch() {
    let store = store_with_log(400);
    assert_eq!(write_checkpoints(&store, &S, 50).unwrap(), 8);
    assert_eq!(write_checkpoints(&store, &S, 50).unwrap(), 0, "idempotent");
    for at in (0..=400).step_by(7).chain([49, 50, 51, 399, 400]) {
        let opened = project(&store, &S, at).unwrap();
        let want = scratch(&store, at);
        assert_eq!(opened.projection.state_hash(), want.state_hash(), "seq {at}");
        assert_eq!(opened.projection.dump(), want.dump(), "seq {at}");
        assert_eq!(opened.checkpoint_seq, (at >= 50).then_some(at / 50 * 50));
        assert!(opened.replayed < 50);
    }
    assert!(matches!(project(&store, &S, 401), Err(theta_gateway::history::HistoryError::OutOfRange { .. })));
}

#[test]
fn deleting_checkpoints_changes_only_speed_and_corrupt_ones_are_skipped() {
    let store = store_with_log(300);
    write_checkpoints(&store, &S, 100).unwrap();
    let with = project(&store, &S, 250).unwrap();
    assert_eq!((with.checkpoint_seq, with.replayed), (Some(200), 50));
    // Corrupt the checkpoint at 200: the one at 100 is used instead, same world.
    let (_, mut bytes) = store.checkpoint_at_or_below(&S, 200).unwrap().unwrap();
    let n = bytes.len();
    bytes[n - 5] ^= 0xff;
    store.put_checkpoint(&S, 200, bytes).unwrap();
    let skipped = project(&store, &S, 250).unwrap();
    assert_eq!(skipped.checkpoint_seq, Some(100));
    assert_eq!(skipped.skipped.len(), 1);
    assert_eq!(skipped.skipped[0].0, 200);
    assert_eq!(skipped.projection.state_hash(), with.projection.state_hash());
    // A checkpoint stored under the wrong seq is refused too.
    let (_, good) = store.checkpoint_at_or_below(&S, 100).unwrap().unwrap();
    store.put_checkpoint(&S, 150, good).unwrap();
    let wrong = project(&store, &S, 160).unwrap();
    assert_eq!(wrong.checkpoint_seq, Some(100));
    assert_eq!(wrong.projection.state_hash(), scratch(&store, 160).state_hash());
    // No checkpoints at all.
    store.delete_checkpoints(&S).unwrap();
    let none = project(&store, &S, 250).unwrap();
    assert_eq!((none.checkpoint_seq, none.replayed), (None, 250));
    assert_eq!(none.projection.state_hash(), with.projection.state_hash());
}

#[test]
fn entity_history_lists_every_entry_that_touched_it() {
    let store = store_with_log(200);
    let seqs: Vec<u64> = entity_history(&store, &S, 7, 1, u64::MAX).unwrap().map(|e| e.unwrap().seq).collect();
    let want: Vec<u64> = store
        .read_range(&S, 1, 200)
        .unwrap()
        .map(|e| e.unwrap())
        .filter(|e| Envelope::open(&e.envelope).unwrap().1.entity == 7)
        .map(|e| e.seq)
        .collect();
    assert_eq!(seqs, want);
    assert!(seqs.len() > 3);
}
