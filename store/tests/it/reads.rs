//! Reads, proofs, signed tree heads, checkpoints, trusted import and corruption detection.

use theta_schemas::components::{Name, Transform};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::{Command, Envelope};
use theta_store::merkle::{self, verify_consistency};
use theta_store::{ReadError, Store, StoreConfig, VerifyOnOpen};

use crate::helpers::*;

/// A session with two authors, a few entities and some edits; returns (store, session).
fn scene(store: &Store) -> (theta_schemas::SessionId, Author, Author) {
    let s = session(3);
    let mut owner = Author::new(1);
    let mut editor = Author::new(2);
    create_session(store, &mut owner, s);
    grant(store, &mut owner, s, &editor, theta_schemas::Role::Editor);
    for e in 1..=5 {
        create_entity(store, if e % 2 == 0 { &mut editor } else { &mut owner }, s, e, 0);
    }
    for i in 0..20u64 {
        let e = 1 + i % 5;
        let t = Transform { translation: [i as f32, 0.0, 0.0], ..Transform::default() };
        let a = if i % 3 == 0 { &mut owner } else { &mut editor };
        store.append(&a.cmd(s, e, Transform::id(), 0, Command::SetTransform(t))).unwrap();
    }
    (s, owner, editor)
}

#[test]
fn reads_by_range_author_and_entity() {
    let store = Store::open_in_memory(relaxed());
    let (s, owner, editor) = scene(&store);
    let all = all_entries(&store, &s);
    assert_eq!(all.len(), 27);
    assert_eq!(store.head(&s).unwrap().seq, 27);
    let mid: Vec<u64> = store.read_range(&s, 5, 9).unwrap().map(|e| e.unwrap().seq).collect();
    assert_eq!(mid, vec![5, 6, 7, 8, 9]);
    // Clamped to the head.
    assert_eq!(store.read_range(&s, 26, 1_000).unwrap().count(), 2);
    let by = |a: &Author| -> Vec<u64> {
        store.read_by_author(&s, &a.id(), 1, u64::MAX).unwrap().map(|e| e.unwrap().seq).collect()
    };
    let expected = |a: &Author| -> Vec<u64> {
        all.iter().filter(|e| Envelope::open(&e.envelope).unwrap().1.author == a.id()).map(|e| e.seq).collect()
    };
    assert_eq!(by(&owner), expected(&owner));
    assert_eq!(by(&editor), expected(&editor));
    assert_eq!(by(&owner).len() + by(&editor).len(), 27);
    let entity3: Vec<u64> = store.read_by_entity(&s, 3, 1, u64::MAX).unwrap().map(|e| e.unwrap().seq).collect();
    let want: Vec<u64> =
        all.iter().filter(|e| Envelope::open(&e.envelope).unwrap().1.entity == 3).map(|e| e.seq).collect();
    assert_eq!(entity3, want);
    assert_eq!(entity3.len(), 5);
    // Chain links.
    for w in all.windows(2) {
        assert_eq!(w[1].prev_hash, w[0].entry_hash);
    }
    assert_eq!(store.head(&s).unwrap().last_entry_hash, all.last().unwrap().entry_hash);
    // Unknown sessions and out-of-range reads are typed errors.
    assert!(matches!(store.head(&session(99)), Err(ReadError::UnknownSession { .. })));
    assert!(matches!(store.entry(&s, 28), Err(ReadError::OutOfRange { .. })));
}

#[test]
fn proofs_verify_independently() {
    let store = Store::open_in_memory(relaxed());
    let (s, _, _) = scene(&store);
    let head = store.head(&s).unwrap();
    let all = all_entries(&store, &s);
    for size in 1..=head.seq {
        let root = store.tree_root(&s, size).unwrap();
        for seq in 1..=size {
            let proof = store.inclusion_proof(&s, seq, size).unwrap();
            assert_eq!(proof.root, root);
            assert_eq!(proof.leaf_hash, merkle::leaf_hash(&all[seq as usize - 1].entry_hash));
            assert!(proof.verify(), "seq {seq} in {size}");
        }
        for old in 0..=size {
            let old_root = store.tree_root(&s, old).unwrap();
            let proof = store.consistency_proof(&s, old, size).unwrap();
            assert!(verify_consistency(old, size, &old_root, &root, &proof), "{old} -> {size}");
        }
    }
    assert_eq!(store.tree_root(&s, head.seq).unwrap(), head.tree_root);
    let sth = store.signed_tree_head(&s).unwrap();
    assert_eq!((sth.tree_size, sth.root), (head.seq, head.tree_root));
    assert!(sth.verify());
    let mut forged = sth.clone();
    forged.tree_size -= 1;
    assert!(!forged.verify());
    assert!(matches!(store.inclusion_proof(&s, 5, head.seq + 1), Err(ReadError::OutOfRange { .. })));
    assert!(matches!(store.consistency_proof(&s, 5, 4), Err(ReadError::OutOfRange { .. })));
}

