//! Every rejection kind: its exact error, its counter, and an unchanged log.

use theta_schemas::components::{Component, Material, Mesh, Name, Parent, Transform};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::signing::SignatureError;
use theta_schemas::{AuthorKey, Command, CommandKind, ComponentId, ConflictStrategy, Envelope, Role, Shape};
use theta_store::{AppendError, ConflictReason, RejectionCode, Store, StoreConfig};

use crate::helpers::*;

/// Appends `bytes`, expects a rejection with `code` for which `check` holds, and checks that
/// the counter moved by one, the rejection trail grew, and every session's head is unchanged.
fn rejected(store: &Store, bytes: &[u8], code: RejectionCode, check: impl FnOnce(&AppendError) -> bool) {
    let heads = store.sessions();
    let before = store.metrics();
    let err = store.append(bytes).expect_err("must be rejected");
    assert_eq!(err.code(), code, "{err}");
    assert!(check(&err), "unexpected error: {err:?}");
    let after = store.metrics();
    assert_eq!(after.rejected(code), before.rejected(code) + 1, "counter {}", code.counter());
    assert_eq!(after.appends_accepted, before.appends_accepted);
    assert_eq!(store.sessions(), heads, "the log is unchanged");
}

fn setup(config: StoreConfig) -> (Store, Author, theta_schemas::SessionId) {
    let store = Store::open_in_memory(config);
    let mut owner = Author::new(1);
    let s = session(1);
    create_session(&store, &mut owner, s);
    (store, owner, s)
}

#[test]
fn every_flipped_signature_byte_is_rejected() {
    let (store, mut owner, s) = setup(relaxed());
    create_entity(&store, &mut owner, s, 10, 0);
    let body = owner.body(s, 10, Transform::id(), 0, Command::SetTransform(Transform::default()));
    let envelope = Envelope::sign(&body, &owner.key);
    for byte in 0..64 {
        let mut bad = envelope.clone();
        bad.signature[byte] ^= 0x01;
        rejected(&store, &bad.encode(), RejectionCode::Signature, |e| {
            *e == AppendError::Signature(SignatureError::BadSignature)
        });
    }
    assert_eq!(store.metrics().counter("signature_failures"), Some(64));
    // The genuine envelope is still accepted afterwards.
    store.append(&envelope.encode()).unwrap();
    // The author is not proven by a bad signature: the records go to the global trail, with no
    // author, and the session's own trail stays clean (docs/PROTOCOL.md, "Append checks").
    assert!(store.rejections(Some(&s)).unwrap().is_empty());
    let trail = store.rejections(None).unwrap();
    assert_eq!(trail.len(), 64);
    assert!(trail.iter().all(|r| r.code == RejectionCode::Signature && r.author.is_none()));
}

#[test]
fn wrong_key_and_weak_key_are_rejected() {
    let (store, mut owner, s) = setup(relaxed());
    let other = Author::new(9);
    // Body names the owner but is signed by another key.
    let body = owner.body(s, 0, ComponentId::NONE, 0, Command::GrantRole { key: other.id(), role: Role::Editor });
    let forged = Envelope::sign(&body, &other.key).encode();
    rejected(&store, &forged, RejectionCode::Signature, |e| *e == AppendError::Signature(SignatureError::BadSignature));
    // A small-order key (the identity point) is rejected when first seen.
    let mut weak = [0u8; 32];
    weak[0] = 1;
    let mut body = owner.body(s, 1, theta_schemas::components::Selection::id(), 0, Command::Select);
    body.author = AuthorKey(weak);
    let bytes = Envelope { body: body.encode(), signature: [0; 64] }.encode();
    rejected(&store, &bytes, RejectionCode::Signature, |e| *e == AppendError::Signature(SignatureError::WeakKey));
    // Bytes that are not a curve point.
    let mut invalid = [0u8; 32];
    invalid[0] = 2;
    body.author = AuthorKey(invalid);
    let bytes = Envelope { body: body.encode(), signature: [0; 64] }.encode();
    rejected(&store, &bytes, RejectionCode::Signature, |e| *e == AppendError::Signature(SignatureError::InvalidKey));
}

