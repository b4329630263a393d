//! Crash recovery: a child process appends continuously and is killed with SIGKILL at random
//! moments; every acknowledged entry must survive, with no gap, a verifying chain and tree,
//! and no nonce accepted twice across restarts.
//!
//! `THETA_CRASH_KILLS` sets the number of kills (default 50; e.g. 1000 for a long run).

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Write};
use std::process::{Command as Process, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rand::Rng;
use theta_schemas::components::Transform;
use theta_schemas::ids::ComponentMeta;
use theta_schemas::{Command, Envelope, Role};
use theta_store::{AppendError, Store, StoreConfig};

use crate::helpers::*;

const SESSION: u8 = 8;
const AUTHORS: u8 = 4;

#[test]
#[ignore = "child process of crash_recovery_keeps_every_acknowledged_entry, which runs it"]
fn crash_child() {
    let dir = std::env::var("THETA_CRASH_DIR").expect("THETA_CRASH_DIR");
    let store = Arc::new(Store::open(&dir, relaxed()).expect("open"));
    assert!(store.corrupted().is_empty(), "corrupted: {:?}", store.corrupted());
    let s = session(SESSION);
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let say = |line: String| {
        let mut o = out.lock().unwrap();
        writeln!(o, "{line}").unwrap();
        o.flush().unwrap();
    };
    let clock = match store.head(&s) {
        Ok(h) => h.clock,
        Err(_) => {
            let mut owner = Author::new(1);
            create_session(&store, &mut owner, s);
            for i in 0..AUTHORS {
                grant(&store, &mut owner, s, &Author::new(10 + i), Role::Editor);
            }
            create_entity(&store, &mut owner, s, 1, 0);
            owner.lamport
        }
    };
    // Re-send the newest entries: each must be refused as a replay, even after a crash.
    let head = store.head(&s).unwrap().seq;
    for e in store.read_range(&s, head.saturating_sub(4), head).unwrap() {
        match store.append(&e.unwrap().envelope) {
            Err(AppendError::Replay { .. }) => say("replay-rejected".into()),
            other => say(format!("REPLAY-ACCEPTED {other:?}")),
        }
    }
    say("ready".into());
    let threads: Vec<_> = (0..AUTHORS)
        .map(|i| {
            let store = store.clone();
            let out = out.clone();
            std::thread::spawn(move || {
                let mut a = Author::new(10 + i);
                a.lamport = clock + 1;
                let mut rng = rand::thread_rng();
                loop {
                    a.nonce = rng.r#gen();
                    let t = Transform { translation: [a.lamport as f32, 0.0, 0.0], ..Transform::default() };
                    let r = store.append(&a.cmd(s, 1, Transform::id(), 0, Command::SetTransform(t)));
                    match r {
                        Ok(r) => {
                            let mut o = out.lock().unwrap();
                            writeln!(o, "ack {} {}", r.seq, hex::encode(r.entry_hash)).unwrap();
                            o.flush().unwrap();
                        }
                        Err(e) => panic!("append failed: {e}"),
                    }
                }
            })
        })
        .collect();
    // The authors append until the parent kills this process.
    for t in threads {
        assert!(t.join().is_ok(), "an author thread panicked");
    }
}

#[test]
fn crash_recovery_keeps_every_acknowledged_entry() {
    let kills: usize = std::env::var("THETA_CRASH_KILLS").ok().and_then(|v| v.parse().ok()).unwrap_or(50);
    let dir = tempfile::tempdir().unwrap();
    let exe = std::env::current_exe().unwrap();
    let mut rng = rand::thread_rng();
    let mut acked: BTreeMap<u64, String> = BTreeMap::new();
    let started = Instant::now();
    let mut replays_checked = 0;
    for round in 0..kills {
        let mut child = Process::new(&exe)
            .args(["crash::crash_child", "--exact", "--ignored", "--nocapture", "--test-threads=1"])
            .env("THETA_CRASH_DIR", dir.path())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .expect("spawn child");
        let stdout = child.stdout.take().unwrap();
        let (tx, rx) = std::sync::mpsc::channel::<String>();
        let reader = std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines() {
                let Ok(line) = line else { break };
                if tx.send(line).is_err() {
                    break;
                }
            }
        });
        // Wait until the child is appending, then let it run for a random while.
        let deadline = Instant::now() + Duration::from_secs(60);
        let mut lines = Vec::new();
        loop {
            let line =
                rx.recv_timeout(Duration::from_secs(60)).unwrap_or_else(|_| panic!("round {round}: child silent"));
            let ready = line == "ready";
            lines.push(line);
            if ready {
                break;
            }
            assert!(Instant::now() < deadline, "round {round}: child never became ready");
        }
        std::thread::sleep(Duration::from_millis(rng.gen_range(5..120)));
        child.kill().expect("SIGKILL");
        child.wait().unwrap();
        reader.join().unwrap();
        lines.extend(rx.try_iter());
        for line in &lines {
            assert!(!line.starts_with("REPLAY-ACCEPTED"), "round {round}: {line}");
            if line == "replay-rejected" {
                replays_checked += 1;
            }
            if let Some(rest) = line.strip_prefix("ack ") {
                let (seq, hash) = rest.split_once(' ').expect("ack line");
                let seq: u64 = seq.parse().unwrap();
                if let Some(prev) = acked.insert(seq, hash.to_string()) {
                    assert_eq!(&prev, hash, "round {round}: seq {seq} acknowledged twice with different entries");
                }
            }
        }
        // Reopen: everything acknowledged is there, unchanged, and the log verifies.
        let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
        assert!(store.corrupted().is_empty(), "round {round}: {:?}", store.corrupted());
        let s = session(SESSION);
        let head = store.head(&s).unwrap();
        let max_acked = acked.keys().next_back().copied().unwrap_or(0);
        assert!(head.seq >= max_acked, "round {round}: head {} below acknowledged {max_acked}", head.seq);
        for (seq, hash) in acked.range(acked.keys().next_back().map_or(0, |m| m.saturating_sub(2_000))..) {
            let e = store.entry(&s, *seq).unwrap();
            assert_eq!(&hex::encode(e.entry_hash), hash, "round {round}: acknowledged seq {seq} changed");
        }
    }
    // Final full check: gapless, chain, tree, nonces unique across every restart.
    let store = Store::open(dir.path(), StoreConfig::default()).unwrap();
    let s = session(SESSION);
    let entries = all_entries(&store, &s);
    for (seq, hash) in &acked {
        assert_eq!(&hex::encode(entries[*seq as usize - 1].entry_hash), hash);
    }
    let mut seen = BTreeSet::new();
    for e in &entries {
        let (_, b) = Envelope::open(&e.envelope).unwrap();
        assert!(seen.insert((b.author, b.nonce)), "nonce {} of {} accepted twice", b.nonce, b.author);
    }
    let head = store.head(&s).unwrap();
    let p = store.inclusion_proof(&s, head.seq / 2 + 1, head.seq).unwrap();
    assert!(p.verify());
    assert!(replays_checked >= kills, "every restart re-sent old entries");
    eprintln!(
        "crash test: {kills} kills, {} acknowledged entries, log of {}, {:.1} s",
        acked.len(),
        head.seq,
        started.elapsed().as_secs_f64()
    );
}
