//! Time-travel benchmark (a bench binary, not a timed test): a session of 1M entries in a
//! real sled store with checkpoints every 10,000 entries; the time to open its projection at
//! random seqs (nearest checkpoint + replay), against opening without checkpoints.
//!
//! `cargo bench -p theta-gateway --bench history -- [--entries N] [--opens K]`

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use rand::{Rng, SeedableRng};
use theta_gateway::history::{DEFAULT_CHECKPOINT_EVERY_ENTRIES, project, write_checkpoints};
use theta_schemas::components::{Material, Name, Selection, Transform};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::signing::author_key;
use theta_schemas::{Command, CommandBody, ComponentId, Envelope, LogEntry, SessionId, Shape};
use theta_store::merkle::entry_hash;
use theta_store::{Durability, Store, StoreConfig};

const S: SessionId = SessionId([4; 16]);

fn main() {
    let mut entries = 1_000_000u64;
    let mut opens = 40usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--entries" => entries = args.next().and_then(|v| v.parse().ok()).expect("--entries N"),
            "--opens" => opens = args.next().and_then(|v| v.parse().ok()).expect("--opens K"),
            _ => {}
        }
    }
    let dir = std::env::temp_dir().join("theta-bench-history");
    let _ = std::fs::remove_dir_all(&dir);
    let config = StoreConfig { durability: Durability::None, ..StoreConfig::default() };
    let store = Store::open(&dir, config).expect("open store");
    println!("theta history bench: {entries} entries, checkpoints every {DEFAULT_CHECKPOINT_EVERY_ENTRIES}");

    // Build the log through the trusted import path (entries are hashed and chained here;
    // signatures are not checked on import, so they are left zero).
    let started = Instant::now();
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
    println!("built the log in {:.1} s (trusted import)", started.elapsed().as_secs_f64());

    let started = Instant::now();
    let written = write_checkpoints(&store, &S, DEFAULT_CHECKPOINT_EVERY_ENTRIES).expect("checkpoints");
    let (_, sample) = store.checkpoint_at_or_below(&S, entries).unwrap().expect("a checkpoint");
    println!(
        "wrote {written} checkpoints in {:.1} s (last one {:.0} KiB)",
        started.elapsed().as_secs_f64(),
        sample.len() as f64 / 1024.0
    );

    let mut times: Vec<Duration> = Vec::with_capacity(opens);
    for _ in 0..opens {
        let at = rng.gen_range(1..=entries);
        let t = Instant::now();
        let opened = project(&store, &S, at).expect("open");
        times.push(t.elapsed());
        assert_eq!(opened.projection.seq(), at);
    }
    times.sort();
    let ms = |d: Duration| d.as_secs_f64() * 1e3;
    println!(
        "open at a random seq with checkpoints: median {:.1} ms, p90 {:.1} ms, max {:.1} ms ({opens} opens)",
        ms(times[times.len() / 2]),
        ms(times[times.len() * 9 / 10]),
        ms(times[times.len() - 1])
    );
    store.delete_checkpoints(&S).expect("delete");
    let at = entries / 2;
    let t = Instant::now();
    let opened = project(&store, &S, at).expect("open");
    println!("open at seq {at} without checkpoints: {:.0} ms ({} entries replayed)", ms(t.elapsed()), opened.replayed);
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
