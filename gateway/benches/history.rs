//! Time-travel benchmark (a bench binary, not a timed test): a session of 1M entries in a
//! real sled store with checkpoints every 10,000 entries; the time to open its projection at
//! random seqs (nearest checkpoint + replay), against opening without checkpoints.
//!
//! `cargo bench -p theta-gateway --bench history -- [--entries N] [--opens K]`

#[path = "common.rs"]
mod common;

use std::time::{Duration, Instant};

use rand::{Rng, SeedableRng};
use theta_gateway::history::{DEFAULT_CHECKPOINT_EVERY_ENTRIES, project, write_checkpoints};
use theta_schemas::SessionId;
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

    let started = Instant::now();
    common::build_log(&store, S, entries);
    println!("built the log in {:.1} s (trusted import)", started.elapsed().as_secs_f64());

    let started = Instant::now();
    let written = write_checkpoints(&store, &S, DEFAULT_CHECKPOINT_EVERY_ENTRIES).expect("checkpoints");
    let (_, sample) = store.checkpoint_at_or_below(&S, entries).unwrap().expect("a checkpoint");
    println!(
        "wrote {written} checkpoints in {:.1} s (last one {:.0} KiB)",
        started.elapsed().as_secs_f64(),
        sample.len() as f64 / 1024.0
    );

    let mut rng = rand::rngs::StdRng::seed_from_u64(2);
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