#[test]
fn malformed_and_invalid_commands_are_rejected() {
    let (store, mut owner, s) = setup(relaxed());
    rejected(&store, b"definitely not a flatbuffer", RejectionCode::Schema, |e| matches!(e, AppendError::Malformed(_)));
    rejected(&store, &[], RejectionCode::Schema, |e| matches!(e, AppendError::Malformed(_)));
    // Wrong scope for the kind.
    let bytes = owner.cmd(s, 5, Name::id(), 0, Command::SetTransform(Transform::default()));
    rejected(&store, &bytes, RejectionCode::Schema, |e| {
        matches!(e, AppendError::Invalid { kind: CommandKind::SetTransform, .. })
    });
    // Component bytes that do not decode as the scope's component.
    let bytes = owner.cmd(s, 5, Mesh::id(), 0, Command::SetComponent { data: Name("x".into()).encode() });
    rejected(&store, &bytes, RejectionCode::Schema, |e| matches!(e, AppendError::Invalid { .. }));
    // Parent only changes through Reparent.
    let bytes = owner.cmd(s, 5, Parent::id(), 0, Command::SetComponent { data: Parent(1).encode() });
    rejected(&store, &bytes, RejectionCode::Schema, |e| matches!(e, AppendError::Invalid { .. }));
    assert_eq!(store.metrics().counter("schema_rejections"), Some(5));
    // Garbage names no session: it lands in the global trail; the rest in the session's.
    assert_eq!(store.rejections(None).unwrap().len(), 2);
    assert_eq!(store.rejections(Some(&s)).unwrap().len(), 3);
}

#[test]
fn unknown_session_and_existing_session() {
    let (store, mut owner, s) = setup(relaxed());
    let bytes = owner.cmd(
        session(7),
        1,
        ComponentId::NONE,
        0,
        Command::CreateEntity { shape: Shape::Cube, name: "x".into(), parent: 0 },
    );
    rejected(&store, &bytes, RejectionCode::Session, |e| matches!(e, AppendError::UnknownSession { .. }));
    let bytes = owner.cmd(s, 0, ComponentId::NONE, 0, Command::CreateSession { name: "again".into() });
    rejected(&store, &bytes, RejectionCode::Session, |e| matches!(e, AppendError::SessionExists { .. }));
    // Another key cannot take over the session by creating it again either.
    let mut mallory = Author::new(66);
    let bytes = mallory.cmd(s, 0, ComponentId::NONE, 0, Command::CreateSession { name: "mine".into() });
    rejected(&store, &bytes, RejectionCode::Session, |e| matches!(e, AppendError::SessionExists { .. }));
}

#[test]
fn envelope_of_exactly_64_kib_is_accepted_and_one_more_byte_rejected() {
    let (store, mut owner, s) = setup(relaxed());
    create_entity(&store, &mut owner, s, 3, 0);
    // FlatBuffers sizes move in steps of 8 here, so take the largest envelope that fits and
    // pad it with trailing zero bytes (still a valid buffer) to exactly 65,536 bytes.
    let limit = theta_schemas::MAX_ENVELOPE_BYTES;
    let mut make = |total: usize| {
        for n in (limit - 600..limit).rev() {
            let body = owner.body(s, 3, Name::id(), 0, Command::SetComponent { data: Name("n".repeat(n)).encode() });
            let mut bytes = Envelope::sign(&body, &owner.key).encode();
            if bytes.len() <= total && total - bytes.len() < 8 {
                bytes.resize(total, 0);
                return bytes;
            }
        }
        panic!("no name length fits {total} bytes");
    };
    let exact = make(limit);
    let bigger = make(limit + 1);
    assert_eq!(exact.len(), 65_536);
    assert_eq!(bigger.len(), 65_537);
    store.append(&exact).expect("exactly 64 KiB is accepted");
    rejected(&store, &bigger, RejectionCode::PayloadGuard, |e| {
        *e == AppendError::PayloadTooLarge { len: 65_537, max: 65_536 }
    });
    assert_eq!(store.metrics().counter("payload_guard_drops"), Some(1));
}

