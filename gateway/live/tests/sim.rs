//! Seeded simulation of the live core: a session's fan-out with editors committing and viewers
//! joining, leaving, reading slowly, being cut and resuming, changing their area of interest and
//! their compression, each viewer's frames passing through a bounded "wire" into its mirror.
//! Time is simulated; some seeds run under ordered visibility (durability lagging behind the
//! commits), and some viewers take compact deltas. Every step checks the memory bounds; at the
//! end, once everything is durable and read, every mirror must equal the server's projection
//! (its state hash; for an interest-managed viewer the hash of the entities inside its area; for
//! a compact one the hash of the world with its transforms quantized), its last delta must have
//! carried a state hash it checked, and it must know that everything it holds is durable.
//!
//! `THETA_SIM_SEEDS=N` runs seeds 0..N (default 200); `THETA_SIM_SEED=S` runs one seed. A failure
//! names its seed. `scripts/sim-live` runs 10,000 seeds in release mode.

use std::collections::{BTreeMap, BTreeSet, VecDeque};
use std::time::Duration;

use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use theta_live::compress::Encoding;
use theta_live::fanout::{FanOut, ViewerOptions};
use theta_live::mirror::{Mirror, MirrorError, Synced};
use theta_projector::Projection;
use theta_projector::interest::{Area, InterestView};
use theta_schemas::components::Transform;
use theta_schemas::ids::ComponentMeta;
use theta_schemas::wire::Capabilities;
use theta_schemas::{AuthorKey, Command, CommandBody, ComponentId, EntityId, SessionId, Shape};

const SESSION: SessionId = SessionId([9; 16]);

/// The server side: the committed log's next commands.
struct Editors {
    authors: Vec<(AuthorKey, u64)>,
    alive: BTreeSet<EntityId>,
    next_entity: EntityId,
    seq: u64,
}

impl Editors {
    fn body(&mut self, who: usize, entity: EntityId, component: ComponentId, command: Command) -> CommandBody {
        let (author, lamport) = &mut self.authors[who];
        *lamport += 1;
        CommandBody {
            session: SESSION,
            author: *author,
            lamport: *lamport,
            nonce: *lamport,
            wall_clock_ms: 0,
            entity,
            component,
            base_version: 0,
            command,
        }
    }

    /// One valid command from a random editor.
    fn next(&mut self, rng: &mut StdRng) -> (u64, CommandBody) {
        self.seq += 1;
        let who = rng.gen_range(0..self.authors.len());
        let n = ComponentId::NONE;
        let pick =
            |rng: &mut StdRng, alive: &BTreeSet<EntityId>| *alive.iter().nth(rng.gen_range(0..alive.len())).unwrap();
        let body = if self.seq == 1 {
            self.body(0, 0, n, Command::CreateSession { name: "sim".into() })
        } else if self.alive.len() < 3 || rng.gen_bool(0.15) {
            let e = self.next_entity;
            self.next_entity += 1;
            self.alive.insert(e);
            let shapes = [Shape::Cube, Shape::Sphere, Shape::Cylinder, Shape::Plane, Shape::Cone];
            let shape = shapes[rng.gen_range(0..shapes.len())];
            self.body(who, e, n, Command::CreateEntity { shape, name: format!("e{e}"), parent: 0 })
        } else {
            let e = pick(rng, &self.alive);
            match rng.gen_range(0..10) {
                0 if self.alive.len() > 8 => {
                    self.alive.remove(&e);
                    self.body(who, e, n, Command::DeleteEntity)
                }
                1 => self.body(
                    who,
                    e,
                    theta_schemas::components::Name::id(),
                    Command::Rename { name: format!("n{}", self.seq) },
                ),
                2 => self.body(who, e, theta_schemas::components::Selection::id(), Command::Select),
                _ => {
                    let t = Transform {
                        translation: [rng.gen_range(-60.0..60.0), rng.gen_range(0.0..3.0), rng.gen_range(-60.0..60.0)],
                        ..Transform::default()
                    };
                    self.body(who, e, Transform::id(), Command::SetTransform(t))
                }
            }
        };
        (self.seq, body)
    }
}