#[test]
fn receipts_prove_inclusion() {
    let store = Store::open_in_memory(relaxed());
    let (s, mut owner, _) = scene(&store);
    let r = store.append(&owner.cmd(s, 1, Name::id(), 0, Command::Rename { name: "x".into() })).unwrap();
    assert_eq!(r.seq, 28);
    let proof = store.inclusion_proof(&s, r.seq, r.tree_size).unwrap();
    assert_eq!(proof.root, r.tree_root);
    assert!(merkle::verify_inclusion(
        &merkle::leaf_hash(&r.entry_hash),
        r.seq - 1,
        r.tree_size,
        &proof.path,
        &r.tree_root
    ));
}

#[test]
fn checkpoints_are_a_cache() {
    let store = Store::open_in_memory(relaxed());
    let (s, _, _) = scene(&store);
    assert_eq!(store.checkpoint_at_or_below(&s, 100).unwrap(), None);
    store.put_checkpoint(&s, 10, b"ten".to_vec()).unwrap();
    store.put_checkpoint(&s, 20, b"twenty".to_vec()).unwrap();
    assert_eq!(store.checkpoint_at_or_below(&s, 9).unwrap(), None);
    assert_eq!(store.checkpoint_at_or_below(&s, 15).unwrap(), Some((10, b"ten".to_vec())));
    assert_eq!(store.checkpoint_at_or_below(&s, 20).unwrap(), Some((20, b"twenty".to_vec())));
    assert_eq!(store.delete_checkpoints(&s).unwrap(), 2);
    assert_eq!(store.checkpoint_at_or_below(&s, 100).unwrap(), None);
}

#[test]
fn trusted_import_reproduces_the_log_exactly() {
    let source = Store::open_in_memory(relaxed());
    let (s, _, _) = scene(&source);
    let entries = all_entries(&source, &s);
    let target = Store::open_in_memory(relaxed());
    assert_eq!(target.import(s, entries[..10].to_vec()).unwrap(), 10);
    assert_eq!(target.import(s, entries[10..].to_vec()).unwrap(), 27);
    assert_eq!(target.head(&s).unwrap(), source.head(&s).unwrap());
    assert_eq!(all_entries(&target, &s), entries);
    // A gap, a tampered entry, or a replay of the same entries is refused, writing nothing.
    let other = Store::open_in_memory(relaxed());
    assert!(matches!(other.import(s, entries[1..].to_vec()), Err(theta_store::ImportError::Chain { seq: 2, .. })));
    let mut tampered = entries.clone();
    tampered[4].receipt_time_ms += 1;
    assert!(matches!(other.import(s, tampered), Err(theta_store::ImportError::Chain { seq: 5, .. })));
    assert!(other.head(&s).is_err(), "nothing of a failed import is written");
    assert!(target.import(s, entries[26..].to_vec()).is_err());
}

