//! The soak: `theta serve` in its own process under long mixed load, started as operators
//! start it, with its memory, open files and threads sampled throughout.
//!
//! The load: editors over QUIC, each on its own entities (transforms at `THETA_SOAK_HZ` each,
//! with renames, materials and tool changes mixed in); QUIC viewers and WebRTC viewers
//! mirroring the session; gRPC readers (the state at random seqs, which the server builds from
//! its checkpoints, inclusion proofs, log windows); gRPC subscribers following the log. Every
//! client is cut on a schedule and resumes (a cut lands anywhere in its streams), so the run
//! also covers connections dropped mid-stream. The server writes a checkpoint every 500
//! entries.
//!
//! At the end: the server re-verifies the whole log (signatures, chain, tree); every
//! acknowledged entry is in the log at its seq with its hash and author, in the order its editor
//! sent it; each (author, nonce) appears once; every mirror and subscriber reached the head, the
//! mirrors with the server's state hash; the peak resident memory of the last third of the
//! loaded run (after the warm-up) is less than 10 % above that of the first third (judged when
//! each third is at least 150 s: memory moves in a two-minute sawtooth as sled's page cache
//! fills and pages out); open files and threads grew by no more than 10 % (plus 16); the server
//! stops cleanly on SIGTERM. The run starts on a session with 20,000 entries of history
//! (`THETA_SOAK_HISTORY`), and the server's caches are small (`THETA_SOAK_CACHE_MIB`, 16, and
//! `THETA_SOAK_BLOCK_CACHE_MIB`, 4) so that they are full within the warm-up.
//!
//! `scripts/soak DURATION` runs it in a release build and writes the samples as CSV; CI runs
//! it for 60 s in the test build. Settings (environment): `THETA_SOAK_SECS` (60),
//! `THETA_SOAK_SAMPLE_SECS` (60 from 10 minutes on, else a twelfth of the run),
//! `THETA_SOAK_WARMUP_SECS` (a third of the run, at most 600), `THETA_SOAK_EDITORS` (10),
//! `THETA_SOAK_QUIC` (100), `THETA_SOAK_WEBRTC` (5), `THETA_SOAK_READERS` (2),
//! `THETA_SOAK_SUBSCRIBERS` (2), `THETA_SOAK_HZ` (10 commands/s per editor),
//! `THETA_SOAK_CUT_SECS` (30: each client is cut once per period), `THETA_SOAK_CSV` (a file for
//! the samples).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering::Relaxed};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use ed25519_dalek::SigningKey;
use theta_client::compress::ZSTD_STREAM;
use theta_client::history::HistoryClient;
use theta_client::quic::{Client, Event, Options, TransportChoice, Trust};
use theta_proto::v1 as pb;
use theta_proto::v1::replay_service_client::ReplayServiceClient;
use theta_schemas::components::{Material, Name, ToolState, Transform};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::signing::author_key;
use theta_schemas::wire::Capabilities;
use theta_schemas::{Command, ComponentId, Role, SessionId, Shape};
use tokio::sync::watch;

use crate::cli::{Kill, serve_with};

/// Entities each editor owns.
const ENTITIES: u64 = 10;
/// The shortest stretch of the loaded run whose resident-memory peak means something: longer
/// than one turn of the sawtooth sled's page cache draws here (about 2 minutes).
const JUDGED_WINDOW_SECS: f64 = 150.0;
/// Commands an editor has in flight at most.
const WINDOW: usize = 64;

fn setting(name: &str, default: u64) -> u64 {
    match std::env::var(name) {
        Ok(v) => v.parse().unwrap_or_else(|_| panic!("{name}={v:?} is not a whole number")),
        Err(_) => default,
    }
}

#[derive(Debug, Clone, Copy)]
struct Plan {
    secs: u64,
    sample_secs: u64,
    warmup_secs: u64,
    editors: u64,
    quic: u64,
    webrtc: u64,
    readers: u64,
    subscribers: u64,
    hz: u64,
    cut_secs: u64,
    cache_mib: u64,
    block_cache_mib: u64,
    history: u64,
}

impl Plan {
    fn from_env() -> Plan {
        let secs = setting("THETA_SOAK_SECS", 60).max(10);
        let sample_secs = setting("THETA_SOAK_SAMPLE_SECS", if secs >= 600 { 60 } else { (secs / 12).max(1) });
        Plan {
            secs,
            sample_secs,
            warmup_secs: setting("THETA_SOAK_WARMUP_SECS", (secs / 3).min(600)),
            editors: setting("THETA_SOAK_EDITORS", 10).max(1),
            quic: setting("THETA_SOAK_QUIC", 100),
            webrtc: setting("THETA_SOAK_WEBRTC", 5),
            readers: setting("THETA_SOAK_READERS", 2),
            subscribers: setting("THETA_SOAK_SUBSCRIBERS", 2),
            hz: setting("THETA_SOAK_HZ", 10).max(1),
            cut_secs: setting("THETA_SOAK_CUT_SECS", 30).max(1),
            cache_mib: setting("THETA_SOAK_CACHE_MIB", 16).max(1),
            block_cache_mib: setting("THETA_SOAK_BLOCK_CACHE_MIB", 4),
            history: setting("THETA_SOAK_HISTORY", 20_000),
        }
    }
}

