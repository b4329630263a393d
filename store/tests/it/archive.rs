//! Backup → restore, and migration from formats 1 and 2, through the verified import path.

use theta_schemas::components::{Name, Transform};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::{Command, Role, SessionId};
use theta_store::archive::{self, ArchiveError};
use theta_store::{OpenError, Store};

use crate::helpers::*;

/// Two sessions with edits by two authors, and rejections in a session trail and the global one.
fn populated(store: &Store) -> Vec<SessionId> {
    let mut sessions = Vec::new();
    for n in [1u8, 2] {
        let s = session(n);
        let mut owner = Author::new(n);
        let mut editor = Author::new(50 + n);
        create_session(store, &mut owner, s);
        grant(store, &mut owner, s, &editor, Role::Editor);
        for e in 1..=5 {
            create_entity(store, &mut owner, s, e, 0);
        }
        let batch: Vec<Vec<u8>> = (0..300u64)
            .map(|i| {
                let t = Transform { translation: [i as f32, 0.0, 0.0], ..Transform::default() };
                editor.cmd(s, 1 + i % 5, Transform::id(), 0, Command::SetTransform(t))
            })
            .collect();
        assert!(store.append_batch(batch).iter().all(Result::is_ok));
        // A rejection in the session's trail (an unknown entity) and one in the global trail.
        let _ = store.append(&editor.cmd(s, 99, Name::id(), 0, Command::Rename { name: "x".into() }));
        sessions.push(s);
    }
    let _ = store.append(b"not an envelope");
    sessions
}

#[test]
fn backup_then_restore_gives_the_same_heads_roots_entries_and_trails() {
    let dir = tempfile::tempdir().unwrap();
    let source = Store::open(dir.path().join("a"), relaxed()).unwrap();
    let sessions = populated(&source);
    let mut file = Vec::new();
    let mut reports = 0;
    let made = archive::backup(&source, &mut file, &mut |_| reports += 1).unwrap();
    assert!(reports >= 1, "progress is reported");
    assert_eq!(made.entries, 2 * (2 + 5 + 300));
    assert_eq!(made.rejections, 3, "two session trail records and one global");
    let target = Store::open(dir.path().join("b"), relaxed()).unwrap();
    let restored = archive::restore(&target, &file[..], &mut |_| {}).unwrap();
    assert_eq!(restored, made);
    for s in &sessions {
        assert_eq!(target.head(s).unwrap(), source.head(s).unwrap());
        assert_eq!(all_entries(&target, s), all_entries(&source, s));
        let reasons = |st: &Store| st.rejections(Some(s)).unwrap().into_iter().map(|r| r.reason).collect::<Vec<_>>();
        assert_eq!(reasons(&target), reasons(&source));
    }
    assert_eq!(target.rejections(None).unwrap().len(), 1);
    // A restored store takes new appends where the original left off.
    let mut editor = Author::new(51);
    editor.lamport = 10_000;
    editor.nonce = 1 << 50;
    let r =
        target.append(&editor.cmd(sessions[0], 1, Name::id(), 0, Command::Rename { name: "after".into() })).unwrap();
    assert_eq!(r.seq, source.head(&sessions[0]).unwrap().seq + 1);

    // A damaged or cut file is refused.
    for (what, bytes) in [
        ("cut", file[..file.len() - 20].to_vec()),
        ("changed", {
            let mut f = file.clone();
            let at = f.len() / 2;
            f[at] ^= 0x40;
            f
        }),
        ("not a backup", b"PK\x03\x04 something else".to_vec()),
    ] {
        let fresh = Store::open_in_memory(relaxed());
        let err = archive::restore(&fresh, &bytes[..], &mut |_| {});
        assert!(err.is_err(), "{what}: {err:?}");
    }
}

/// Writes a store of an older format holding `source`'s sessions, as a store of that format
/// did. Format 1 (before the format key): plain log blocks, no format key. Format 2: the
/// format key, compressed blocks (codec 1, plain length, zstd frame); its Merkle nodes (one per
/// key) are left out: migration rebuilds the tree from the entries.
fn write_old_format(dir: &std::path::Path, source: &Store, format: u8) {
    let db = sled::open(dir).unwrap();
    let tree = db.open_tree("theta").unwrap();
    if format >= 2 {
        tree.insert(b"F", vec![format]).unwrap();
    }
    for head in source.sessions() {
        let s = head.session;
        let mut meta = Vec::new();
        meta.extend_from_slice(&head.seq.to_be_bytes());
        meta.extend_from_slice(&head.last_entry_hash);
        meta.extend_from_slice(&head.clock.to_be_bytes());
        meta.extend_from_slice(&0u64.to_be_bytes());
        meta.extend_from_slice(&0u64.to_be_bytes());
        meta.extend_from_slice(head.name.as_bytes());
        tree.insert([&[b'S'][..], &s.0].concat(), meta).unwrap();
        for chunk in all_entries(source, &s).chunks(40) {
            let mut block = Vec::new();
            for e in chunk {
                let bytes = e.encode();
                block.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
                block.extend_from_slice(&bytes);
            }
            if format >= 2 {
                let packed = zstd::bulk::compress(&block, 1).unwrap();
                block = [&[1u8][..], &(block.len() as u32).to_le_bytes(), &packed].concat();
            }
            tree.insert([&[b'E'][..], &s.0, &chunk[0].seq.to_be_bytes()].concat(), block).unwrap();
        }
    }
    db.flush().unwrap();
}

#[test]
fn older_formats_are_refused_with_advice_and_migrated_whole() {
    for format in [1u8, 2] {
        migrate_from(format);
    }
}

fn migrate_from(format: u8) {
    let dir = tempfile::tempdir().unwrap();
    let source = Store::open_in_memory(relaxed());
    let sessions = populated(&source);
    let old = dir.path().join("data");
    write_old_format(&old, &source, format);
    std::fs::write(old.join("service.key"), format!("{}\n", "ab".repeat(32))).unwrap();
    let err = Store::open(&old, relaxed()).err().expect("an older format refused");
    assert!(
        matches!(err, OpenError::Format { found, supported } if found == format && supported == theta_store::FORMAT_VERSION),
        "{err}"
    );
    assert!(err.to_string().contains("theta store migrate"), "{err}");

    let summary = archive::migrate(&old, relaxed(), &mut |_| {}).unwrap();
    assert_eq!(summary.entries, 2 * (2 + 5 + 300));
    assert!(dir.path().join(format!("data.format-{format}")).join("db").exists(), "the old directory is kept");
    let store = Store::open(&old, relaxed()).unwrap();
    assert!(store.corrupted().is_empty());
    for s in &sessions {
        assert_eq!(store.head(s).unwrap(), source.head(s).unwrap());
        assert_eq!(all_entries(&store, s), all_entries(&source, s));
    }
    // The service key moved with the data.
    assert_eq!(std::fs::read_to_string(old.join("service.key")).unwrap().trim(), "ab".repeat(32));
    // Migrating again says there is nothing to do.
    store.close();
    drop(store);
    let again = archive::migrate(&old, relaxed(), &mut |_| {});
    assert!(matches!(again, Err(ArchiveError::Invalid(ref m)) if m.contains("already")), "{again:?}");
}
