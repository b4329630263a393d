//! Append benchmark of the store (a bench binary, not a timed test).
//!
//! Measures, in one run on this machine:
//! - the ceiling: ed25519 batch verification alone on every core;
//! - durable verified appends (sync durability: flush + fdatasync before every ack) of
//!   ~200-byte signed commands from 1, 16 and 64 concurrent authors, each keeping 1 or
//!   `--window` appends in flight: appends/s and p50/p99 ack latency;
//! - the trusted-import path (entries already verified, as in a restore) with the same
//!   durability, in 1,000-entry transactions.
//!
//! `cargo bench -p theta-store --bench append -- [--commands N] [--window W] [--dir DIR]`
//! `scripts/bench-store` runs it next to Redis and PostgreSQL and prints the ratios.

use std::sync::mpsc::sync_channel;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use theta_schemas::components::Transform;
use theta_schemas::ids::ComponentMeta;
use theta_schemas::signing::{self, author_key};
use theta_schemas::{Command, CommandBody, ComponentId, Envelope, Role, SessionId, Shape};
use theta_store::{Durability, Store, StoreConfig};

struct Args {
    commands: usize,
    window: usize,
    dir: std::path::PathBuf,
    durability: Durability,
    memory: bool,
}

fn args() -> Args {
    let mut a = Args {
        commands: 40_000,
        window: 32,
        dir: std::env::temp_dir().join("theta-bench-append"),
        durability: Durability::Sync,
        memory: false,
    };
    let mut it = std::env::args().skip(1);
    while let Some(x) = it.next() {
        match x.as_str() {
            "--commands" => a.commands = it.next().and_then(|v| v.parse().ok()).expect("--commands N"),
            "--window" => a.window = it.next().and_then(|v| v.parse().ok()).expect("--window W"),
            "--dir" => a.dir = it.next().expect("--dir DIR").into(),
            "--durability" => {
                a.durability = match it.next().as_deref() {
                    Some("sync") => Durability::Sync,
                    Some("none") => Durability::None,
                    other => panic!("--durability sync|none, not {other:?}"),
                }
            }
            "--memory" => a.memory = true,
            "--bench" => {}
            other => eprintln!("append bench: ignoring argument {other}"),
        }
    }
    a
}

fn body(
    session: SessionId,
    key: &SigningKey,
    lamport: u64,
    nonce: u64,
    entity: u64,
    command: Command,
    component: ComponentId,
) -> Vec<u8> {
    let b = CommandBody {
        session,
        author: author_key(key),
        lamport,
        nonce,
        wall_clock_ms: 1_700_000_000_000 + lamport,
        entity,
        component,
        base_version: 0,
        command,
    };
    Envelope::sign(&b, key).encode()
}

fn transform(i: u64) -> Command {
    let f = i as f32;
    Command::SetTransform(Transform {
        translation: [f * 0.01, 1.5, -f * 0.02],
        rotation: [0.0, 0.38268, 0.0, 0.92388],
        scale: [1.0; 3],
    })
}

