//! Projector benchmarks (a bench binary, not a timed test):
//! - fold throughput over a realistic editing log (mostly transforms; some creates,
//!   selections, renames, materials and mesh edits), from decoded commands and from encoded
//!   log entries (decode included), on one core;
//! - snapshot build time and size for 10k and 100k entities;
//! - checkpoint encode/decode time and size.
//!
//! `cargo bench -p theta-projector --bench fold -- [--commands N]`

use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use theta_projector::{DEFAULT_CHUNK_BYTES, Projection};
use theta_schemas::components::{Component, Material, Mesh, Name, Selection, Transform};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::signing::author_key;
use theta_schemas::{Command, CommandBody, ComponentId, Envelope, LogEntry, SessionId, Shape};

const SESSION: SessionId = SessionId([9; 16]);

/// A realistic editing log: `entities` objects, then edits dominated by transforms.
pub fn editing_log(commands: usize, entities: u64, seed: u64) -> Vec<CommandBody> {
    let mut rng = StdRng::seed_from_u64(seed);
    let authors: Vec<_> = (1..=8u8).map(|i| author_key(&SigningKey::from_bytes(&[i; 32]))).collect();
    let mut lamports = [0u64; 8];
    let mut nonce = 0u64;
    let mut body = |a: usize, entity: u64, component: ComponentId, command: Command, lamports: &mut [u64; 8]| {
        lamports[a] += 1;
        nonce += 1;
        CommandBody {
            session: SESSION,
            author: authors[a],
            lamport: lamports[a],
            nonce,
            wall_clock_ms: 0,
            entity,
            component,
            base_version: 0,
            command,
        }
    };
    let mut out = Vec::with_capacity(commands);
    out.push(body(0, 0, ComponentId::NONE, Command::CreateSession { name: "bench".into() }, &mut lamports));
    let mesh = Mesh { positions: (0..16).map(|i| [i as f32, 0.0, 0.0]).collect(), indices: vec![0, 1, 2, 2, 3, 0] };
    for e in 1..=entities.min(commands as u64 / 4) {
        let a = (e % 8) as usize;
        out.push(body(
            a,
            e,
            ComponentId::NONE,
            Command::CreateEntity { shape: Shape::Cube, name: format!("object {e}"), parent: 0 },
            &mut lamports,
        ));
        if e % 50 == 0 {
            out.push(body(a, e, Mesh::id(), Command::SetComponent { data: mesh.encode() }, &mut lamports));
        }
    }
    let live = entities.min(commands as u64 / 4);
    while out.len() < commands {
        let a = rng.gen_range(0..8);
        let e = rng.gen_range(1..=live);
        let roll = rng.gen_range(0..100);
        let b = match roll {
            0..=89 => {
                let f = rng.gen_range(-50.0f32..50.0);
                let t =
                    Transform { translation: [f, 1.0, -f], rotation: [0.0, 0.38268, 0.0, 0.92388], scale: [1.0; 3] };
                body(a, e, Transform::id(), Command::SetTransform(t), &mut lamports)
            }
            90..=93 => body(
                a,
                e,
                Selection::id(),
                if roll % 2 == 0 { Command::Select } else { Command::Deselect },
                &mut lamports,
            ),
            94..=95 => body(a, e, Name::id(), Command::Rename { name: format!("renamed {e}") }, &mut lamports),
            96..=97 => body(
                a,
                e,
                Material::id(),
                Command::SetMaterial(Material { base_color: [0.2, 0.5, 0.9, 1.0], ..Material::default() }),
                &mut lamports,
            ),
            _ => {
                let m = (e / 50).max(1) * 50;
                let i = rng.gen_range(0..16u32);
                body(
                    a,
                    m.min(live / 50 * 50).max(50),
                    Mesh::id(),
                    Command::MoveVertices { indices: vec![i], positions: vec![[i as f32, 1.0, 0.5]] },
                    &mut lamports,
                )
            }
        };
        out.push(b);
    }
    out
}