/// Key `i` of the run (0: the owner).
fn key(i: u64) -> SigningKey {
    let mut b = [0x50u8; 32];
    b[..8].copy_from_slice(&i.to_le_bytes());
    SigningKey::from_bytes(&b)
}

const OWNER: u64 = 0;
fn editor_key(i: u64) -> SigningKey {
    key(1_000 + i)
}
fn viewer_key(i: u64) -> SigningKey {
    key(2_000 + i)
}
fn reader_key(i: u64) -> SigningKey {
    key(3_000 + i)
}

/// One sample of the server process.
#[derive(Debug, Clone, Copy)]
struct Sample {
    at_s: f64,
    rss_kib: u64,
    fds: u64,
    threads: u64,
    acked: u64,
    deltas: u64,
    cuts: u64,
}

impl Sample {
    /// Seconds, resident MiB, open files, threads, acknowledged, deltas applied, cuts: the
    /// columns of the progress lines and of the CSV.
    fn columns(&self) -> [String; 7] {
        let whole = |n: u64| n.to_string();
        [
            format!("{:.0}", self.at_s),
            format!("{:.1}", mib(self.rss_kib)),
            whole(self.fds),
            whole(self.threads),
            whole(self.acked),
            whole(self.deltas),
            whole(self.cuts),
        ]
    }
}

/// Why a client task ended before the load did.
fn why_ended<T>(r: Result<anyhow::Result<T>, tokio::task::JoinError>, who: &str) -> String {
    match r {
        Ok(Ok(_)) => format!("{who} ended early"),
        Ok(Err(e)) => format!("{e:#}"),
        Err(e) => format!("{who}: {e}"),
    }
}

fn sample(pid: u32, at_s: f64, counters: &Counters) -> Sample {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).unwrap_or_default();
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .and_then(|v| v.split_whitespace().next()?.parse().ok())
            .unwrap_or(0)
    };
    Sample {
        at_s,
        rss_kib: field("VmRSS:"),
        fds: std::fs::read_dir(format!("/proc/{pid}/fd")).map_or(0, |d| d.count() as u64),
        threads: field("Threads:"),
        acked: counters.acked.load(Relaxed),
        deltas: counters.deltas.load(Relaxed),
        cuts: counters.cuts.load(Relaxed),
    }
}

/// What every client adds to as it goes (for the samples).
#[derive(Default)]
struct Counters {
    acked: AtomicU64,
    deltas: AtomicU64,
    cuts: AtomicU64,
    reads: AtomicU64,
}

/// The shared switches: `stop` ends the load (editors stop sending, nobody is cut any more);
/// `target` then carries the head every client must reach.
#[derive(Clone)]
struct Switches {
    stop: Arc<AtomicBool>,
    target: watch::Receiver<u64>,
    counters: Arc<Counters>,
}

/// An acknowledged command: the editor's send order, its nonce, seq and entry hash.
#[derive(Debug, Clone, Copy)]
struct Ack {
    sent: u64,
    nonce: u64,
    seq: u64,
    hash: [u8; 32],
}

/// How one live client ended.
#[derive(Debug, Default)]
struct LiveEnd {
    name: String,
    seq: u64,
    state_hash: [u8; 32],
    cuts: u64,
    restarts: u64,
    resyncs: Vec<String>,
    /// Editors only.
    author: Option<[u8; 32]>,
    acks: Vec<Ack>,
    sent: u64,
    rejected: Vec<String>,
}

struct Server {
    quic: std::net::SocketAddr,
    pin: [u8; 32],
    signal: String,
    session: SessionId,
}

impl Server {
    fn options(&self, key: SigningKey, transport: TransportChoice) -> Options {
        Options {
            server: self.quic,
            server_name: "localhost".into(),
            trust: Trust::Fingerprint(self.pin),
            key,
            session: self.session,
            capabilities: Capabilities {
                compression: vec![ZSTD_STREAM.into()],
                interest_management: false,
                max_chunk_bytes: 0,
                datagrams: false,
                compact_deltas: false,
            },
            transport,
            webrtc_signal: Some(self.signal.clone()),
        }
    }
}

/// A timer that fires every `every` from `first`, or never.
async fn tick(timer: &mut Option<tokio::time::Interval>) {
    match timer {
        Some(t) => {
            t.tick().await;
        }
        None => std::future::pending().await,
    }
}

