//! `theta demo`: a scripted collaborative editing session against a real store on disk.
//!
//! Today it exercises the log store end to end (later issues add the server, live viewers
//! and rendering): several editors with their own keys build and edit a scene concurrently,
//! some commands are rejected (missing role, stale version, replay), the store is reopened and
//! verified, and proofs are checked.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Instant;

use anyhow::{Context as _, ensure};
use ed25519_dalek::SigningKey;
use theta_schemas::components::{Component, Material, Mesh, Name, Parent, Selection, ToolState, Transform};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::signing::author_key;
use theta_schemas::{Command, CommandBody, ComponentId, Envelope, Role, SessionId, Shape};
use theta_store::merkle::{leaf_hash, verify_consistency, verify_inclusion};
use theta_store::{AppendError, RejectionCode, Store, StoreConfig};

/// Options of `theta demo`.
#[derive(Debug, clap::Args)]
pub struct DemoArgs {
    /// Data directory (default: a fresh temporary directory, removed afterwards).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Transform updates each editor streams.
    #[arg(long, default_value_t = 5_000)]
    moves: u64,
}

/// A scripted author: key, Lamport clock, nonces.
struct Editor {
    key: SigningKey,
    lamport: u64,
    nonce: u64,
}

impl Editor {
    fn new() -> Editor {
        Editor { key: SigningKey::generate(&mut rand::rngs::OsRng), lamport: 0, nonce: rand::random() }
    }