#[test]
fn a_changed_byte_in_a_stored_entry_is_detected_on_open_with_its_position() {
    for (mode, seq) in [(VerifyOnOpen::Full, 4u64), (VerifyOnOpen::Full, 27), (VerifyOnOpen::Tail, 27)] {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig { verify_on_open: mode, verified_checkpoint_every_entries: 10, ..relaxed() };
        let (s, healthy) = {
            let store = Store::open(dir.path(), config.clone()).unwrap();
            let (s, _, _) = scene(&store);
            // A second, healthy session.
            let mut other = Author::new(50);
            let healthy = session(4);
            create_session(&store, &mut other, healthy);
            (s, healthy)
        };
        if mode == VerifyOnOpen::Tail {
            // Opened once: everything is now verified, so only later entries are checked.
            let store = Store::open(dir.path(), config.clone()).unwrap();
            assert!(store.corrupted().is_empty());
            let mut owner = Author::new(1);
            owner.lamport = 100;
            owner.nonce = 1 << 40;
            let r = store.append(&owner.cmd(s, 1, Name::id(), 0, Command::Rename { name: "late".into() })).unwrap();
            assert_eq!(r.seq, 28);
        }
        let target = if mode == VerifyOnOpen::Tail { 28 } else { seq };
        // Change one byte inside the stored entry, behind the store's back. Entries live in
        // blocks (`E | session | first seq`: codec 1 = zstd, the plain length as u32 LE, the
        // zstd frame; plainly, each entry behind a u32 LE length).
        {
            let db = open_raw_sled(dir.path());
            let tree = db.open_tree("theta").unwrap();
            let mut prefix = vec![b'E'];
            prefix.extend_from_slice(&s.0);
            let (key, stored) = tree
                .scan_prefix(&prefix)
                .map(Result::unwrap)
                .filter(|(k, _)| u64::from_be_bytes(k[17..25].try_into().unwrap()) <= target)
                .last()
                .expect("block present");
            let first = u64::from_be_bytes(key[17..25].try_into().unwrap());
            assert_eq!(stored[0], 1, "zstd block");
            let len = u32::from_le_bytes(stored[1..5].try_into().unwrap()) as usize;
            let mut block = zstd::bulk::decompress(&stored[5..], len).unwrap();
            let mut at = 0usize;
            for _ in first..target {
                at += 4 + u32::from_le_bytes(block[at..at + 4].try_into().unwrap()) as usize;
            }
            let len = u32::from_le_bytes(block[at..at + 4].try_into().unwrap()) as usize;
            block[at + 4 + len - 40] ^= 0x20; // inside the envelope
            let mut block_stored = vec![1u8];
            block_stored.extend_from_slice(&(block.len() as u32).to_le_bytes());
            block_stored.extend_from_slice(&zstd::bulk::compress(&block, 1).unwrap());
            let block = block_stored;
            tree.insert(key, block).unwrap();
            db.flush().unwrap();
        }
        let store = Store::open(dir.path(), config).unwrap();
        let corrupted = store.corrupted();
        assert_eq!(corrupted.len(), 1, "{mode:?}: {corrupted:?}");
        assert_eq!((corrupted[0].0, corrupted[0].1), (s, target), "{mode:?}: {}", corrupted[0].2);
        // The corrupted session refuses to serve; the healthy one is fine.
        assert!(matches!(store.head(&s), Err(ReadError::Corrupted { seq, .. }) if seq == target));
        assert!(matches!(store.read_range(&s, 1, 5), Err(ReadError::Corrupted { .. })));
        let mut owner = Author::new(1);
        owner.lamport = 1_000;
        owner.nonce = 1 << 41;
        let err = store.append(&owner.cmd(s, 1, Name::id(), 0, Command::Rename { name: "x".into() })).unwrap_err();
        assert!(matches!(err, theta_store::AppendError::Corrupted { .. }), "{err}");
        assert_eq!(store.head(&healthy).unwrap().seq, 1);
    }
}

#[test]
fn reads_and_proofs_cross_block_boundaries() {
    for max_block_bytes in [1, 1_000, 32 * 1024] {
        let dir = tempfile::tempdir().unwrap();
        let config = StoreConfig { max_block_bytes, ..relaxed() };
        let s = session(6);
        let mut owner = Author::new(1);
        let mut editor = Author::new(2);
        let (head, entries) = {
            let store = Store::open(dir.path(), config.clone()).unwrap();
            create_session(&store, &mut owner, s);
            grant(&store, &mut owner, s, &editor, theta_schemas::Role::Editor);
            create_entity(&store, &mut owner, s, 1, 0);
            create_entity(&store, &mut owner, s, 2, 0);
            let batch: Vec<Vec<u8>> = (0..150u64)
                .map(|i| {
                    let a = if i % 2 == 0 { &mut owner } else { &mut editor };
                    let t = Transform { translation: [i as f32, 0.0, 0.0], ..Transform::default() };
                    a.cmd(s, 1 + i % 2, Transform::id(), 0, Command::SetTransform(t))
                })
                .collect();
            assert!(store.append_batch(batch).iter().all(Result::is_ok));
            (store.head(&s).unwrap(), all_entries(&store, &s))
        };
        // Reopen: full verification walks every block.
        let store = Store::open(dir.path(), config).unwrap();
        assert!(store.corrupted().is_empty(), "{max_block_bytes}: {:?}", store.corrupted());
        assert_eq!(store.head(&s).unwrap(), head);
        assert_eq!(all_entries(&store, &s), entries);
        for (from, to) in [(1, 1), (3, 9), (40, 41), (100, 154), (154, 154)] {
            let got: Vec<u64> = store.read_range(&s, from, to).unwrap().map(|e| e.unwrap().seq).collect();
            assert_eq!(got, (from..=to).collect::<Vec<_>>(), "{max_block_bytes}: {from}..={to}");
        }
        let by_entity: Vec<u64> = store.read_by_entity(&s, 2, 10, 60).unwrap().map(|e| e.unwrap().seq).collect();
        let want: Vec<u64> = entries
            .iter()
            .filter(|e| e.seq >= 10 && e.seq <= 60 && Envelope::open(&e.envelope).unwrap().1.entity == 2)
            .map(|e| e.seq)
            .collect();
        assert_eq!(by_entity, want);
        let by_author = store.read_by_author(&s, &editor.id(), 1, u64::MAX).unwrap().count();
        assert_eq!(by_author, 75);
        for seq in [1, 2, 3, 4, 5, 77, 153, 154] {
            assert!(store.inclusion_proof(&s, seq, head.seq).unwrap().verify(), "{max_block_bytes}: {seq}");
        }
        assert_eq!(store.tree_root(&s, head.seq).unwrap(), head.tree_root);
    }
}

