//! Recovery: power lost between a block write and its flush; the indexes while the
//! background indexer lags; state checkpoints and the log folded after them.

use std::sync::Arc;

use ed25519_dalek::SigningKey;
use theta_schemas::components::{Name, Transform};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::{Command, Envelope, LogEntry, Role};
use theta_store::backend::PowerLossBackend;
use theta_store::{AppendError, Store, StoreConfig};

use crate::helpers::*;

fn reopen(backend: PowerLossBackend, config: StoreConfig, key: &SigningKey) -> (Arc<PowerLossBackend>, Store) {
    let backend = Arc::new(backend);
    let store = Store::with_backend(backend.clone(), config, key.clone()).unwrap();
    assert!(store.corrupted().is_empty(), "{:?}", store.corrupted());
    (backend, store)
}

#[test]
fn power_lost_between_a_block_write_and_its_flush_loses_only_the_unacknowledged() {
    let key = SigningKey::from_bytes(&[9; 32]);
    // Small state checkpoints, so that reopening folds the log after one.
    let config = StoreConfig { state_checkpoint_every_entries: 7, ..relaxed() };
    let (backend, store) = reopen(PowerLossBackend::new(), config.clone(), &key);
    let s = session(1);
    let mut owner = Author::new(1);
    create_session(&store, &mut owner, s);
    create_entity(&store, &mut owner, s, 1, 0);
    let moves = |a: &mut Author, n: usize| -> Vec<Vec<u8>> {
        (0..n)
            .map(|i| {
                let t = Transform { translation: [i as f32, 0.0, 0.0], ..Transform::default() };
                a.cmd(s, 1, Transform::id(), 0, Command::SetTransform(t))
            })
            .collect()
    };
    assert!(store.append_batch(moves(&mut owner, 30)).iter().all(Result::is_ok));
    let acked = store.head(&s).unwrap();
    let acked_entries = all_entries(&store, &s);
    // The next group is written (its block, nodes and header applied) but its flush fails:
    // nothing of it is acknowledged, and appends are refused while flushes keep failing.
    backend.fail_flushes(1_000);
    let lost = moves(&mut owner, 5);
    for r in store.append_batch(lost.clone()) {
        assert!(matches!(r, Err(AppendError::Storage(_))), "{r:?}");
    }
    assert!(matches!(store.append(&moves(&mut owner, 1)[0]), Err(AppendError::Storage(_))));
    store.close();
    // Power loss: back to what was durable.
    let (_, store) = reopen(backend.power_loss(), config.clone(), &key);
    assert_eq!(store.head(&s).unwrap(), acked, "the durable head is the last acknowledged one");
    assert_eq!(all_entries(&store, &s), acked_entries);
    // The lost envelopes were never accepted: sent again, they are (their Lamport values and
    // nonces were not taken), and the seqs go on without a gap.
    let results = store.append_batch(lost);
    assert!(results.iter().all(Result::is_ok), "{results:?}");
    assert_eq!(results.last().unwrap().as_ref().unwrap().seq, acked.seq + 5);
    // Replays of acknowledged entries are still refused.
    let replayed = store.append(&acked_entries.last().unwrap().envelope);
    assert!(matches!(replayed, Err(AppendError::Replay { first_seq, .. }) if first_seq == acked.seq), "{replayed:?}");
    // And the state checks resume where the log is: entity 1 exists, entity 2 does not.
    let err = store.append(&owner.cmd(s, 2, Name::id(), 0, Command::Rename { name: "x".into() })).unwrap_err();
    assert!(matches!(err, AppendError::Conflict { .. }), "{err}");
    assert!(store.append(&owner.cmd(s, 1, Name::id(), 0, Command::Rename { name: "x".into() })).is_ok());
}

/// What a full scan of the log says an index read must return.
fn scan(entries: &[LogEntry], from: u64, to: u64, keep: impl Fn(&theta_schemas::CommandBody) -> bool) -> Vec<u64> {
    entries
        .iter()
        .filter(|e| e.seq >= from && e.seq <= to && keep(&Envelope::open(&e.envelope).unwrap().1))
        .map(|e| e.seq)
        .collect()
}

#[test]
fn index_reads_equal_a_full_scan_while_the_indexer_lags_and_after_it_catches_up() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig { durability: theta_store::Durability::None, ..relaxed() };
    let s = session(3);
    let mut owner = Author::new(1);
    let mut editors: Vec<Author> = (0..3).map(|i| Author::new(20 + i)).collect();
    let ids: Vec<_> = std::iter::once(owner.id()).chain(editors.iter().map(Author::id)).collect();
    let check = |store: &Store, when: &str| {
        let entries = all_entries(store, &s);
        let head = entries.len() as u64;
        for (from, to) in
            [(1, u64::MAX), (1, 10), (4_000, 4_200), (4_090, 9_000), (head - 50, head), (head + 1, u64::MAX)]
        {
            for a in &ids {
                let got: Vec<u64> = store.read_by_author(&s, a, from, to).unwrap().map(|e| e.unwrap().seq).collect();
                assert_eq!(got, scan(&entries, from, to, |b| b.author == *a), "{when}: author, {from}..={to}");
            }
            for entity in [1u64, 2, 7, 13] {
                let got: Vec<u64> =
                    store.read_by_entity(&s, entity, from, to).unwrap().map(|e| e.unwrap().seq).collect();
                assert_eq!(
                    got,
                    scan(&entries, from, to, |b| b.entity == entity),
                    "{when}: entity {entity}, {from}..={to}"
                );
            }
        }
    };
    {
        let store = Store::open(dir.path(), config.clone()).unwrap();
        create_session(&store, &mut owner, s);
        for e in &editors {
            grant(&store, &mut owner, s, e, Role::Editor);
        }
        for entity in 1..=13 {
            create_entity(&store, &mut owner, s, entity, 0);
        }
        // 9,000 edits: two runs of 4,096 and a tail; queried at once, while the indexer has
        // written none, some or all of them.
        for round in 0..9 {
            let batch: Vec<Vec<u8>> = (0..1_000u64)
                .map(|i| {
                    let a = &mut editors[((round * 1_000 + i) % 3) as usize];
                    let entity = 1 + (i * 7 + round) % 13;
                    a.cmd(s, entity, Name::id(), 0, Command::Rename { name: format!("{round}-{i}") })
                })
                .collect();
            assert!(store.append_batch(batch).iter().all(Result::is_ok));
            check(&store, "lagging");
        }
        store.sync_indexes();
        check(&store, "caught up");
    }
    // Reopened: the runs on disk plus the log after the watermark.
    let store = Store::open(dir.path(), config).unwrap();
    check(&store, "reopened");
    store.sync_indexes();
    check(&store, "reopened, caught up");
}