fn median(mut v: Vec<Duration>) -> Duration {
    v.sort();
    v[v.len() / 2]
}

fn main() {
    let mut commands = 1_000_000usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        if a == "--commands" {
            commands = args.next().and_then(|v| v.parse().ok()).expect("--commands N");
        }
    }
    println!("theta-projector fold bench: {commands} commands, 1 thread");
    let log = editing_log(commands, 10_000, 1);
    let transforms = log.iter().filter(|b| matches!(b.command, Command::SetTransform(_))).count();
    println!("log: {} commands ({:.0}% transforms)", log.len(), transforms as f64 * 100.0 / log.len() as f64);

    for replay in [false, true] {
        let mut runs = Vec::new();
        let mut last = None;
        for _ in 0..3 {
            let started = Instant::now();
            let mut p = Projection::new(SESSION);
            if replay {
                p.begin_replay();
            }
            for (i, b) in log.iter().enumerate() {
                p.apply_command(i as u64 + 1, b).expect("valid log");
            }
            p.end_replay();
            runs.push(started.elapsed());
            last = Some(p);
        }
        let t = median(runs);
        let p = last.expect("runs");
        println!(
            "fold from decoded commands, {}: {:.0} commands/s (median of 3: {:.3} s); {} entities, state {}",
            if replay { "replay mode" } else { "live mode (deltas + spatial index)" },
            log.len() as f64 / t.as_secs_f64(),
            t.as_secs_f64(),
            p.entity_count(),
            hex::encode(&p.state_hash()[..8])
        );
    }

    // From encoded entries: decode (verified) + fold, as a replay from the store does.
    let key = SigningKey::from_bytes(&[1; 32]);
    let sample = 200_000.min(log.len());
    let entries: Vec<LogEntry> = log[..sample]
        .iter()
        .enumerate()
        .map(|(i, b)| LogEntry {
            seq: i as u64 + 1,
            envelope: Envelope { body: b.encode(), signature: [0; 64] }.encode(),
            prev_hash: [0; 32],
            entry_hash: [0; 32],
            receipt_time_ms: 0,
        })
        .collect();
    let _ = key;
    let started = Instant::now();
    let mut q = Projection::new(SESSION);
    q.begin_replay();
    for e in &entries {
        q.apply_entry(e).expect("valid entry");
    }
    q.end_replay();
    let t = started.elapsed();
    println!(
        "fold from encoded entries (verified decode + fold, replay mode): {:.0} entries/s over the first {sample}",
        sample as f64 / t.as_secs_f64()
    );

    for n in [10_000u64, 100_000] {
        let scene = editing_log(n as usize * 2 + 1, n, 2);
        let p = {
            let mut p = Projection::new(SESSION);
            for (i, b) in scene.iter().enumerate() {
                p.apply_command(i as u64 + 1, b).expect("valid");
            }
            p
        };
        let started = Instant::now();
        let chunks = p.snapshot(DEFAULT_CHUNK_BYTES, None);
        let build = started.elapsed();
        let bytes: usize = chunks.iter().map(theta_projector::snapshot::encoded_len).sum();
        let started = Instant::now();
        let cp = p.checkpoint();
        let cp_time = started.elapsed();
        let started = Instant::now();
        let back = Projection::from_checkpoint(&cp).expect("checkpoint");
        let restore = started.elapsed();
        assert_eq!(back.state_hash(), p.state_hash());
        println!(
            "{n} entities: snapshot {:.1} ms, {} chunks, {:.2} MB ({:.0} B/entity); checkpoint {:.1} ms, {:.2} MB zstd; restore {:.1} ms",
            build.as_secs_f64() * 1e3,
            chunks.len(),
            bytes as f64 / 1e6,
            bytes as f64 / n as f64,
            cp_time.as_secs_f64() * 1e3,
            cp.len() as f64 / 1e6,
            restore.as_secs_f64() * 1e3
        );
    }
}