fn cut_timer(plan: &Plan, index: u64, of: u64) -> Option<tokio::time::Interval> {
    let every = Duration::from_secs(plan.cut_secs);
    // Spread evenly over the period, so that cuts never come all at once.
    let first = every.mul_f64((index as f64 + 0.5) / of.max(1) as f64);
    Some(tokio::time::interval_at(tokio::time::Instant::now() + first, every))
}

/// Reconnects after a cut, retrying a refused handshake (the per-address limits) a few times.
async fn resume(client: &mut Client, name: &str) -> anyhow::Result<()> {
    let mut last = None;
    for attempt in 0..8u32 {
        match client.reconnect().await {
            Ok(()) => return Ok(()),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
    }
    Err(last.unwrap()).with_context(|| format!("{name} resumes after a cut"))
}

/// An editor: creates its entities, then edits them at `plan.hz`, recording every receipt.
async fn editor(i: u64, mut client: Client, history: Vec<Ack>, plan: Plan, sw: Switches) -> anyhow::Result<LiveEnd> {
    let name = format!("editor {i}");
    let mut end = LiveEnd { name: name.clone(), author: Some(author_key(&editor_key(i)).0), ..LiveEnd::default() };
    end.sent = history.len() as u64;
    end.acks = history;
    let base = first_entity(i);
    // nonce -> send order, for the commands in flight on the current connection.
    let mut pending: HashMap<u64, u64> = HashMap::new();
    let edit = move |n: u64| -> (u64, ComponentId, Command) {
        let e = base + n % ENTITIES;
        let f = n as f32 * 0.01;
        match n % 50 {
            10 => (e, Name::id(), Command::Rename { name: format!("e{i}.{} #{n}", n % ENTITIES) }),
            20 => (
                e,
                Material::id(),
                Command::SetMaterial(Material { base_color: [f.sin().abs(), 0.5, 0.5, 1.0], ..Material::default() }),
            ),
            30 => {
                (e, ToolState::id(), Command::ChangeTool { tool: ["move", "rotate", "scale"][(n % 3) as usize].into() })
            }
            _ => (
                e,
                Transform::id(),
                Command::SetTransform(Transform {
                    translation: [i as f32 + f.sin(), f.cos(), (n % ENTITIES) as f32],
                    ..Transform::default()
                }),
            ),
        }
    };
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / plan.hz as f64));
    pace.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut cuts = cut_timer(&plan, i, plan.editors);
    let mut target = sw.target.clone();
    loop {
        let stopped = sw.stop.load(Relaxed);
        if stopped && pending.is_empty() {
            let t = *target.borrow();
            if client.mirror().is_some_and(|m| m.seq() >= t) {
                break;
            }
        }
        tokio::select! {
            event = client.next_event() => match event.with_context(|| format!("{name}'s connection"))? {
                Event::Receipt(r) => {
                    let sent = pending.remove(&r.nonce).with_context(|| format!("{name}: a receipt for nonce {} it did not send", r.nonce))?;
                    end.acks.push(Ack { sent, nonce: r.nonce, seq: r.seq, hash: r.entry_hash });
                    sw.counters.acked.fetch_add(1, Relaxed);
                }
                Event::Rejected(e) => {
                    pending.remove(&e.nonce);
                    end.rejected.push(format!("code {}: {}", e.code, e.reason));
                }
                other => { note(&other, &mut end, &sw); }
            },
            _ = pace.tick(), if !stopped && pending.len() < WINDOW => {
                let (entity, component, command) = edit(end.sent);
                let nonce = client.submit(entity, component, 0, command).await.with_context(|| format!("{name} sends"))?;
                pending.insert(nonce, end.sent);
                end.sent += 1;
            }
            _ = tick(&mut cuts), if !stopped => {
                // Whatever was in flight may or may not be in the log; its receipt is lost.
                pending.clear();
                cut(&mut client, &mut end, &sw).await?;
            }
            _ = target.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)), if stopped => {}
        }
    }
    ended(&client, end)
}

/// Counts what a live client sees besides receipts and rejections.
fn note(event: &Event, end: &mut LiveEnd, sw: &Switches) {
    match event {
        Event::Restarted { .. } => end.restarts += 1,
        Event::Resynced { reason } => end.resyncs.push(reason.clone()),
        Event::Synced { snapshot: false, .. } => {
            sw.counters.deltas.fetch_add(1, Relaxed);
        }
        _ => {}
    }
}

/// Cuts a live client's connection wherever its streams are, and resumes it.
async fn cut(client: &mut Client, end: &mut LiveEnd, sw: &Switches) -> anyhow::Result<()> {
    resume(client, &end.name).await?;
    end.cuts += 1;
    sw.counters.cuts.fetch_add(1, Relaxed);
    Ok(())
}