/// Batch verification alone on every core: the ceiling of verified appends. 64 signatures by
/// 64 different keys per batch (a batch of one key's signatures would be cheaper than a store
/// with many authors ever sees), verified with the signing rule's batch check, as the store does.
fn ceiling(seconds: f64) -> f64 {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let signers: Vec<SigningKey> = (0..64u8).map(|i| SigningKey::from_bytes(&[i.wrapping_add(3); 32])).collect();
    let msgs: Vec<Vec<u8>> = (0..64u64)
        .map(|i| body(SessionId([1; 16]), &signers[i as usize], i + 1, i, 1, transform(i), Transform::id()))
        .collect();
    let sigs: Vec<[u8; 64]> =
        msgs.iter().zip(&signers).map(|(m, k)| ed25519_dalek::Signer::sign(k, m).to_bytes()).collect();
    let keys: Vec<signing::PublicKey> =
        signers.iter().map(|k| signing::public_key(&k.verifying_key().to_bytes()).unwrap()).collect();
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let total: usize = std::thread::scope(|s| {
        let hs: Vec<_> = (0..threads)
            .map(|_| {
                s.spawn(|| {
                    let mut n = 0;
                    while Instant::now() < deadline {
                        assert!(signing::verify_batch((0..64).map(|i| (&keys[i], msgs[i].as_slice(), &sigs[i]))));
                        n += 64;
                    }
                    n
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).sum()
    });
    total as f64 / started.elapsed().as_secs_f64()
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    sorted[((sorted.len() as f64 - 1.0) * p).round() as usize]
}

struct Run {
    appends_per_sec: f64,
    p50: Duration,
    p99: Duration,
    envelope_bytes: usize,
}

static MODE: std::sync::OnceLock<(Durability, bool)> = std::sync::OnceLock::new();

fn open(dir: &std::path::Path) -> Store {
    let _ = std::fs::remove_dir_all(dir);
    let (durability, memory) = *MODE.get().expect("mode set");
    let config = StoreConfig { rate_per_sec: 1e12, rate_burst: 1e12, durability, ..StoreConfig::default() };
    if memory {
        return Store::open_in_memory(config);
    }
    Store::open(dir, config).expect("open store")
}

fn durable_appends(dir: &std::path::Path, authors: usize, window: usize, commands: usize) -> (Run, Store, SessionId) {
    let store = open(dir);
    let session = SessionId([authors as u8; 16]);
    let owner = SigningKey::from_bytes(&[1; 32]);
    let none = ComponentId::NONE;
    store.append(&body(session, &owner, 1, 1, 0, Command::CreateSession { name: "bench".into() }, none)).unwrap();
    let keys: Vec<SigningKey> = (0..authors).map(|i| SigningKey::from_bytes(&[(i % 250) as u8 + 5; 32])).collect();
    let mut lamport = 1;
    for (i, k) in keys.iter().enumerate() {
        lamport += 1;
        let grant = Command::GrantRole { key: author_key(k), role: Role::Editor };
        store.append(&body(session, &owner, lamport, 100 + i as u64, 0, grant, none)).unwrap();
    }
    for e in 0..authors as u64 {
        lamport += 1;
        let create = Command::CreateEntity { shape: Shape::Cube, name: format!("e{e}"), parent: 0 };
        store.append(&body(session, &owner, lamport, 10_000 + e, e + 1, create, none)).unwrap();
    }
    // Pre-sign every command: signing is the client's cost, not the store's.
    let per_author = commands / authors;
    let streams: Vec<Vec<Vec<u8>>> = keys
        .iter()
        .enumerate()
        .map(|(a, k)| {
            (0..per_author as u64)
                .map(|i| body(session, k, lamport + 1 + i, i, a as u64 + 1, transform(i), Transform::id()))
                .collect()
        })
        .collect();
    let envelope_bytes = streams[0][0].len();
    let latencies = Arc::new(Mutex::new(Vec::with_capacity(per_author * authors)));
    let store = Arc::new(store);
    let started = Instant::now();
    std::thread::scope(|s| {
        for stream in streams {
            let store = store.clone();
            let latencies = latencies.clone();
            s.spawn(move || {
                let (tx, rx) = sync_channel::<Duration>(window.max(1));
                let mut in_flight = 0;
                let mut mine = Vec::with_capacity(stream.len());
                for env in stream {
                    if in_flight == window.max(1) {
                        mine.push(rx.recv().unwrap());
                        in_flight -= 1;
                    }
                    let tx = tx.clone();
                    let t0 = Instant::now();
                    store.submit(env, move |r| {
                        r.expect("bench append accepted");
                        let _ = tx.send(t0.elapsed());
                    });
                    in_flight += 1;
                }
                for _ in 0..in_flight {
                    mine.push(rx.recv().unwrap());
                }
                latencies.lock().unwrap().extend(mine);
            });
        }
    });
    let elapsed = started.elapsed().as_secs_f64();
    let mut lat = std::mem::take(&mut *latencies.lock().unwrap());
    lat.sort();
    let run = Run {
        appends_per_sec: lat.len() as f64 / elapsed,
        p50: percentile(&lat, 0.5),
        p99: percentile(&lat, 0.99),
        envelope_bytes,
    };
    let store = Arc::try_unwrap(store).ok().expect("sole owner");
    (run, store, session)
}

fn trusted_import(dir: &std::path::Path, source: &Store, session: SessionId) -> f64 {
    let entries: Vec<_> = source.read_range(&session, 1, u64::MAX).unwrap().map(Result::unwrap).collect();
    let target = open(dir);
    let started = Instant::now();
    for chunk in entries.chunks(1_000) {
        target.import(session, chunk.to_vec()).expect("import");
    }
    entries.len() as f64 / started.elapsed().as_secs_f64()
}

/// Median latency of one small batch + sled flush, without and with the fdatasync that
/// Theta adds for power-loss durability.
fn flush_cost(dir: &std::path::Path) -> (Duration, Duration) {
    use theta_store::backend::{Backend, SledBackend, WriteBatch};
    let _ = std::fs::remove_dir_all(dir);
    let backend = SledBackend::open(dir, 64 << 20).expect("open sled");
    let measure = |sync: bool| {
        let mut times: Vec<Duration> = (0..300u64)
            .map(|i| {
                let mut b = WriteBatch::default();
                b.put(i.to_be_bytes().to_vec(), vec![7; 300]);
                let t = Instant::now();
                backend.apply(b).unwrap();
                backend.flush(sync).unwrap();
                t.elapsed()
            })
            .collect();
        times.sort();
        times[times.len() / 2]
    };
    let plain = measure(false);
    let synced = measure(true);
    (plain, synced)
}

fn main() {
    let a = args();
    MODE.set((a.durability, a.memory)).expect("once");
    let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
    let backend = if a.memory { "memory".to_string() } else { format!("sled in {}", a.dir.display()) };
    println!(
        "theta-store append bench: {cores} cores, {} commands per run, durability {:?}, {backend}",
        a.commands, a.durability
    );
    if !a.memory {
        let (plain, synced) = flush_cost(&a.dir.join("flush"));
        println!(
            "flush of one 300-byte write, median: sled flush {:.3} ms, sled flush + fdatasync {:.3} ms",
            plain.as_secs_f64() * 1e3,
            synced.as_secs_f64() * 1e3
        );
    }
    let ceiling = ceiling(3.0);
    println!("ceiling: ed25519 batch verification alone, {cores} threads: {ceiling:.0} signatures/s");
    println!("{:>7} {:>7} {:>12} {:>10} {:>10} {:>8}", "authors", "window", "appends/s", "p50 ms", "p99 ms", "x ceil");
    let mut last = None;
    for authors in [1usize, 16, 64] {
        for window in [1usize, a.window] {
            let commands = if window == 1 && authors == 1 { a.commands.min(2_000) } else { a.commands };
            let (run, store, session) = durable_appends(&a.dir.join("append"), authors, window, commands);
            println!(
                "{authors:>7} {window:>7} {:>12.0} {:>10.2} {:>10.2} {:>8.2}   (envelope {} bytes)",
                run.appends_per_sec,
                run.p50.as_secs_f64() * 1e3,
                run.p99.as_secs_f64() * 1e3,
                run.appends_per_sec / ceiling,
                run.envelope_bytes
            );
            last = Some((store, session));
        }
    }
    let (store, session) = last.expect("runs");
    let import = trusted_import(&a.dir.join("import"), &store, session);
    println!("trusted import (sync durability, 1,000-entry batches): {import:.0} entries/s");
    println!("RESULT ceiling={ceiling:.0} import={import:.0}");
    let _ = std::fs::remove_dir_all(&a.dir);
}
