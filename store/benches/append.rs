//! Append benchmark of the store (a bench binary, not a timed test).
//!
//! Measures, in one run on this machine:
//! - the ceiling: ed25519 batch verification alone on every core;
//! - durable verified appends (sync durability: flush + fdatasync before every ack) of
//!   ~300-byte signed commands from 1, 16 and 64 concurrent authors, each keeping 1 or
//!   `--window` appends in flight, driven by one client thread as an event loop would:
//!   appends/s and p50/p99 ack latency;
//! - the trusted-import path (entries already verified, as in a restore) with the same
//!   durability, in 1,000-entry transactions, three in flight.
//!
//! `cargo bench -p theta-store --bench append -- [--commands N] [--window W] [--dir DIR]
//! [--runs 64x32,...]` (`THETA_BLOCK_BYTES` overrides `max_block_bytes`: 131,072 measured the
//! same as the default 32,768 on 2026-11-30)
//! `scripts/bench-store` runs it next to Redis and PostgreSQL and prints the ratios.

/// The allocator the `theta` binary uses.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::sync::Arc;
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
    /// Only these (authors, window) runs (`--runs 64x32,16x1`); all by default.
    runs: Option<Vec<(usize, usize)>>,
    /// Also build a store of this many entries and time its opening (`--open-entries N`).
    open_entries: Option<u64>,
}