/// One simulated viewer: its connection's state, a bounded wire, and its mirror.
struct Viewer {
    /// The fan-out's id for the current connection (`None` while disconnected).
    id: Option<u64>,
    options: ViewerOptions,
    area: Option<Area>,
    wire: VecDeque<Vec<u8>>,
    wire_cap: usize,
    /// Frames it reads per step (0: stalled this phase).
    rate: usize,
    mirror: Mirror,
    /// The last frame applied was a snapshot or a delta whose state hash was checked.
    last_checked: bool,
}

impl Viewer {
    /// What the connection agrees on (the server offers every encoding and compact deltas).
    fn agreed(&self) -> Capabilities {
        let o = &self.options;
        Capabilities {
            compression: match o.encoding {
                Encoding::Raw => vec![],
                e => vec![e.name().to_string()],
            },
            interest_management: o.interest,
            compact_deltas: o.compact && !o.interest,
            ..Capabilities::default()
        }
    }
}

const ENCODINGS: [Encoding; 4] = [Encoding::Raw, Encoding::Zstd, Encoding::ZstdDict, Encoding::ZstdStream];

fn area(rng: &mut StdRng) -> Area {
    Area { center: [rng.gen_range(-60.0..60.0), 1.0, rng.gen_range(-60.0..60.0)], radius: rng.gen_range(10.0..80.0) }
}

struct Sim {
    rng: StdRng,
    fan: FanOut,
    now: Duration,
    /// Ordered visibility: the durable head (lags the commits).
    durable: Option<u64>,
    editors: Editors,
    viewers: Vec<Viewer>,
    next_id: u64,
    limit: usize,
    /// A dictionary the fan-out asked to train, "running on another thread" until a later step.
    training: Option<theta_live::compress::TrainJob>,
}

impl Sim {
    fn new(seed: u64) -> Sim {
        let mut rng = StdRng::seed_from_u64(seed);
        let limit = rng.gen_range(4..64);
        let authors = (1..=rng.gen_range(1..5u8)).map(|i| (AuthorKey([i; 32]), 0)).collect();
        let mut fan = FanOut::new(Projection::new(SESSION), limit);
        // Pacing: none, or 1, 5 or 20 ms between deltas (steps advance 0 to 20 ms).
        fan.set_pacing(Duration::from_millis([0, 0, 1, 5, 20][rng.gen_range(0..5)]));
        // Stream compression spread (here: the jobs run last to first) from 1 to 3 viewers on.
        if rng.gen_bool(0.5) {
            let spread = |jobs: &mut [theta_live::fanout::StreamJob]| {
                jobs.iter_mut().rev().for_each(theta_live::fanout::StreamJob::run)
            };
            fan.set_spread(Box::new(spread), rng.gen_range(1..4));
        }
        let durable = rng.gen_bool(0.5).then_some(0);
        if durable.is_some() {
            fan.handle_durable(0);
        }
        let mut sim = Sim {
            fan,
            now: Duration::ZERO,
            durable,
            editors: Editors { authors, alive: BTreeSet::new(), next_entity: 1, seq: 0 },
            viewers: Vec::new(),
            next_id: 1,
            limit,
            rng,
            training: None,
        };
        // A log that already has some history when the first viewer arrives.
        let n = sim.rng.gen_range(1..40);
        sim.commit(n).unwrap();
        sim
    }

    fn commit(&mut self, n: usize) -> Result<(), String> {
        let batch: Vec<(u64, CommandBody)> = (0..n).map(|_| self.editors.next(&mut self.rng)).collect();
        self.fan.handle_committed(batch.iter().map(|(s, b)| (*s, b)), self.now).map_err(|e| format!("commit: {e}"))
    }