/// Where a live client's mirror ended.
fn ended(client: &Client, mut end: LiveEnd) -> anyhow::Result<LiveEnd> {
    let m = client.mirror().context("a mirror")?;
    (end.seq, end.state_hash) = (m.seq(), m.state_hash());
    Ok(end)
}

/// A viewer (QUIC or WebRTC): mirrors the session until the end, cut once per period.
async fn viewer(
    name: String,
    mut client: Client,
    mut cuts: Option<tokio::time::Interval>,
    sw: Switches,
) -> anyhow::Result<LiveEnd> {
    let mut end = LiveEnd { name: name.clone(), ..LiveEnd::default() };
    let mut target = sw.target.clone();
    loop {
        let stopped = sw.stop.load(Relaxed);
        let t = *target.borrow();
        if stopped && client.mirror().is_some_and(|m| m.seq() >= t) {
            break;
        }
        tokio::select! {
            event = client.next_event() => {
                note(&event.with_context(|| format!("{name}'s connection"))?, &mut end, &sw);
            }
            _ = tick(&mut cuts), if !stopped => cut(&mut client, &mut end, &sw).await?,
            _ = target.changed() => {}
            _ = tokio::time::sleep(Duration::from_millis(100)), if stopped => {}
        }
    }
    ended(&client, end)
}

/// A subscriber: follows the log from seq 1, checking every link of the chain; drops its
/// stream once per period and subscribes again after the last entry it holds.
async fn subscriber(
    name: String,
    hc: HistoryClient,
    session: SessionId,
    plan: Plan,
    index: u64,
    sw: Switches,
) -> anyhow::Result<(u64, Vec<u8>, u64)> {
    let (mut last_seq, mut last_hash) = (0u64, vec![0u8; 32]);
    let mut cuts = cut_timer(&plan, index, plan.subscribers.max(1));
    let mut resubscribed = 0;
    let mut target = sw.target.clone();
    'outer: loop {
        let req = hc.request(
            "/theta.v1.ReplayService/Subscribe",
            Some(&session),
            pb::SubscribeRequest { session: session.0.to_vec(), from_seq: last_seq + 1, batch_size: 0 },
        );
        let mut stream = ReplayServiceClient::new(hc.channel())
            .max_decoding_message_size(64 << 20)
            .subscribe(req)
            .await
            .with_context(|| format!("{name} subscribes from {}", last_seq + 1))?
            .into_inner();
        loop {
            if sw.stop.load(Relaxed) && last_seq >= *target.borrow() {
                break 'outer;
            }
            tokio::select! {
                batch = stream.message() => {
                    let batch = batch.with_context(|| format!("{name}'s stream"))?.with_context(|| format!("{name}: the stream ended"))?;
                    for e in batch.entries {
                        ensure!(e.seq == last_seq + 1, "{name}: entry {} after {last_seq}", e.seq);
                        ensure!(e.prev_hash == last_hash, "{name}: entry {} does not link to {last_seq}", e.seq);
                        (last_seq, last_hash) = (e.seq, e.entry_hash.to_vec());
                    }
                }
                _ = tick(&mut cuts), if !sw.stop.load(Relaxed) => {
                    resubscribed += 1;
                    sw.counters.cuts.fetch_add(1, Relaxed);
                    continue 'outer;
                }
                _ = target.changed() => {}
            }
        }
    }
    Ok((last_seq, last_hash, resubscribed))
}

/// A reader: a random read every 250 ms: the state at a seq (checked against the state hash the
/// server sends), an entry with its inclusion proof (checked here), or a window of the log.
async fn reader(name: String, hc: HistoryClient, session: SessionId, seed: u64, sw: Switches) -> anyhow::Result<u64> {
    use rand::{Rng as _, SeedableRng as _};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut reads = 0;
    while !sw.stop.load(Relaxed) {
        tokio::time::sleep(Duration::from_millis(250)).await;
        let head = hc.head(&session).await.with_context(|| format!("{name}: Head"))?.seq;
        let at = rng.gen_range(1..=head.max(1));
        match rng.gen_range(0..3) {
            0 => {
                let p = hc.read_state(&session, at).await.with_context(|| format!("{name}: ReadState at {at}"))?;
                ensure!(p.seq() == at, "{name}: ReadState at {at} gave the state at {}", p.seq());
            }
            1 => {
                let proven =
                    hc.prove(&session, at).await.with_context(|| format!("{name}: entry {at} and its proof"))?;
                ensure!(proven.verified(), "{name}: entry {at}'s hash or inclusion proof does not check");
            }
            _ => {
                let to = (at + 199).min(head);
                let req = pb::ReadLogRequest { from_seq: at, to_seq: to, ..Default::default() };
                let mut log =
                    hc.read_log(&session, req).await.with_context(|| format!("{name}: ReadLog {at}..={to}"))?;
                let mut next = at;
                while let Some(batch) = log.message().await? {
                    for e in batch.entries {
                        ensure!(e.seq == next, "{name}: ReadLog {at}..={to} gave {} where {next} was due", e.seq);
                        next += 1;
                    }
                }
                ensure!(next == to + 1, "{name}: ReadLog {at}..={to} ended at {}", next - 1);
            }
        }
        reads += 1;
        sw.counters.reads.fetch_add(1, Relaxed);
    }
    Ok(reads)
}

