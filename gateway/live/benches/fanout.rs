//! The fan-out's own cost, without I/O: the live bench's workload (32 editors moving 256 cubes
//! on a 160 m field, one transform per command, 2,880 commands/s of simulated time) committed
//! in batches into one [`FanOut`] with N viewers of one encoding, exact or compact, every
//! viewer's frames taken as they are queued. Measures the time per delta per viewer (commit
//! fold + encode + queue + poll, divided by deltas × viewers) and the bytes each viewer
//! receives per command, raw and as sent; one viewer's mirror applies every frame and must
//! match (state hash) at the end.
//!
//! `cargo bench -p theta-live --bench fanout` (`THETA_BENCH_DELTAS`, default 3,000 per run;
//! `THETA_BENCH_BATCH` commands per commit, default 4).

use std::time::{Duration, Instant};

use theta_live::compress::Encoding;
use theta_live::fanout::{CHECK_INTERVAL, FanOut, ViewerOptions};
use theta_live::mirror::Mirror;
use theta_projector::Projection;
use theta_schemas::components::Transform;
use theta_schemas::ids::ComponentMeta;
use theta_schemas::{AuthorKey, Command, CommandBody, ComponentId, SessionId, Shape};

const S: SessionId = SessionId([0x4c; 16]);
use theta_testkit::cubes::{self, EDITORS, PER_EDITOR};

struct Log {
    seq: u64,
    lamport: u64,
    /// Updates sent per editor.
    sent: Vec<u64>,
    /// Picks the next editor (xorshift): editors' commands interleave irregularly, as on a
    /// real server.
    rng: u64,
}

impl Log {
    fn body(&mut self, entity: u64, component: ComponentId, command: Command) -> (u64, CommandBody) {
        self.seq += 1;
        self.lamport += 1;
        let body = CommandBody {
            session: S,
            author: AuthorKey([1; 32]),
            lamport: self.lamport,
            nonce: self.lamport,
            wall_clock_ms: 0,
            entity,
            component,
            base_version: 0,
            command,
        };
        (self.seq, body)
    }

    /// A random editor's next transform update, as the live bench's editors send them.
    fn update(&mut self) -> (u64, CommandBody) {
        self.rng ^= self.rng << 13;
        self.rng ^= self.rng >> 7;
        self.rng ^= self.rng << 17;
        let editor = (self.rng % EDITORS) as usize;
        self.sent[editor] += 1;
        let (e, t) = cubes::update(editor as u64, self.sent[editor]);
        self.body(e, Transform::id(), Command::SetTransform(t))
    }
}

struct Run {
    ns_per_delta_viewer: f64,
    raw_per_command: f64,
    sent_per_command: f64,
}