#[test]
fn replayed_nonce_is_rejected_also_after_reopening() {
    let dir = tempfile::tempdir().unwrap();
    let mut owner = Author::new(1);
    let s = session(1);
    let replay;
    {
        let store = Store::open(dir.path(), relaxed()).unwrap();
        create_session(&store, &mut owner, s);
        let first = owner.cmd(
            s,
            0,
            ComponentId::NONE,
            0,
            Command::SetConflictPolicy { component: Transform::id(), strategy: ConflictStrategy::Merge },
        );
        let r = store.append(&first).unwrap();
        // The very same envelope again.
        rejected(
            &store,
            &first,
            RejectionCode::Replay,
            |e| matches!(e, AppendError::Replay { first_seq, .. } if *first_seq == r.seq),
        );
        // Same nonce, new Lamport and new content: still a replay.
        let mut body = owner.body(
            s,
            0,
            ComponentId::NONE,
            0,
            Command::SetConflictPolicy { component: Name::id(), strategy: ConflictStrategy::Reject },
        );
        body.nonce = owner.nonce - 1;
        replay = owner.seal(&body);
        rejected(&store, &replay, RejectionCode::Replay, |e| matches!(e, AppendError::Replay { .. }));
        store.close();
    }
    let store = Store::open(dir.path(), relaxed()).unwrap();
    rejected(&store, &replay, RejectionCode::Replay, |e| matches!(e, AppendError::Replay { first_seq: 2, .. }));
    assert_eq!(store.head(&s).unwrap().seq, 2);
}

#[test]
fn lamport_regression_and_future_skew_are_rejected() {
    let config = StoreConfig { max_lamport_skew: 1_000, ..relaxed() };
    let (store, mut owner, s) = setup(config);
    create_entity(&store, &mut owner, s, 1, 0);
    // Regression: the same Lamport timestamp as the last accepted one.
    let mut body = owner.body(s, 1, Transform::id(), 0, Command::SetTransform(Transform::default()));
    body.lamport = owner.lamport - 1;
    let bytes = owner.seal(&body);
    rejected(&store, &bytes, RejectionCode::Lamport, |e| {
        matches!(e, AppendError::LamportRegression { lamport: 2, previous: 2, .. })
    });
    // Skew: more than 1,000 ahead of the session clock (2).
    let mut body = owner.body(s, 1, Transform::id(), 0, Command::SetTransform(Transform::default()));
    body.lamport = 1_003;
    let bytes = owner.seal(&body);
    rejected(&store, &bytes, RejectionCode::Lamport, |e| {
        *e == AppendError::LamportSkew { lamport: 1_003, clock: 2, max_skew: 1_000 }
    });
    // Exactly at the bound is fine, and the clock becomes max(clock, L).
    body.lamport = 1_002;
    body.nonce += 1;
    store.append(&owner.seal(&body)).unwrap();
    assert_eq!(store.head(&s).unwrap().clock, 1_002);
    assert_eq!(store.metrics().counter("lamport_rejections"), Some(2));
}

#[test]
fn a_flood_gets_at_most_burst_plus_rate_times_t() {
    let (rate, burst) = (200.0, 50.0);
    let config = StoreConfig { rate_per_sec: rate, rate_burst: burst, ..StoreConfig::default() };
    let (store, mut owner, s) = setup(config);
    let mut editor = Author::new(2);
    grant(&store, &mut owner, s, &editor, Role::Editor);
    create_entity(&store, &mut owner, s, 1, 0);
    let started = std::time::Instant::now();
    let batch: Vec<Vec<u8>> =
        (0..2_000).map(|_| editor.cmd(s, 1, Transform::id(), 0, Command::SetTransform(Transform::default()))).collect();
    let results = store.append_batch(batch);
    let elapsed = started.elapsed().as_secs_f64();
    let accepted = results.iter().filter(|r| r.is_ok()).count() as f64;
    let limited = results.iter().filter(|r| matches!(r, Err(AppendError::RateLimited { .. }))).count();
    assert_eq!(accepted as usize + limited, 2_000, "every rejection is a rate limit");
    assert!(accepted >= burst, "the burst is available: {accepted}");
    assert!(accepted <= burst + rate * elapsed + 1.0, "{accepted} accepted in {elapsed:.3} s");
    assert_eq!(store.metrics().counter("rate_limit_drops"), Some(limited as u64));
    // The owner's own bucket is untouched by the editor's flood.
    store.append(&owner.cmd(s, 1, Name::id(), 0, Command::Rename { name: "ok".into() })).unwrap();
}