/// Editor `i`'s first entity (it owns `ENTITIES` from there).
fn first_entity(i: u64) -> u64 {
    1 + i * 100
}

/// Editor `i`'s share of the history the run starts on, appended over `AppendStream` (as an
/// import tool would): its entities, then transforms of them. Returns the receipts.
async fn prefill(i: u64, grpc: String, session: SessionId, entries: u64) -> anyhow::Result<Vec<Ack>> {
    use theta_proto::v1::log_service_client::LogServiceClient;
    use theta_schemas::{CommandBody, Envelope};
    let key = editor_key(i);
    let base = first_entity(i);
    let bodies: Vec<CommandBody> = (0..entries.max(ENTITIES))
        .map(|n| {
            let (entity, component, command) = if n < ENTITIES {
                let shape = Shape::Cube;
                (base + n, ComponentId::NONE, Command::CreateEntity { shape, name: format!("e{i}.{n}"), parent: 0 })
            } else {
                let t = Transform {
                    translation: [i as f32, n as f32 * 1e-3, (n % ENTITIES) as f32],
                    ..Transform::default()
                };
                (base + n % ENTITIES, Transform::id(), Command::SetTransform(t))
            };
            CommandBody {
                session,
                author: author_key(&key),
                lamport: n + 1,
                nonce: rand::random(),
                wall_clock_ms: 0,
                entity,
                component,
                base_version: 0,
                command,
            }
        })
        .collect();
    let requests: Vec<pb::AppendRequest> =
        bodies.iter().map(|b| pb::AppendRequest { envelope: Envelope::sign(b, &key).encode() }).collect();
    let channel = tonic::transport::Channel::from_shared(grpc)?.connect().await?;
    let mut answers = LogServiceClient::new(channel)
        .append_stream(tokio_stream::iter(requests))
        .await
        .with_context(|| format!("editor {i}: AppendStream"))?
        .into_inner();
    let mut acks = Vec::new();
    while let Some(a) = answers.message().await? {
        match a.result {
            Some(pb::append_stream_response::Result::Receipt(r)) => {
                let body = &bodies[a.index as usize];
                ensure!(r.nonce == body.nonce, "editor {i}: the receipt of #{} names another nonce", a.index);
                let hash = r.entry_hash[..].try_into().context("a 32-byte entry hash")?;
                acks.push(Ack { sent: a.index, nonce: r.nonce, seq: r.seq, hash });
            }
            other => bail!("editor {i}: history entry #{} refused: {other:?}", a.index),
        }
    }
    ensure!(acks.len() == bodies.len(), "editor {i}: {} receipts for {} entries", acks.len(), bodies.len());
    Ok(acks)
}

async fn connect(server: &Server, key: SigningKey, transport: TransportChoice, name: &str) -> anyhow::Result<Client> {
    let mut last = None;
    for attempt in 0..8u32 {
        match Client::connect(server.options(key.clone(), transport)).await {
            Ok(c) => return Ok(c),
            Err(e) => last = Some(e),
        }
        tokio::time::sleep(Duration::from_millis(50 << attempt.min(5))).await;
    }
    Err(last.unwrap()).with_context(|| format!("{name} connects"))
}

fn mib(kib: u64) -> f64 {
    kib as f64 / 1024.0
}