    /// Ordered visibility: the store's flush catches up to some seq.
    fn flush(&mut self, to_head: bool) {
        if let Some(d) = self.durable {
            let seq = if to_head { self.fan.seq() } else { self.rng.gen_range(d..=self.fan.seq()) };
            self.durable = Some(seq);
            self.fan.handle_durable(seq);
        }
    }

    fn connect(&mut self, v: usize) {
        let id = self.next_id;
        self.next_id += 1;
        let viewer = &mut self.viewers[v];
        let agreed = viewer.agreed();
        viewer.mirror.new_connection(&agreed);
        viewer.options.resume_seq = if viewer.options.interest { 0 } else { viewer.mirror.seq() };
        viewer.id = Some(id);
        viewer.wire.clear();
        self.fan.handle_subscribe(id, viewer.options);
        if let Some(a) = viewer.area {
            self.fan.handle_interest(id, a);
        }
    }

    fn join(&mut self) {
        let interest = self.rng.gen_bool(0.3);
        let options = ViewerOptions {
            encoding: ENCODINGS[self.rng.gen_range(0..4)],
            interest,
            resume_seq: 0,
            max_chunk_bytes: [0, 1_024, 4_096][self.rng.gen_range(0..3)],
            compact: self.rng.gen_bool(0.4),
        };
        let area = if interest && self.rng.gen_bool(0.9) { Some(area(&mut self.rng)) } else { None };
        let wire_cap = self.rng.gen_range(1..16);
        let rate = self.rng.gen_range(0..6);
        self.viewers.push(Viewer {
            id: None,
            options,
            area,
            wire: VecDeque::new(),
            wire_cap,
            rate,
            mirror: Mirror::new(),
            last_checked: true,
        });
        self.connect(self.viewers.len() - 1);
    }

    fn cut(&mut self, v: usize) {
        if let Some(id) = self.viewers[v].id.take() {
            self.fan.handle_cut(id);
            self.viewers[v].wire.clear();
        }
    }

    /// Moves frames fan-out → wire → mirror for viewer `v`, reading at most `reads` frames.
    fn pump(&mut self, v: usize, reads: usize) -> Result<(), String> {
        let Some(id) = self.viewers[v].id else { return Ok(()) };
        for _ in 0..reads {
            while self.viewers[v].wire.len() < self.viewers[v].wire_cap {
                match self.fan.poll_frame(id) {
                    Some(f) => self.viewers[v].wire.push_back(f),
                    None => break,
                }
            }
            let Some(frame) = self.viewers[v].wire.pop_front() else { break };
            match self.viewers[v].mirror.handle_frame(frame) {
                Ok(Some(Synced::Delta { checked, .. })) => self.viewers[v].last_checked = checked,
                Ok(Some(Synced::Snapshot { .. })) => self.viewers[v].last_checked = true,
                Ok(None) => {}
                // The fan-out never sends a frame a correct mirror cannot take: a mirror out of
                // sync is a fan-out bug here (a real client would drop it and resync).
                Err(MirrorError::OutOfSync(reason)) => return Err(format!("viewer {v} out of sync: {reason}")),
                Err(e) => return Err(format!("viewer {v}: {e}")),
            }
        }
        Ok(())
    }

    fn check_bounds(&self) -> Result<(), String> {
        for (i, v) in self.viewers.iter().enumerate() {
            if let Some(id) = v.id
                && self.fan.queued_beyond_snapshot(id) > self.limit
            {
                let queued = self.fan.queued_beyond_snapshot(id);
                return Err(format!("viewer {i}: {queued} frames queued beyond a snapshot, limit {}", self.limit));
            }
            if v.wire.len() > v.wire_cap {
                return Err(format!("viewer {i}: wire over its capacity"));
            }
        }
        let connected = self.viewers.iter().filter(|v| v.id.is_some()).count();
        if self.fan.viewers().count() != connected {
            return Err(format!("{} viewers in the fan-out, {connected} connected", self.fan.viewers().count()));
        }
        Ok(())
    }