#[test]
fn stale_base_version_is_rejected_and_fresh_one_accepted() {
    let (store, mut owner, s) = setup(relaxed());
    let mut editor = Author::new(2);
    grant(&store, &mut owner, s, &editor, Role::Editor);
    create_entity(&store, &mut owner, s, 1, 0);
    create_entity(&store, &mut owner, s, 2, 0);
    // Reparent is a reject-strategy scope: (1, Parent) is at version 0.
    store.append(&editor.cmd(s, 1, Parent::id(), 0, Command::Reparent { parent: 2 })).unwrap();
    // The owner still believes version 0: stale.
    let bytes = owner.cmd(s, 1, Parent::id(), 0, Command::Reparent { parent: 0 });
    rejected(&store, &bytes, RejectionCode::Conflict, |e| {
        matches!(e, AppendError::Conflict { reason: ConflictReason::StaleVersion { base: 0, current: 1 }, .. })
    });
    // With the fresh version it is accepted.
    store.append(&owner.cmd(s, 1, Parent::id(), 1, Command::Reparent { parent: 0 })).unwrap();
    // A policy switch makes Transform reject-strategy too.
    store
        .append(&owner.cmd(
            s,
            0,
            ComponentId::NONE,
            0,
            Command::SetConflictPolicy { component: Transform::id(), strategy: ConflictStrategy::Reject },
        ))
        .unwrap();
    let bytes = editor.cmd(s, 1, Transform::id(), 5, Command::SetTransform(Transform::default()));
    rejected(&store, &bytes, RejectionCode::Conflict, |e| {
        matches!(e, AppendError::Conflict { reason: ConflictReason::StaleVersion { base: 5, current: 0 }, .. })
    });
    store.append(&editor.cmd(s, 1, Transform::id(), 0, Command::SetTransform(Transform::default()))).unwrap();
    assert_eq!(store.metrics().counter("conflict_rejections"), Some(2));
}

#[test]
fn hierarchy_and_lifecycle_conflicts() {
    let (store, mut owner, s) = setup(relaxed());
    create_entity(&store, &mut owner, s, 1, 0);
    create_entity(&store, &mut owner, s, 2, 1);
    create_entity(&store, &mut owner, s, 3, 2);
    let conflict = |store: &Store, bytes: Vec<u8>, want: ConflictReason| {
        rejected(
            store,
            &bytes,
            RejectionCode::Conflict,
            |e| matches!(e, AppendError::Conflict { reason, .. } if *reason == want),
        );
    };
    let create = |o: &mut Author, e: u64, parent: u64| {
        o.cmd(s, e, ComponentId::NONE, 0, Command::CreateEntity { shape: Shape::Sphere, name: String::new(), parent })
    };
    conflict(&store, create(&mut owner, 1, 0), ConflictReason::EntityExists);
    conflict(&store, create(&mut owner, 9, 77), ConflictReason::ParentMissing { parent: 77 });
    // 1 → 2 → 3: putting 1 under 3 is a cycle, and so is 1 under itself.
    conflict(
        &store,
        owner.cmd(s, 1, Parent::id(), 0, Command::Reparent { parent: 3 }),
        ConflictReason::WouldCycle { parent: 3 },
    );
    conflict(
        &store,
        owner.cmd(s, 1, Parent::id(), 0, Command::Reparent { parent: 1 }),
        ConflictReason::WouldCycle { parent: 1 },
    );
    // Deleting a parent with children is refused; bottom-up works. Entity scope version of 3 is 1.
    conflict(
        &store,
        owner.cmd(s, 2, ComponentId::NONE, 1, Command::DeleteEntity),
        ConflictReason::HasChildren { children: 1 },
    );
    store.append(&owner.cmd(s, 3, ComponentId::NONE, 1, Command::DeleteEntity)).unwrap();
    conflict(
        &store,
        owner.cmd(s, 3, Name::id(), 0, Command::Rename { name: "x".into() }),
        ConflictReason::EntityDeleted { deleted_at: 5 },
    );
    conflict(&store, create(&mut owner, 3, 0), ConflictReason::EntityDeleted { deleted_at: 5 });
    conflict(
        &store,
        owner.cmd(s, 42, Material::id(), 0, Command::SetMaterial(Material::default())),
        ConflictReason::EntityMissing,
    );
    // The last owner cannot be revoked.
    let me = owner.id();
    conflict(&store, owner.cmd(s, 0, ComponentId::NONE, 0, Command::RevokeRole { key: me }), ConflictReason::LastOwner);
    // Depth limit.
    let config = StoreConfig { max_hierarchy_depth: 2, ..relaxed() };
    let (store2, mut o2, s2) = setup(config);
    create_entity(&store2, &mut o2, s2, 1, 0);
    create_entity(&store2, &mut o2, s2, 2, 1);
    let bytes = o2.cmd(
        s2,
        3,
        ComponentId::NONE,
        0,
        Command::CreateEntity { shape: Shape::Cube, name: String::new(), parent: 2 },
    );
    conflict(&store2, bytes, ConflictReason::TooDeep { max: 2 });
}