#[test]
#[ignore = "minutes long: scripts/soak DURATION runs it (scripts/test: 60 s)"]
fn soak_under_mixed_load_keeps_every_acknowledged_entry_and_bounded_resources() {
    let plan = Plan::from_env();
    println!("soak: {plan:?}");
    let dir = tempfile::tempdir().unwrap();
    let owner_hex = hex::encode(author_key(&key(OWNER)).0);
    let (child, grpc, quic, fp, signal) = serve_with(
        &dir.path().join("data"),
        &owner_hex,
        &[
            "--checkpoint-every",
            "500",
            "--cache-mib",
            &plan.cache_mib.to_string(),
            "--block-cache-mib",
            &plan.block_cache_mib.to_string(),
        ],
    );
    let pid = child.id();
    let mut server_process = Kill(child);
    let rt = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let report = rt.block_on(run(plan, pid, format!("http://{grpc}"), quic, fp, signal));
    // The server stops cleanly on SIGTERM, whatever the run found.
    let stopped = std::process::Command::new("kill").args(["-TERM", &pid.to_string()]).status().unwrap();
    assert!(stopped.success());
    let deadline = Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(s) = server_process.0.try_wait().unwrap() {
            break Some(s);
        }
        if Instant::now() > deadline {
            break None;
        }
        std::thread::sleep(Duration::from_millis(50));
    };
    let report = report.unwrap_or_else(|e| panic!("soak failed: {e:#}"));
    assert!(status.is_some_and(|s| s.success()), "theta serve did not stop cleanly on SIGTERM within 60 s: {status:?}");
    if !report.is_empty() {
        panic!("soak found:\n  {}", report.join("\n  "));
    }
}