/// Opens the sled database under a store directly, waiting for a just-dropped store's
/// background threads to release sled's file lock (as `Store::open` does).
fn open_raw_sled(path: &std::path::Path) -> sled::Db {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match sled::Config::new().path(path).segment_size(theta_store::backend::SEGMENT_BYTES).open() {
            Ok(db) => return db,
            Err(e) if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("open sled in {}: {e}", path.display()),
        }
    }
}

/// Merkle nodes of levels 4–8 live in node pages written when 256 leaves are complete; the
/// incomplete tail's nodes are rebuilt from the entries when the store opens. Roots and proofs
/// at every size equal the tree over the entries, across page boundaries and
/// reopens in the middle of a page; a changed page is found on open.
#[test]
fn node_pages_survive_reopening_mid_page_and_a_changed_page_is_found() {
    let dir = tempfile::tempdir().unwrap();
    let config = StoreConfig { verify_on_open: VerifyOnOpen::Full, ..relaxed() };
    let s = session(8);
    let mut owner = Author::new(1);
    let first = owner.cmd(s, 0, theta_schemas::ComponentId::NONE, 0, Command::CreateSession { name: "pages".into() });
    let create = owner.cmd(
        s,
        1,
        theta_schemas::ComponentId::NONE,
        0,
        Command::CreateEntity { shape: theta_schemas::Shape::Cube, name: "e".into(), parent: 0 },
    );
    let mut batches = vec![vec![first, create]];
    for n in [298usize, 250, 300] {
        batches.push(
            (0..n)
                .map(|i| {
                    let t = Transform { translation: [i as f32, 0.0, 0.0], ..Transform::default() };
                    owner.cmd(s, 1, Transform::id(), 0, Command::SetTransform(t))
                })
                .collect(),
        );
    }
    for batch in &batches {
        // Each batch into a freshly opened store: the heads 2, 300, 550, 850 fall mid-page.
        let store = Store::open(dir.path(), config.clone()).unwrap();
        assert!(store.corrupted().is_empty(), "{:?}", store.corrupted());
        assert!(store.append_batch(batch.clone()).iter().all(Result::is_ok));
    }
    let store = Store::open(dir.path(), config.clone()).unwrap();
    assert!(store.corrupted().is_empty(), "{:?}", store.corrupted());
    let head = store.head(&s).unwrap();
    assert_eq!(head.seq, 850);
    // The roots of every size, from the entries alone.
    let mut frontier = merkle::Frontier::new();
    let mut roots = vec![merkle::empty_root()];
    for e in all_entries(&store, &s) {
        frontier.push(merkle::leaf_hash(&e.entry_hash), |_, _, _| {});
        roots.push(frontier.root());
    }
    assert_eq!(head.tree_root, roots[850]);
    for size in (1..=head.seq).step_by(13).chain([255, 256, 257, 511, 512, 513, 768, 850]) {
        let root = store.tree_root(&s, size).unwrap();
        assert_eq!(root, roots[size as usize], "root at {size}");
        for seq in [1, size / 3 + 1, size / 2 + 1, size] {
            let proof = store.inclusion_proof(&s, seq, size).unwrap();
            assert_eq!(proof.root, root);
            assert!(proof.verify(), "seq {seq} in {size}");
        }
        let old = size / 2;
        let proof = store.consistency_proof(&s, old, size).unwrap();
        assert!(verify_consistency(old, size, &store.tree_root(&s, old).unwrap(), &root, &proof), "{old} -> {size}");
    }
    drop(store);
    // Change one byte of the second page (leaves 257..=512) behind the store's back.
    {
        let db = open_raw_sled(dir.path());
        let tree = db.open_tree("theta").unwrap();
        let key = [&[b'G'][..], &s.0, &1u64.to_be_bytes()].concat();
        let mut page = tree.get(&key).unwrap().expect("page 1 stored").to_vec();
        assert_eq!(page.len(), 31 * 32, "31 hashes per page");
        page[40] ^= 1;
        tree.insert(key, page).unwrap();
        db.flush().unwrap();
    }
    let store = Store::open(dir.path(), config).unwrap();
    let corrupted = store.corrupted();
    assert_eq!(corrupted.len(), 1, "{corrupted:?}");
    assert_eq!(corrupted[0].1, 512, "found when the page's last leaf is checked");
    assert!(corrupted[0].2.contains("Merkle node page 1"), "{}", corrupted[0].2);
}