/// The documented permission matrix (docs/PROTOCOL.md), written out independently of the
/// store's own table: for each kind, the roles that may issue it.
fn documented_matrix(kind: CommandKind) -> &'static [Role] {
    use CommandKind as K;
    const ALL: &[Role] = &[Role::Viewer, Role::Auditor, Role::Editor, Role::Owner];
    const EDIT: &[Role] = &[Role::Editor, Role::Owner];
    const OWNER: &[Role] = &[Role::Owner];
    match kind {
        K::CreateSession => &[],
        K::GrantRole | K::RevokeRole | K::SetConflictPolicy => OWNER,
        K::Select | K::Deselect => ALL,
        K::CreateEntity
        | K::DeleteEntity
        | K::SetComponent
        | K::RemoveComponent
        | K::SetTransform
        | K::ChangeTool
        | K::MoveVertices
        | K::AddFaces
        | K::RemoveFaces
        | K::Rename
        | K::Reparent
        | K::SetMaterial => EDIT,
    }
}

#[test]
fn every_cell_of_the_role_by_kind_matrix() {
    let (store, mut owner, s) = setup(relaxed());
    let roles = [Role::None, Role::Viewer, Role::Auditor, Role::Editor, Role::Owner];
    let mut actors: Vec<(Role, Author)> = Vec::new();
    for (i, role) in roles.into_iter().enumerate() {
        let actor = Author::new(20 + i as u8);
        if role != Role::None {
            grant(&store, &mut owner, s, &actor, role);
        }
        actors.push((role, actor));
    }
    let mut next_entity = 100u64;
    let mut cells = 0;
    for kind in CommandKind::ALL {
        if kind == CommandKind::CreateSession {
            continue; // never allowed inside a session; see unknown_session_and_existing_session
        }
        for (role, actor) in actors.iter_mut() {
            // A fresh entity with a mesh, owned by the owner, for each cell.
            next_entity += 1;
            let e = next_entity;
            create_entity(&store, &mut owner, s, e, 0);
            set_mesh(&store, &mut owner, s, e);
            // The tool entity carries the actor's ToolState.
            let (entity, base, command) = match kind {
                CommandKind::GrantRole => (0, 0, Command::GrantRole { key: Author::new(200).id(), role: Role::Viewer }),
                CommandKind::RevokeRole => (0, 0, Command::RevokeRole { key: Author::new(201).id() }),
                CommandKind::SetConflictPolicy => (
                    0,
                    0,
                    Command::SetConflictPolicy { component: Material::id(), strategy: ConflictStrategy::LastWriteWins },
                ),
                CommandKind::CreateEntity => {
                    next_entity += 1;
                    (next_entity, 0, Command::CreateEntity { shape: Shape::Cone, name: "c".into(), parent: e })
                }
                CommandKind::DeleteEntity => (e, 2, Command::DeleteEntity),
                CommandKind::SetComponent => (e, 0, Command::SetComponent { data: Name("n".into()).encode() }),
                CommandKind::RemoveComponent => (e, 0, Command::RemoveComponent),
                CommandKind::SetTransform => (e, 0, Command::SetTransform(Transform::default())),
                CommandKind::Select => (e, 0, Command::Select),
                CommandKind::Deselect => (e, 0, Command::Deselect),
                CommandKind::ChangeTool => (e, 0, Command::ChangeTool { tool: "move".into() }),
                CommandKind::MoveVertices => {
                    (e, 0, Command::MoveVertices { indices: vec![1], positions: vec![[2.0, 0.0, 0.0]] })
                }
                CommandKind::AddFaces => (e, 0, Command::AddFaces { indices: vec![0, 2, 3] }),
                CommandKind::RemoveFaces => (e, 1, Command::RemoveFaces { faces: vec![0] }),
                CommandKind::Rename => (e, 0, Command::Rename { name: "r".into() }),
                CommandKind::Reparent => (e, 0, Command::Reparent { parent: 0 }),
                CommandKind::SetMaterial => (e, 0, Command::SetMaterial(Material::default())),
                CommandKind::CreateSession => unreachable!(),
            };
            let component = if kind == CommandKind::CreateEntity { ComponentId::NONE } else { scope_of(kind) };
            let bytes = actor.cmd(s, entity, component, base, command);
            let allowed = documented_matrix(kind).contains(role);
            if allowed {
                store.append(&bytes).unwrap_or_else(|e| panic!("{role} may {kind}: {e}"));
            } else {
                rejected(&store, &bytes, RejectionCode::Permission, |e| {
                    *e == AppendError::PermissionDenied { author: actor.id(), role: *role, kind }
                });
            }
            cells += 1;
        }
    }
    assert_eq!(cells, 17 * 5);
    // And the store's table agrees with the documented one in every cell.
    for kind in CommandKind::ALL {
        for role in roles {
            assert_eq!(
                theta_store::policy::allowed(role, kind),
                documented_matrix(kind).contains(&role),
                "{role} × {kind}"
            );
        }
    }
}