/// Runs the load and the checks; returns what failed.
async fn run(
    plan: Plan,
    pid: u32,
    grpc: String,
    quic: String,
    fp: String,
    signal: String,
) -> anyhow::Result<Vec<String>> {
    let owner = HistoryClient::connect(&grpc, None, Some(key(OWNER))).await?;
    let (session, _) = owner.create_session("soak".into()).await?;
    let grants = (0..plan.editors)
        .map(|i| (editor_key(i), Role::Editor))
        .chain((0..plan.quic + plan.webrtc).map(|i| (viewer_key(i), Role::Viewer)))
        .chain((0..plan.subscribers).map(|i| (reader_key(i), Role::Viewer)))
        // Readers fetch inclusion proofs too.
        .chain((0..plan.readers).map(|i| (reader_key(plan.subscribers + i), Role::Auditor)));
    for (k, role) in grants {
        owner.append(session, 0, ComponentId::NONE, 0, Command::GrantRole { key: author_key(&k), role }).await?;
    }
    let filled = Instant::now();
    let mut fills = tokio::task::JoinSet::new();
    for i in 0..plan.editors {
        let grpc = grpc.clone();
        fills.spawn(async move { (i, prefill(i, grpc, session, plan.history / plan.editors).await) });
    }
    let mut history = BTreeMap::new();
    while let Some(r) = fills.join_next().await {
        let (i, acks) = r?;
        history.insert(i, acks?);
    }
    let history_entries: usize = history.values().map(Vec::len).sum();
    println!("soak: history of {history_entries} entries appended in {:.1} s", filled.elapsed().as_secs_f64());
    let mut pin = [0u8; 32];
    let fp: String = fp.chars().filter(|c| c.is_ascii_hexdigit()).collect();
    hex::decode_to_slice(&fp, &mut pin).context("the certificate fingerprint")?;
    let server = Server { quic: quic.parse()?, pin, signal, session };

    let stop = Arc::new(AtomicBool::new(false));
    let (set_target, target) = watch::channel(u64::MAX);
    let counters = Arc::new(Counters::default());
    let sw = Switches { stop: stop.clone(), target, counters: counters.clone() };

    // Clients connect a few at a time (the server allows 32 half-open handshakes per address).
    let mut live = tokio::task::JoinSet::new();
    let started = Instant::now();
    for i in 0..plan.editors {
        let c = connect(&server, editor_key(i), TransportChoice::Quic, &format!("editor {i}")).await?;
        live.spawn(editor(i, c, history.remove(&i).unwrap_or_default(), plan, sw.clone()));
    }
    let viewers = plan.quic + plan.webrtc;
    for i in 0..viewers {
        let (transport, name) = if i < plan.quic {
            (TransportChoice::Quic, format!("quic viewer {i}"))
        } else {
            (TransportChoice::WebRtc, format!("webrtc viewer {}", i - plan.quic))
        };
        let c = connect(&server, viewer_key(i), transport, &name).await?;
        live.spawn(viewer(name, c, cut_timer(&plan, i, viewers), sw.clone()));
    }
    let mut grpc_tasks = tokio::task::JoinSet::new();
    for i in 0..plan.subscribers {
        let hc = HistoryClient::connect(&grpc, None, Some(reader_key(i))).await?;
        grpc_tasks.spawn(subscriber(format!("subscriber {i}"), hc, session, plan, i, sw.clone()));
    }
    let mut readers = tokio::task::JoinSet::new();
    for i in 0..plan.readers {
        let hc = HistoryClient::connect(&grpc, None, Some(reader_key(plan.subscribers + i))).await?;
        readers.spawn(reader(format!("reader {i}"), hc, session, i, sw.clone()));
    }
    println!(
        "soak: {} live clients and {} gRPC clients connected in {:.1} s",
        plan.editors + viewers,
        plan.readers + plan.subscribers,
        started.elapsed().as_secs_f64()
    );

    // The load runs; the server is sampled.
    let t0 = Instant::now();
    let mut samples = vec![sample(pid, 0.0, &counters)];
    println!("soak:   time   rss MiB  open files  threads  acked  deltas applied  cuts");
    let show = |s: &Sample| {
        let [at, rss, fds, threads, acked, deltas, cuts] = s.columns();
        println!("soak: {at:>5} s  {rss:>8}  {fds:>10}  {threads:>7}  {acked:>5}  {deltas:>14}  {cuts:>4}")
    };
    show(&samples[0]);
    let mut failed_early = None;
    while t0.elapsed() < Duration::from_secs(plan.secs) {
        let next = Duration::from_secs(plan.sample_secs * samples.len() as u64).min(Duration::from_secs(plan.secs));
        tokio::select! {
            _ = tokio::time::sleep(next.saturating_sub(t0.elapsed())) => {}
            Some(r) = live.join_next() => { failed_early = Some(why_ended(r, "a live client")); break; }
            Some(r) = grpc_tasks.join_next() => { failed_early = Some(why_ended(r, "a subscriber")); break; }
            Some(r) = readers.join_next() => { failed_early = Some(why_ended(r, "a reader")); break; }
        }
        if t0.elapsed() >= Duration::from_secs(plan.sample_secs * samples.len() as u64)
            || t0.elapsed() >= Duration::from_secs(plan.secs)
        {
            samples.push(sample(pid, t0.elapsed().as_secs_f64(), &counters));
            show(samples.last().unwrap());
        }
    }
    if let Some(e) = failed_early {
        bail!("{e}");
    }
    if let Ok(path) = std::env::var("THETA_SOAK_CSV") {
        let mut csv = String::from("seconds,rss_mib,open_files,threads,acked,deltas_applied,cuts\n");
        for s in &samples {
            csv += &s.columns().join(",");
            csv.push('\n');
        }
        std::fs::write(&path, csv).with_context(|| format!("write {path}"))?;
    }

    // Stop: editors stop sending and collect their last receipts; then everyone must reach the
    // head the server has once they have.
    stop.store(true, Relaxed);
    let reads: u64 = {
        let mut n = 0;
        while let Some(r) = readers.join_next().await {
            n += r??;
        }
        n
    };
    let settle = Instant::now();
    let head = loop {
        // Editors hold nothing in flight once the acknowledged count stops moving and the
        // session's head is stable for a second.
        let a = owner.head(&session).await?.seq;
        tokio::time::sleep(Duration::from_secs(1)).await;
        let b = owner.head(&session).await?.seq;
        if a == b {
            break b;
        }
        ensure!(settle.elapsed() < Duration::from_secs(60), "the head still moves 60 s after the editors stopped");
    };
    set_target.send(head)?;
    let converge = async {
        let mut ends = Vec::new();
        while let Some(r) = live.join_next().await {
            ends.push(r??);
        }
        let mut subs = Vec::new();
        while let Some(r) = grpc_tasks.join_next().await {
            subs.push(r??);
        }
        anyhow::Ok((ends, subs))
    };
    let (ends, subs) = tokio::time::timeout(Duration::from_secs(120), converge)
        .await
        .context("the clients did not all reach the head within 120 s")??;
    let state = owner.read_state(&session, head).await?;
    let server_hash = state.state_hash();

    // The checks.
    let mut problems = Vec::new();
    let verify = owner.verify_log(&session, 0, 0).await?;
    if !(verify.signatures_ok && verify.chain_ok && verify.tree_ok && verify.entries_checked == head) {
        problems.push(format!("VerifyLog: {verify:?}"));
    }
    let mut log = BTreeMap::new();
    let mut entries = owner.read_log(&session, pb::ReadLogRequest::default()).await?;
    while let Some(batch) = entries.message().await? {
        for e in batch.entries {
            log.insert(e.seq, e);
        }
    }
    if log.len() as u64 != head || log.keys().next_back() != Some(&head) {
        problems.push(format!(
            "the log holds {} entries up to {:?}, the head is {head}",
            log.len(),
            log.keys().next_back()
        ));
    }
    let mut seen = HashSet::new();
    for e in log.values() {
        if !seen.insert((e.author.clone(), e.nonce)) {
            problems.push(format!("(author, nonce) of entry {} appears twice", e.seq));
        }
    }
    let (mut acked, mut sent, mut cuts, mut restarts) = (0, 0, 0, 0);
    for end in &ends {
        cuts += end.cuts;
        restarts += end.restarts;
        if end.seq != head || end.state_hash != server_hash {
            problems.push(format!(
                "{}: mirror at seq {} hash {}, server at {head} hash {}",
                end.name,
                end.seq,
                hex::encode(end.state_hash),
                hex::encode(server_hash)
            ));
        }
        if !end.resyncs.is_empty() {
            problems.push(format!("{}: diverged and resynced: {:?}", end.name, end.resyncs));
        }
        let Some(author) = end.author else { continue };
        sent += end.sent;
        acked += end.acks.len();
        if !end.rejected.is_empty() {
            problems.push(format!("{}: {} rejected, first: {}", end.name, end.rejected.len(), end.rejected[0]));
        }
        let mut acks = end.acks.clone();
        acks.sort_by_key(|a| a.sent);
        for w in acks.windows(2) {
            if w[1].seq <= w[0].seq {
                problems.push(format!(
                    "{}: sent #{} got seq {} after #{} got seq {}",
                    end.name, w[1].sent, w[1].seq, w[0].sent, w[0].seq
                ));
            }
        }
        for a in &acks {
            match log.get(&a.seq) {
                Some(e) if e.entry_hash[..] == a.hash[..] && e.nonce == a.nonce && e.author[..] == author[..] => {}
                Some(_) => problems.push(format!("{}: acknowledged seq {} holds another entry", end.name, a.seq)),
                None => problems.push(format!("{}: acknowledged seq {} is missing", end.name, a.seq)),
            }
        }
    }
    let last_hash = log.get(&head).map(|e| e.entry_hash.to_vec()).unwrap_or_default();
    for (i, (seq, hash, _)) in subs.iter().enumerate() {
        if *seq != head || *hash != last_hash {
            problems.push(format!("subscriber {i} ended at seq {seq}, the head is {head}"));
        }
    }

    // Resources after the warm-up. Resident memory moves in a sawtooth (sled's page cache
    // grows, then pages out, about every two minutes here), so memory is judged by the peaks of
    // the first and the last third of the loaded run, each at least `JUDGED_WINDOW_SECS` long;
    // a shorter run prints its figures and says that it cannot judge. Open files and threads
    // do not move in steps: the last sample is held against the first.
    let warm = plan.warmup_secs as f64;
    let loaded: Vec<&Sample> = samples.iter().filter(|s| s.at_s >= warm).collect();
    let third = (plan.secs as f64 - warm) / 3.0;
    let peak_within =
        |from: f64, to: f64| loaded.iter().filter(|s| s.at_s >= from && s.at_s <= to).map(|s| s.rss_kib).max();
    let (early, late) = (peak_within(warm, warm + third), peak_within(plan.secs as f64 - third, plan.secs as f64));
    match (early, late) {
        (Some(early), Some(late)) if third >= JUDGED_WINDOW_SECS => {
            let growth = late as f64 / early.max(1) as f64 - 1.0;
            println!(
                "soak: resident memory after the warm-up ({} s): peak {:.1} MiB in the first third, {:.1} MiB in the last ({:+.1} %)",
                plan.warmup_secs,
                mib(early),
                mib(late),
                growth * 100.0
            );
            if growth >= 0.10 {
                problems.push(format!("resident memory grew {:.1} % after the warm-up", growth * 100.0));
            }
        }
        _ => println!(
            "soak: resident memory not judged: the thirds of the loaded run are {third:.0} s, and a judgement needs {JUDGED_WINDOW_SECS:.0} s each (THETA_SOAK_SECS >= {:.0} with this warm-up)",
            warm + 3.0 * JUDGED_WINDOW_SECS
        ),
    }
    if let (Some(first), Some(last)) = (loaded.first(), loaded.last()) {
        println!(
            "soak: after the warm-up: open files {} -> {}, threads {} -> {}",
            first.fds, last.fds, first.threads, last.threads
        );
        let bound = |n: u64| n + n / 10 + 16;
        if last.fds > bound(first.fds) {
            problems.push(format!("open files grew from {} to {} after the warm-up", first.fds, last.fds));
        }
        if last.threads > bound(first.threads) {
            problems.push(format!("threads grew from {} to {} after the warm-up", first.threads, last.threads));
        }
    } else {
        problems.push("no sample after the warm-up".into());
    }
    let peak = samples.iter().map(|s| s.rss_kib).max().unwrap_or(0);
    println!(
        "soak: {head} entries ({acked} acknowledged of {sent} sent by {} editors, {history_entries} of them history, live {:.0}/s), {} mirrors at the head with the server's state hash {}, {} subscribers, {reads} reads, {} deltas applied, {cuts} live cuts + {} resubscriptions, {restarts} live restarts, peak resident memory {:.1} MiB; {} problems",
        plan.editors,
        (acked - history_entries) as f64 / plan.secs as f64,
        ends.len(),
        &hex::encode(server_hash)[..16],
        subs.len(),
        counters.deltas.load(Relaxed),
        subs.iter().map(|s| s.2).sum::<u64>(),
        mib(peak),
        problems.len()
    );
    Ok(problems)
}