    fn step(&mut self) -> Result<(), String> {
        self.now += Duration::from_millis(self.rng.gen_range(0..20));
        match self.rng.gen_range(0..100) {
            0..=39 => {
                let n = self.rng.gen_range(1..6);
                self.commit(n)?;
            }
            40..=44 if self.viewers.len() < 12 => self.join(),
            45..=48 if !self.viewers.is_empty() => {
                let v = self.rng.gen_range(0..self.viewers.len());
                self.cut(v);
            }
            49..=54 if !self.viewers.is_empty() => {
                // Reconnect a cut viewer (resuming from its mirror), sometimes with another
                // compression.
                let v = self.rng.gen_range(0..self.viewers.len());
                if self.viewers[v].id.is_none() {
                    if self.rng.gen_bool(0.3) {
                        self.viewers[v].options.encoding = ENCODINGS[self.rng.gen_range(0..4)];
                    }
                    self.connect(v);
                }
            }
            55..=59 if !self.viewers.is_empty() => {
                let v = self.rng.gen_range(0..self.viewers.len());
                if self.viewers[v].options.interest {
                    let a = area(&mut self.rng);
                    self.viewers[v].area = Some(a);
                    if let Some(id) = self.viewers[v].id {
                        self.fan.handle_interest(id, a);
                    }
                }
            }
            60..=62 if !self.viewers.is_empty() => {
                // A viewer changes pace (stalls, reads slowly, or fast).
                let v = self.rng.gen_range(0..self.viewers.len());
                self.viewers[v].rate = self.rng.gen_range(0..6);
            }
            63 if self.viewers.len() > 1 => {
                // A viewer leaves for good.
                let v = self.rng.gen_range(0..self.viewers.len());
                self.cut(v);
                self.viewers.remove(v);
            }
            64..=73 => self.flush(false),
            _ => {}
        }
        self.fan.handle_timeout(self.now);
        self.train(false);
        for v in 0..self.viewers.len() {
            let rate = self.viewers[v].rate;
            self.pump(v, rate)?;
        }
        self.check_bounds()
    }

    /// Takes a dictionary job the fan-out hands out, and (now, or with `finish`) hands back
    /// the dictionary trained from it, as a training thread would some steps later.
    fn train(&mut self, finish: bool) {
        if let Some(job) = self.fan.poll_training() {
            self.training = Some(job);
        }
        if (finish || self.rng.gen_bool(0.2))
            && let Some(job) = self.training.take()
            && let Some(trained) = job.run()
        {
            self.fan.handle_trained(trained);
        }
    }

    /// Pumps every viewer until nothing moves.
    fn drain(&mut self) -> Result<(), String> {
        for _ in 0..10_000 {
            let mut busy = false;
            for v in 0..self.viewers.len() {
                self.pump(v, 64)?;
                let viewer = &self.viewers[v];
                let id = viewer.id.expect("connected");
                busy |= !viewer.wire.is_empty() || self.fan.queued(id) > 0 || self.fan.is_resyncing(id);
            }
            self.check_bounds()?;
            if !busy {
                break;
            }
        }
        Ok(())
    }