#[test]
fn revoked_roles_stop_working_and_regrants_apply_from_their_entry_on() {
    let (store, mut owner, s) = setup(relaxed());
    let mut editor = Author::new(2);
    grant(&store, &mut owner, s, &editor, Role::Editor);
    create_entity(&store, &mut editor, s, 1, 0);
    store.append(&owner.cmd(s, 0, ComponentId::NONE, 0, Command::RevokeRole { key: editor.id() })).unwrap();
    let bytes = editor.cmd(s, 1, Name::id(), 0, Command::Rename { name: "nope".into() });
    rejected(&store, &bytes, RejectionCode::Permission, |e| {
        matches!(e, AppendError::PermissionDenied { role: Role::None, .. })
    });
    grant(&store, &mut owner, s, &editor, Role::Viewer);
    let bytes = editor.cmd(s, 1, Name::id(), 0, Command::Rename { name: "nope".into() });
    rejected(&store, &bytes, RejectionCode::Permission, |e| {
        matches!(e, AppendError::PermissionDenied { role: Role::Viewer, .. })
    });
    store.append(&editor.cmd(s, 1, theta_schemas::components::Selection::id(), 0, Command::Select)).unwrap();
}

#[test]
fn the_rejection_trail_is_bounded() {
    let config = StoreConfig { rejection_trail_entries: 5, ..relaxed() };
    let (store, mut owner, s) = setup(config);
    let stranger = Author::new(99);
    for i in 0..12u64 {
        let mut a = Author::new(99);
        a.lamport = i;
        a.nonce = i;
        let bytes = a.cmd(s, 1, Name::id(), 0, Command::Rename { name: format!("{i}") });
        assert!(matches!(store.append(&bytes), Err(AppendError::PermissionDenied { .. })));
    }
    let trail = store.rejections(Some(&s)).unwrap();
    assert_eq!(trail.iter().map(|r| r.index).collect::<Vec<_>>(), vec![7, 8, 9, 10, 11]);
    assert!(trail.iter().all(|r| r.author == Some(stranger.id()) && r.code == RejectionCode::Permission));
    // The log itself only holds the session's creation.
    assert_eq!(store.head(&s).unwrap().seq, 1);
    let _ = &mut owner;
}

#[test]
fn a_session_handle_refuses_envelopes_of_other_sessions() {
    let (store, mut owner, s) = setup(relaxed());
    let other = session(2);
    let mut o2 = Author::new(3);
    create_session(&store, &mut o2, other);
    let handle = store.session(s);
    let wrong = o2.cmd(other, 0, ComponentId::NONE, 0, Command::RevokeRole { key: Author::new(4).id() });
    assert!(matches!(handle.append(&wrong), Err(AppendError::Invalid { .. })));
    let right = owner.cmd(
        s,
        1,
        ComponentId::NONE,
        0,
        Command::CreateEntity { shape: Shape::Cube, name: "x".into(), parent: 0 },
    );
    assert_eq!(handle.append(&right).unwrap().seq, 2);
    assert_eq!(handle.head().unwrap().seq, 2);
    assert_eq!(store.head(&other).unwrap().seq, 1);
}