fn run(encoding: Encoding, compact: bool, viewers: u64, deltas: u64, batch: u64) -> Run {
    let mut log = Log { seq: 0, lamport: 0, sent: vec![0; EDITORS as usize], rng: 0x9e37_79b9_7f4a_7c15 };
    let mut p = Projection::new(S);
    let mut setup = vec![log.body(0, ComponentId::NONE, Command::CreateSession { name: "bench".into() })];
    for e in 1..=EDITORS * PER_EDITOR {
        let create = Command::CreateEntity { shape: Shape::Cube, name: format!("cube {e}"), parent: 0 };
        setup.push(log.body(e, ComponentId::NONE, create));
        let t = Transform { translation: cubes::home(e), ..Transform::default() };
        setup.push(log.body(e, Transform::id(), Command::SetTransform(t)));
    }
    for (seq, body) in &setup {
        p.apply_command(*seq, body).unwrap();
    }
    let mut fan = FanOut::new(p, 256);
    let mut mirrors: Vec<Mirror> = (0..viewers).map(|_| Mirror::new()).collect();
    let options = ViewerOptions { encoding, compact, ..ViewerOptions::default() };
    let agreed = theta_schemas::wire::Capabilities {
        compression: if encoding == Encoding::Raw { vec![] } else { vec![encoding.name().to_string()] },
        compact_deltas: compact,
        ..Default::default()
    };
    for m in &mut mirrors {
        m.new_connection(&agreed);
    }
    for id in 0..viewers {
        fan.handle_subscribe(id, options);
    }
    // Snapshots out of the way (not measured).
    let drain = |fan: &mut FanOut, mirrors: &mut [Mirror], check: bool| -> u64 {
        let mut bytes = 0;
        for (id, m) in mirrors.iter_mut().enumerate() {
            while let Some(f) = fan.poll_frame(id as u64) {
                bytes += f.len() as u64;
                if check {
                    m.handle_frame(f).unwrap();
                }
            }
        }
        bytes
    };
    drain(&mut fan, &mut mirrors, true);
    let _ = fan.take_counts();
    let mut sent = 0;
    let mut elapsed = 0.0;
    for i in 0..deltas {
        let commands: Vec<_> = (0..batch).map(|_| log.update()).collect();
        let now = Duration::from_secs_f64(i as f64 * batch as f64 / 2_880.0);
        let t = Instant::now();
        fan.handle_committed(commands.iter().map(|(s, b)| (*s, b)), now).unwrap();
        fan.handle_timeout(now);
        let mut frames = Vec::new();
        for id in 0..viewers {
            while let Some(f) = fan.poll_frame(id) {
                frames.push((id, f));
            }
        }
        elapsed += t.elapsed().as_secs_f64();
        // Dictionaries are trained off the session's thread (outside the timing).
        if let Some(job) = fan.poll_training() {
            fan.handle_trained(job.run().expect("a dictionary from the deltas"));
        }
        // The first viewer's mirror checks every frame (outside the timing).
        for (id, f) in frames {
            sent += f.len() as u64;
            if id == 0 {
                let _ = mirrors[0].handle_frame(f);
            }
        }
    }
    // The last change is confirmed once the check interval has passed.
    let end = Duration::from_secs_f64(deltas as f64 * batch as f64 / 2_880.0) + CHECK_INTERVAL;
    fan.handle_timeout(end);
    while let Some(f) = fan.poll_frame(0) {
        mirrors[0].handle_frame(f).unwrap();
    }
    let mut want = fan.projection().state_hash();
    if compact {
        want = fan.compact_state_hash();
    }
    assert_eq!(mirrors[0].projection().unwrap().state_hash(), want, "the mirror differs from the server");
    let counts = fan.take_counts();
    let commands = (deltas * batch) as f64;
    let raw = if encoding == Encoding::Raw { sent } else { counts.raw_bytes };
    Run {
        ns_per_delta_viewer: elapsed * 1e9 / (deltas * viewers) as f64,
        raw_per_command: raw as f64 / viewers as f64 / commands,
        sent_per_command: sent as f64 / viewers as f64 / commands,
    }
}

fn main() {
    let env = |k: &str, d: u64| std::env::var(k).ok().and_then(|v| v.parse().ok()).unwrap_or(d);
    let deltas = env("THETA_BENCH_DELTAS", 3_000);
    let batch = env("THETA_BENCH_BATCH", 4);
    println!("fan-out without I/O: {deltas} deltas of {batch} transform updates each, 256 entities");
    println!(
        "| encoding | deltas | viewers | per delta per viewer | raw bytes/command | sent bytes/command | fewer than raw exact |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- |");
    let encodings = [Encoding::Raw, Encoding::Zstd, Encoding::ZstdDict, Encoding::ZstdStream];
    let mut raw_baseline = None;
    for (encoding, compact) in encodings.iter().flat_map(|e| [(*e, false), (*e, true)]) {
        for viewers in [16, 100] {
            let r = run(encoding, compact, viewers, deltas, batch);
            let baseline = *raw_baseline.get_or_insert(r.raw_per_command);
            println!(
                "| {} | {} | {viewers} | {:.0} ns | {:.1} | {:.1} | {:.1}× |",
                encoding.name(),
                if compact { "compact" } else { "exact" },
                r.ns_per_delta_viewer,
                r.raw_per_command,
                r.sent_per_command,
                baseline / r.sent_per_command
            );
        }
    }
}