    fn cmd(&mut self, session: SessionId, entity: u64, component: ComponentId, base: u64, command: Command) -> Vec<u8> {
        self.lamport += 1;
        self.nonce = self.nonce.wrapping_add(1);
        let body = CommandBody {
            session,
            author: author_key(&self.key),
            lamport: self.lamport,
            nonce: self.nonce,
            wall_clock_ms: std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .map_or(0, |d| d.as_millis() as u64),
            entity,
            component,
            base_version: base,
            command,
        };
        Envelope::sign(&body, &self.key).encode()
    }
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let (dir, _tmp) = match args.data {
        Some(d) => (d, None),
        None => {
            let t = tempfile::tempdir().context("create a temporary data directory")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    println!("theta demo: data directory {}", dir.display());
    // Scripted editors stream far faster than hands do: allow them 20,000 commands/s each.
    let config = StoreConfig { rate_per_sec: 20_000.0, rate_burst: 5_000.0, ..StoreConfig::default() };
    let store = Arc::new(Store::open(&dir, config.clone()).context("open the store")?);
    let session = SessionId(rand::random());
    let none = ComponentId::NONE;

    // The owner creates the session and hands out roles.
    let mut owner = Editor::new();
    let mut alice = Editor::new();
    let mut bob = Editor::new();
    let mut vera = Editor::new(); // a viewer who will try to edit
    store.append(&owner.cmd(session, 0, none, 0, Command::CreateSession { name: "demo scene".into() }))?;
    for (who, role) in [(&alice, Role::Editor), (&bob, Role::Editor), (&vera, Role::Viewer)] {
        store.append(&owner.cmd(session, 0, none, 0, Command::GrantRole { key: author_key(&who.key), role }))?;
    }
    println!("session {session} created; 2 editors and 1 viewer granted");

    // Alice builds a small scene: a table with a mesh, a lamp parented to it.
    let table = 1u64;
    let lamp = 2u64;
    let cursor_a = 10u64;
    let cursor_b = 11u64;
    let create = |e: &mut Editor, id: u64, shape: Shape, name: &str, parent: u64| {
        e.cmd(session, id, none, 0, Command::CreateEntity { shape, name: name.into(), parent })
    };
    store.append(&create(&mut alice, table, Shape::Cube, "table", 0))?;
    store.append(&create(&mut alice, lamp, Shape::Sphere, "lamp", 0))?;
    store.append(&create(&mut alice, cursor_a, Shape::Cone, "alice's cursor", 0))?;
    store.append(&create(&mut bob, cursor_b, Shape::Cone, "bob's cursor", 0))?;
    let mesh = Mesh {
        positions: vec![[-1.0, 0.0, -1.0], [1.0, 0.0, -1.0], [1.0, 0.0, 1.0], [-1.0, 0.0, 1.0]],
        indices: vec![0, 1, 2],
    };
    store.append(&alice.cmd(session, table, Mesh::id(), 0, Command::SetComponent { data: mesh.encode() }))?;
    store.append(&alice.cmd(session, table, Mesh::id(), 0, Command::AddFaces { indices: vec![0, 2, 3] }))?;
    store.append(&alice.cmd(session, lamp, Parent::id(), 0, Command::Reparent { parent: table }))?;
    store.append(&bob.cmd(session, table, Selection::id(), 0, Command::Select))?;
    store.append(&bob.cmd(session, cursor_b, ToolState::id(), 0, Command::ChangeTool { tool: "move".into() }))?;
    store.append(&bob.cmd(
        session,
        table,
        Material::id(),
        0,
        Command::SetMaterial(Material { base_color: [0.6, 0.4, 0.2, 1.0], metallic: 0.0, roughness: 0.7 }),
    ))?;
    store.append(&bob.cmd(
        session,
        table,
        Mesh::id(),
        0,
        Command::MoveVertices { indices: vec![2], positions: vec![[1.2, 0.1, 1.2]] },
    ))?;
    store.append(&alice.cmd(session, lamp, Name::id(), 0, Command::Rename { name: "desk lamp".into() }))?;
    println!("scene built: table (mesh, material), lamp under the table, two cursors");

    // Rejections: a viewer edits, a stale reparent, a replayed envelope.
    let denied = store.append(&vera.cmd(
        session,
        99,
        none,
        0,
        Command::CreateEntity { shape: Shape::Cube, name: "nope".into(), parent: 0 },
    ));
    ensure!(matches!(denied, Err(AppendError::PermissionDenied { .. })), "viewer edit must be denied: {denied:?}");
    println!("  rejected as expected: {}", denied.unwrap_err());
    let stale = store.append(&bob.cmd(session, lamp, Parent::id(), 0, Command::Reparent { parent: 0 }));
    ensure!(matches!(stale, Err(AppendError::Conflict { .. })), "stale reparent must conflict: {stale:?}");
    println!("  rejected as expected: {}", stale.unwrap_err());
    let select = alice.cmd(session, lamp, Selection::id(), 0, Command::Select);
    store.append(&select)?;
    let replay = store.append(&select);
    ensure!(matches!(replay, Err(AppendError::Replay { .. })), "replay must be refused: {replay:?}");
    println!("  rejected as expected: {}", replay.unwrap_err());

    // Both editors stream transform updates concurrently, as VR hands would.
    let started = Instant::now();
    let before = store.head(&session)?.seq;
    let threads: Vec<_> = [(alice, cursor_a), (bob, cursor_b)]
        .into_iter()
        .map(|(mut editor, entity)| {
            let store = store.clone();
            let moves = args.moves;
            std::thread::spawn(move || -> anyhow::Result<()> {
                let (tx, rx) = std::sync::mpsc::sync_channel(64);
                let mut in_flight = 0;
                for i in 0..moves {
                    let a = i as f32 * 0.01;
                    let t = Transform {
                        translation: [a.cos(), 1.0, a.sin()],
                        rotation: [0.0, (a / 2.0).sin(), 0.0, (a / 2.0).cos()],
                        scale: [0.2; 3],
                    };
                    let tx = tx.clone();
                    store.submit(editor.cmd(session, entity, Transform::id(), 0, Command::SetTransform(t)), move |r| {
                        let _ = tx.send(r);
                    });
                    in_flight += 1;
                    if in_flight == 32 {
                        rx.recv()??;
                        in_flight -= 1;
                    }
                }
                for _ in 0..in_flight {
                    rx.recv()??;
                }
                Ok(())
            })
        })
        .collect();
    for t in threads {
        t.join().expect("editor thread")?;
    }
    let streamed = store.head(&session)?.seq - before;
    let secs = started.elapsed().as_secs_f64();
    println!(
        "2 editors streamed {streamed} durable transform updates in {secs:.2} s ({:.0} appends/s)",
        streamed as f64 / secs
    );

    // Reopen and verify everything: the chain, the tree, the indexes.
    let metrics = store.metrics();
    let head = store.head(&session)?;
    drop(Arc::try_unwrap(store).ok().context("store still shared")?);
    let reopened_at = Instant::now();
    let store = Store::open(&dir, config).context("reopen the store")?;
    ensure!(store.corrupted().is_empty(), "corruption found: {:?}", store.corrupted());
    ensure!(store.head(&session)? == head, "the reopened head differs");
    println!("reopened and verified {} entries in {:.0} ms", head.seq, reopened_at.elapsed().as_secs_f64() * 1e3);
    let seq = 1 + rand::random::<u64>() % head.seq;
    let entry = store.entry(&session, seq)?;
    let proof = store.inclusion_proof(&session, seq, head.seq)?;
    ensure!(verify_inclusion(&leaf_hash(&entry.entry_hash), seq - 1, head.seq, &proof.path, &head.tree_root));
    let old = head.seq / 2;
    let consistency = store.consistency_proof(&session, old, head.seq)?;
    ensure!(verify_consistency(old, head.seq, &store.tree_root(&session, old)?, &head.tree_root, &consistency));
    let sth = store.signed_tree_head(&session)?;
    ensure!(sth.verify(), "signed tree head does not verify");
    println!("inclusion proof of seq {seq}, consistency proof {old} -> {}, signed tree head: all verify", head.seq);

    println!();
    println!("summary");
    println!("  entries          {}", head.seq);
    println!("  tree root        {}", hex::encode(head.tree_root));
    println!("  appends/s        {:.0} (durable, 2 editors streaming)", streamed as f64 / secs);
    println!("  rejections:");
    for code in RejectionCode::ALL {
        let n = metrics.rejected(code);
        if n > 0 {
            println!("    {:<22} {n}", code.counter());
        }
    }
    println!("  rejection trail  {} records", store.rejections(Some(&session))?.len());
    println!("  data directory   {}{}", dir.display(), if _tmp.is_some() { " (temporary, removed now)" } else { "" });
    Ok(())
}