    /// Everyone reconnects and reads everything; then every mirror must equal the server.
    fn settle(&mut self) -> Result<(), String> {
        for v in 0..self.viewers.len() {
            if self.viewers[v].id.is_none() {
                self.connect(v);
            }
        }
        self.drain()?;
        // Everything becomes durable; the confirm frames go out once their time has come.
        self.flush(true);
        self.drain()?;
        // The delta pacing held back, then the confirm frames, go out once their time has come.
        self.train(true);
        for _ in 0..4 {
            if let Some(at) = self.fan.poll_timeout() {
                self.now = self.now.max(at);
                self.fan.handle_timeout(self.now);
            }
            self.drain()?;
        }
        if let Some(at) = self.fan.poll_timeout() {
            return Err(format!("a confirm frame is still due at {at:?} (now {:?})", self.now));
        }
        let compact_hash = self.fan.compact_state_hash();
        let server = self.fan.projection();
        for (i, v) in self.viewers.iter().enumerate() {
            let id = v.id.expect("connected");
            if self.fan.queued(id) > 0 || self.fan.is_resyncing(id) || !v.wire.is_empty() {
                return Err(format!(
                    "viewer {i} never caught up: {} queued, resyncing {}, {} on the wire, options {:?}, mirror at {}",
                    self.fan.queued(id),
                    self.fan.is_resyncing(id),
                    v.wire.len(),
                    v.options,
                    v.mirror.seq()
                ));
            }
            if v.options.interest && v.area.is_none() {
                continue; // streams nothing until it names an area
            }
            let mirror = v.mirror.projection().ok_or_else(|| format!("viewer {i} has no mirror"))?;
            if mirror.seq() != server.seq() {
                return Err(format!("viewer {i} at seq {}, server at {}", mirror.seq(), server.seq()));
            }
            if v.options.interest {
                let mut expected = InterestView::new(v.area.expect("area"));
                expected.snapshot(server, 1 << 16);
                let held: BTreeSet<EntityId> = mirror.entities().collect();
                if &held != expected.known() {
                    return Err(format!("viewer {i} holds {held:?}, its area has {:?}", expected.known()));
                }
                if mirror.state_hash() != server.subset_hash(&held) {
                    return Err(format!("viewer {i}: the mirror differs from the server within its area"));
                }
            } else if v.agreed().compact_deltas {
                if mirror.state_hash() != compact_hash {
                    return Err(format!("compact viewer {i}: state hash differs from the server's compact hash"));
                }
            } else if mirror.state_hash() != server.state_hash() {
                return Err(format!("viewer {i}: state hash differs from the server's"));
            }
            if !v.last_checked {
                return Err(format!("viewer {i}: its last delta carried no state hash"));
            }
            if v.mirror.durable_seq() != server.seq() {
                return Err(format!(
                    "viewer {i}: knows seq {} durable, all {} are",
                    v.mirror.durable_seq(),
                    server.seq()
                ));
            }
        }
        Ok(())
    }
}

fn run(seed: u64) -> Result<BTreeMap<&'static str, u64>, String> {
    let mut sim = Sim::new(seed);
    let steps = sim.rng.gen_range(50..400);
    for _ in 0..3 {
        sim.join();
    }
    for _ in 0..steps {
        sim.step()?;
    }
    sim.settle()?;
    let counts = sim.fan.take_counts();
    Ok(BTreeMap::from([
        ("deltas", counts.deltas),
        ("resyncs", counts.resyncs),
        ("resumes", counts.resumes),
        ("snapshots", counts.snapshots),
        ("confirms", counts.confirms),
        ("dictionaries", counts.dictionaries),
        ("viewers", sim.viewers.len() as u64),
        ("seq", sim.fan.seq()),
    ]))
}

#[test]
fn every_mirror_converges_to_the_server_under_random_schedules() {
    let seeds: Vec<u64> = match std::env::var("THETA_SIM_SEED") {
        Ok(s) => vec![s.parse().expect("THETA_SIM_SEED: a number")],
        Err(_) => {
            let n = std::env::var("THETA_SIM_SEEDS").ok().and_then(|s| s.parse().ok()).unwrap_or(200);
            (0..n).collect()
        }
    };
    let mut totals: BTreeMap<&str, u64> = BTreeMap::new();
    for &seed in &seeds {
        match run(seed) {
            Ok(counts) => {
                for (k, v) in counts {
                    *totals.entry(k).or_default() += v;
                }
            }
            Err(e) => panic!("seed {seed} failed: {e}\nrerun it alone with THETA_SIM_SEED={seed}"),
        }
    }
    println!("{} seeds: {totals:?}", seeds.len());
    // The schedules reach every path they are meant to: resyncs, resumes and snapshots.
    if seeds.len() >= 100 {
        for path in ["resyncs", "resumes", "snapshots", "deltas"] {
            assert!(totals[path] > 0, "no seed exercised {path}: {totals:?}");
        }
    }
}