fn args() -> Args {
    let mut a = Args {
        commands: 40_000,
        window: 32,
        dir: std::env::temp_dir().join("theta-bench-append"),
        durability: Durability::Sync,
        memory: false,
        runs: None,
        open_entries: None,
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
            "--open-entries" => {
                a.open_entries = Some(it.next().and_then(|v| v.parse().ok()).expect("--open-entries N"))
            }
            "--runs" => {
                let list = it.next().expect("--runs AUTHORSxWINDOW,...");
                a.runs = Some(
                    list.split(',')
                        .map(|r| {
                            let (x, y) = r.split_once('x').expect("AUTHORSxWINDOW");
                            (x.parse().expect("authors"), y.parse().expect("window"))
                        })
                        .collect(),
                );
            }
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

/// Batch verification alone on every core: the ceiling of verified appends. Batches of
/// `batch` signatures by 64 different keys (a batch of one key's signatures would be cheaper
/// than a store with many authors ever sees), verified with the signing rule's batch check, as
/// the store does.
fn ceiling(seconds: f64, batch: usize) -> f64 {
    let threads = std::thread::available_parallelism().map_or(1, |n| n.get());
    let signers: Vec<SigningKey> = (0..64u8).map(|i| SigningKey::from_bytes(&[i.wrapping_add(3); 32])).collect();
    let msgs: Vec<Vec<u8>> = (0..batch as u64)
        .map(|i| {
            let k = &signers[i as usize % 64];
            body(SessionId([1; 16]), k, i + 1, i, 1, transform(i), Transform::id())
        })
        .collect();
    let sigs: Vec<[u8; 64]> =
        msgs.iter().enumerate().map(|(i, m)| ed25519_dalek::Signer::sign(&signers[i % 64], m).to_bytes()).collect();
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
                        assert!(signing::verify_batch((0..batch).map(|i| (
                            &keys[i % 64],
                            msgs[i].as_slice(),
                            &sigs[i]
                        ))));
                        n += batch;
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
    let mut config = StoreConfig { rate_per_sec: 1e12, rate_burst: 1e12, durability, ..StoreConfig::default() };
    if let Some(b) = std::env::var("THETA_BLOCK_BYTES").ok().and_then(|v| v.parse().ok()) {
        config.max_block_bytes = b;
    }
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
    // One client thread drives every author, as an event loop with 64 connections does
    // (redis-benchmark's way too): each author keeps `window` appends in flight; completions
    // come back on one channel.
    let store = Arc::new(store);
    let started = Instant::now();
    let mut lat: Vec<Duration> = Vec::with_capacity(per_author * authors);
    {
        let (tx, rx) = std::sync::mpsc::channel::<(usize, Duration)>();
        let mut streams: Vec<std::vec::IntoIter<Vec<u8>>> = streams.into_iter().map(Vec::into_iter).collect();
        let mut in_flight = vec![0usize; authors];
        let submit = |a: usize, env: Vec<u8>| {
            let tx = tx.clone();
            let t0 = Instant::now();
            store.submit(env, move |r| {
                r.expect("bench append accepted");
                let _ = tx.send((a, t0.elapsed()));
            });
        };
        for (a, stream) in streams.iter_mut().enumerate() {
            for env in stream.by_ref().take(window.max(1)) {
                submit(a, env);
                in_flight[a] += 1;
            }
        }
        let total = per_author * authors;
        while lat.len() < total {
            let first = rx.recv().expect("completions");
            for (a, t) in std::iter::once(first).chain(rx.try_iter()) {
                lat.push(t);
                in_flight[a] -= 1;
                if let Some(env) = streams[a].next() {
                    submit(a, env);
                    in_flight[a] += 1;
                }
            }
        }
    }
    let elapsed = started.elapsed().as_secs_f64();
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
    // Three 1,000-entry chunks in flight, as a restore keeps them: the next one is checked
    // while the previous one is flushed.
    let (tx, rx) = std::sync::mpsc::channel();
    let mut in_flight = 0;
    for chunk in entries.chunks(1_000) {
        if in_flight == 3 {
            rx.recv().unwrap();
            in_flight -= 1;
        }
        let tx = tx.clone();
        target.submit_import(session, chunk.to_vec(), move |r| {
            r.expect("import");
            let _ = tx.send(());
        });
        in_flight += 1;
    }
    for _ in 0..in_flight {
        rx.recv().unwrap();
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

/// Bytes of the files under `dir`.
fn dir_bytes(dir: &std::path::Path) -> u64 {
    std::fs::read_dir(dir).map_or(0, |entries| {
        entries
            .flatten()
            .map(|e| match e.metadata() {
                Ok(m) if m.is_dir() => dir_bytes(&e.path()),
                Ok(m) => m.len(),
                Err(_) => 0,
            })
            .sum()
    })
}

/// The last run's entries, as the material for a big store.
fn store_source(store: &Store, session: SessionId) -> Vec<theta_schemas::LogEntry> {
    store.read_range(&session, 1, u64::MAX).unwrap().map(Result::unwrap).collect()
}

/// Builds a store of `n` entries (copies of the bench session under new session ids, imported
/// through the verified import path), closes it, and times opening it again with each
/// verification mode until the first append is answered.
fn open_time(dir: &std::path::Path, source: &[theta_schemas::LogEntry], n: u64) {
    let _ = std::fs::remove_dir_all(dir);
    let config = StoreConfig { rate_per_sec: 1e12, rate_burst: 1e12, ..StoreConfig::default() };
    let per = source.len() as u64;
    let sessions = n.div_ceil(per);
    let started = Instant::now();
    {
        let store = Store::open(dir, config.clone()).expect("open");
        // Each copy is the same log under another session id: re-hash it for that id.
        for k in 0..sessions {
            let id = SessionId((k as u128 + 1_000).to_be_bytes());
            let mut prev = [0u8; 32];
            let copy: Vec<theta_schemas::LogEntry> = source
                .iter()
                .map(|e| {
                    let (_, mut body) = Envelope::open(&e.envelope).unwrap();
                    body.session = id;
                    // Re-signing is the client's work; these envelopes are trusted imports.
                    let envelope = Envelope { body: body.encode(), signature: [0; 64] }.encode();
                    let h = theta_store::merkle::entry_hash(&id, e.seq, e.receipt_time_ms, &prev, &envelope);
                    let out = theta_schemas::LogEntry {
                        seq: e.seq,
                        envelope,
                        prev_hash: prev,
                        entry_hash: h,
                        receipt_time_ms: e.receipt_time_ms,
                    };
                    prev = h;
                    out
                })
                .collect();
            for chunk in copy.chunks(10_000) {
                store.import(id, chunk.to_vec()).expect("import");
            }
            if k % 50 == 0 {
                eprintln!("  built {} of {} entries", (k + 1) * per, sessions * per);
            }
        }
        store.close();
    }
    println!(
        "RESULT big_store_entries={} big_store_bytes_per_entry={:.0}",
        sessions * per,
        dir_bytes(dir) as f64 / (sessions * per) as f64
    );
    println!(
        "built a store of {} entries in {} sessions in {:.1} s ({:.0} bytes on disk per entry)",
        sessions * per,
        sessions,
        started.elapsed().as_secs_f64(),
        dir_bytes(dir) as f64 / (sessions * per) as f64
    );
    for (i, mode) in [theta_store::VerifyOnOpen::Tail, theta_store::VerifyOnOpen::Full].into_iter().enumerate() {
        let t = Instant::now();
        let store = Store::open(dir, StoreConfig { verify_on_open: mode, ..config.clone() }).expect("open");
        let opened = t.elapsed();
        let key = SigningKey::from_bytes(&[200; 32]);
        let id = SessionId([0xe0 + i as u8; 16]);
        let create = body(id, &key, 1, 1, 0, Command::CreateSession { name: "first".into() }, ComponentId::NONE);
        store.append(&create).expect("first append");
        println!(
            "open {mode:?}: {:.2} s to open, {:.2} s to the first append's receipt",
            opened.as_secs_f64(),
            t.elapsed().as_secs_f64()
        );
        store.close();
    }
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
    let ceiling64 = ceiling(3.0, 64);
    println!("ceiling: ed25519 batch verification alone, {cores} threads, 64 per batch: {ceiling64:.0} signatures/s");
    println!(
        "{:>7} {:>7} {:>12} {:>10} {:>10} {:>11} {:>11} {:>9}",
        "authors", "window", "appends/s", "p50 ms", "p99 ms", "verify bat", "commit grp", "x ceil64"
    );
    let mut last = None;
    let mut parts = Vec::new();
    for authors in [1usize, 16, 64] {
        for window in [1usize, a.window] {
            if a.runs.as_ref().is_some_and(|r| !r.contains(&(authors, window))) {
                continue;
            }
            let commands = if window == 1 && authors == 1 { a.commands.min(2_000) } else { a.commands };
            let (run, store, session) = durable_appends(&a.dir.join("append"), authors, window, commands);
            let m = store.metrics();
            // Signatures per batch check (each verification worker checks whole batches).
            let part = m.signatures_verified as f64 / m.verify_latency.count.max(1) as f64;
            let group = m.appends_accepted as f64 / m.batches_committed.max(1) as f64;
            println!(
                "{authors:>7} {window:>7} {:>12.0} {:>10.2} {:>10.2} {:>11.0} {:>11.0} {:>9.2}   (envelope {} bytes)",
                run.appends_per_sec,
                run.p50.as_secs_f64() * 1e3,
                run.p99.as_secs_f64() * 1e3,
                part,
                group,
                run.appends_per_sec / ceiling64,
                run.envelope_bytes
            );
            parts.push((authors, window, run.appends_per_sec, part));
            last = Some((store, session));
        }
    }
    // The ceiling at the batch size the store used in its busiest run.
    if let Some((authors, window, rate, part)) = parts.iter().copied().max_by(|a, b| a.2.total_cmp(&b.2)) {
        let batch = (part.round() as usize).max(1);
        let at = ceiling(3.0, batch);
        println!(
            "ceiling at the store's batch size ({batch} signatures, 64 keys): {at:.0} signatures/s; \
             {authors} authors x {window}: {rate:.0} appends/s = {:.2}x",
            rate / at
        );
        println!("RESULT best={rate:.0} ceiling_at_batch={at:.0} batch={batch}");
    }
    let (store, session) = last.expect("runs");
    let import = trusted_import(&a.dir.join("import"), &store, session);
    println!("trusted import (sync durability, 1,000-entry batches, 3 in flight): {import:.0} entries/s");
    if !a.memory {
        // Disk use of the last run's store, closed (its final state checkpoint written).
        let entries = store.head(&session).map_or(0, |h| h.seq);
        store.close();
        let bytes = dir_bytes(&a.dir.join("append"));
        println!("RESULT disk_bytes_per_entry={:.0} entries={entries} bytes={bytes}", bytes as f64 / entries as f64);
        if let Some(n) = a.open_entries {
            open_time(&a.dir.join("open"), &store_source(&store, session), n);
        }
    }
    println!("RESULT ceiling={ceiling64:.0} import={import:.0}");
    let _ = std::fs::remove_dir_all(&a.dir);
}
