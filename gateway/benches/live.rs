//! Live streaming on loopback: editors sending transform updates at 90 Hz, viewers mirroring
//! the session, over QUIC or WebRTC. Measures editor submit → viewer applied latency (p50,
//! p99) under each live visibility (confirmed, ordered), the editors' own submit → receipt
//! latency and the store's acknowledgement histogram beside it, entries appended per second,
//! and bytes per viewer per second for each encoding, with compact deltas and with interest
//! management. The server runs on its own runtime (half the CPUs), the clients on the other.
//! Latencies count commands submitted in the steady state (from 0.5 s after the editors start
//! to 0.25 s before they stop).
//!
//! `cargo bench -p theta-gateway --bench live` runs the visibility and bytes table (16 and 100
//! viewers). `THETA_BENCH_SECS` (default 5 per run); `THETA_BENCH_SET=full` adds the other
//! encodings, interest management, WebRTC and a viewer sweep until p99 crosses one VR frame
//! (11.1 ms); `THETA_BENCH_ONLY=quic|webrtc`; `THETA_BENCH_EDITORS` / `THETA_BENCH_VIEWERS`
//! change the counts.

use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use ed25519_dalek::SigningKey;
use theta_client::compress::{ZSTD, ZSTD_DICT, ZSTD_STREAM};
use theta_client::quic::{Client, Event, Options, TransportChoice, Trust};
use theta_schemas::components::Transform;
use theta_schemas::ids::ComponentMeta;
use theta_schemas::signing::author_key;
use theta_schemas::wire::Capabilities;
use theta_schemas::{Command, ComponentId, Role, SessionId, Shape};
use theta_store::{Store, StoreConfig};
use theta_testkit::cubes;

const S: SessionId = SessionId([0x4c; 16]);
const EDITORS: usize = cubes::EDITORS as usize;
const ENTITIES_PER_EDITOR: u64 = cubes::PER_EDITOR;
const HZ: f64 = 90.0;

fn key(i: u32) -> SigningKey {
    let mut b = [0u8; 32];
    b[..4].copy_from_slice(&i.to_le_bytes());
    b[31] = 0x5a;
    SigningKey::from_bytes(&b)
}

/// A store with the session, the editors' and the viewer's roles, and every entity placed.
fn make_store(dir: &std::path::Path) -> Arc<Store> {
    let config = StoreConfig { rate_per_sec: 1e7, rate_burst: 1e7, ..StoreConfig::default() };
    let store = Arc::new(Store::open(dir.join("data"), config).unwrap());
    let owner = key(0);
    let mut lamport = 0;
    let mut sign = |entity: u64, component: ComponentId, command: Command| {
        lamport += 1;
        theta_testkit::envelope(&owner, S, lamport, lamport, entity, component, command)
    };
    let mut batch = vec![sign(0, ComponentId::NONE, Command::CreateSession { name: "live bench".into() })];
    for i in 1..=EDITORS as u32 {
        batch.push(sign(0, ComponentId::NONE, Command::GrantRole { key: author_key(&key(i)), role: Role::Editor }));
    }
    batch.push(sign(0, ComponentId::NONE, Command::GrantRole { key: author_key(&key(1_000)), role: Role::Viewer }));
    for e in 1..=EDITORS as u64 * ENTITIES_PER_EDITOR {
        batch.push(sign(
            e,
            ComponentId::NONE,
            Command::CreateEntity { shape: Shape::Cube, name: format!("cube {e}"), parent: 0 },
        ));
        let t = Transform { translation: cubes::home(e), ..Transform::default() };
        batch.push(sign(e, Transform::id(), Command::SetTransform(t)));
    }
    for envelope in batch {
        store.append(&envelope).unwrap();
    }
    store
}

struct Run {
    /// Viewers that ran (`THETA_BENCH_VIEWERS` may override the setup's count).
    viewers: usize,
    /// Entries the store appended during the run.
    appended: u64,
    p50_ms: f64,
    p99_ms: f64,
    samples: usize,
    commands: u64,
    bytes_per_viewer_s: f64,
    raw_per_viewer_s: f64,
    resyncs: u64,
    /// Where the samples over 5 ms fall (diagnostics).
    tail: String,
    /// Deltas (frames that advanced the mirror) each viewer applied per second.
    deltas_per_viewer_s: f64,
    ack_p50_ms: f64,
    ack_p99_ms: f64,
    /// The editors' submit → receipt latency.
    receipt_p50_ms: f64,
    receipt_p99_ms: f64,
    /// Submit → the store's commit thread sequenced the entry, p99.
    sequenced_p99_ms: f64,
    /// Sequenced → a viewer applied it, p50 and p99 (the live path alone).
    delivery_p50_ms: f64,
    delivery_p99_ms: f64,
}

/// A quantile of the store's append acknowledgement histogram (bucket upper bounds), ms.
fn ack_quantile(h: &theta_store::metrics::HistogramSnapshot, q: f64) -> f64 {
    let want = (h.count as f64 * q).ceil() as u64;
    let mut seen = 0;
    for (i, bound) in theta_store::metrics::LATENCY_BUCKETS_US.iter().enumerate() {
        seen += h.buckets[i];
        if seen >= want {
            return *bound as f64 / 1e3;
        }
    }
    f64::INFINITY
}

#[derive(Clone, Copy)]
struct Setup {
    /// The viewers' transport.
    transport: TransportChoice,
    /// The editors' transport.
    editors: TransportChoice,
    viewers: usize,
    compression: &'static [&'static str],
    interest: bool,
    compact: bool,
    visibility: theta_gateway::live::Visibility,
}

async fn run(
    server_rt: tokio::runtime::Handle,
    store: Arc<Store>,
    dir: &std::path::Path,
    setup: Setup,
    secs: f64,
) -> Run {
    let config = theta_gateway::ServeConfig {
        live_visibility: setup.visibility,
        // THETA_BENCH_PACING_US: the least time between two deltas (the server's default if unset).
        live_pacing: std::env::var("THETA_BENCH_PACING_US")
            .ok()
            .and_then(|v| v.parse().ok())
            .map_or(theta_gateway::live::DEFAULT_PACING, Duration::from_micros),
        ..theta_gateway::ServeConfig::loopback(dir)
    };
    // The server runs on its own runtime (its own worker threads), as it would in its own
    // process: the clients' work cannot delay its tasks, nor its work theirs.
    let server = {
        let store = store.clone();
        server_rt.spawn(async move { theta_gateway::start_with_store(store, &config).await.unwrap() }).await.unwrap()
    };
    let mut pin = [0u8; 32];
    hex::decode_to_slice(server.quic_fingerprint.as_ref().unwrap(), &mut pin).unwrap();
    let signal = server.webrtc_signal.clone();
    let options =
        |k: SigningKey, compression: &[&str], interest: bool, compact: bool, transport: TransportChoice| Options {
            server: server.quic_addr.unwrap(),
            server_name: "localhost".into(),
            trust: Trust::Fingerprint(pin),
            key: k,
            session: S,
            capabilities: Capabilities {
                compression: compression.iter().map(|s| s.to_string()).collect(),
                interest_management: interest,
                max_chunk_bytes: 0,
                datagrams: false,
                compact_deltas: compact,
            },
            transport,
            webrtc_signal: signal.clone(),
        };
    let stop = Arc::new(AtomicBool::new(false));
    // Viewers: connect, take the snapshot, then record when each seq is applied.
    let mut viewers = Vec::new();
    let viewers_n = std::env::var("THETA_BENCH_VIEWERS").ok().and_then(|v| v.parse().ok()).unwrap_or(setup.viewers);
    for _ in 0..viewers_n {
        let mut c =
            Client::connect(options(key(1_000), setup.compression, setup.interest, setup.compact, setup.transport))
                .await
                .unwrap();
        if setup.interest {
            c.set_interest([0.0, 0.0, 0.0], 40.0).await.unwrap();
        }
        let stop = stop.clone();
        viewers.push(tokio::spawn(async move {
            while c.mirror().is_none() {
                c.next_event().await.unwrap();
            }
            let mut applied: Vec<(u64, u64, Instant)> = Vec::new();
            let mut prev = c.mirror().unwrap().seq();
            let start = c.telemetry();
            while !stop.load(SeqCst) {
                match tokio::time::timeout(Duration::from_millis(100), c.next_event()).await {
                    Ok(Ok(Event::Synced { seq, snapshot })) => {
                        if !snapshot {
                            applied.push((prev, seq, Instant::now()));
                        }
                        prev = seq;
                    }
                    Ok(Err(e)) => panic!("viewer: {e}"),
                    _ => {}
                }
            }
            let end = c.telemetry();
            let raw = (end.compressed_bytes.1 - start.compressed_bytes.1)
                + ((end.bytes_in - start.bytes_in) - (end.compressed_bytes.0 - start.compressed_bytes.0));
            (applied, end.bytes_in - start.bytes_in, raw, end.resyncs + end.snapshots - 1)
        }));
    }
    // Let the viewers take their snapshots.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let submitted: Arc<Mutex<HashMap<u64, Instant>>> = Default::default();
    // (submitted at, submit → receipt ms).
    let receipts: Arc<Mutex<Vec<(Instant, f64)>>> = Default::default();
    // When the store's commit thread sequenced each seq (this listener runs beside the hub's).
    let sequenced: Arc<Mutex<HashMap<u64, Instant>>> = Default::default();
    {
        let sequenced = sequenced.clone();
        store.add_sequenced_listener(move |commits| {
            let now = Instant::now();
            let mut s = sequenced.lock().unwrap();
            for c in commits {
                for (seq, _) in c.commands.iter() {
                    s.insert(*seq, now);
                }
            }
        });
    }
    let mut editors = Vec::new();
    // Every editor connects first; the paced run starts for all of them at once.
    let (start_tx, start_rx) = tokio::sync::watch::channel(false);
    // THETA_BENCH_EDITORS: fewer editors (diagnostics).
    let editors_n: u32 =
        std::env::var("THETA_BENCH_EDITORS").ok().and_then(|v| v.parse().ok()).unwrap_or(EDITORS as u32);
    for i in 1..=editors_n.min(EDITORS as u32) {
        let mut c = Client::connect(options(key(i), &[], false, false, setup.editors)).await.unwrap();
        let submitted = submitted.clone();
        let receipts = receipts.clone();
        let stop = stop.clone();
        let mut start = start_rx.clone();
        editors.push(tokio::spawn(async move {
            let _ = start.wait_for(|s| *s).await;
            let period = Duration::from_secs_f64(1.0 / HZ);
            // Spread the editors' phases over one period.
            let mut next = tokio::time::Instant::now() + period.mul_f64(i as f64 / EDITORS as f64);
            let mut pending: HashMap<u64, Instant> = HashMap::new();
            let mut n = 0u64;
            while !stop.load(SeqCst) {
                match tokio::time::timeout_at(next, c.next_event()).await {
                    Err(_) => {
                        next += period;
                        n += 1;
                        let (e, t) = cubes::update(u64::from(i) - 1, n);
                        let at = Instant::now();
                        let nonce = c.submit(e, Transform::id(), 0, Command::SetTransform(t)).await.unwrap();
                        pending.insert(nonce, at);
                    }
                    Ok(Ok(Event::Receipt(r))) => {
                        if let Some(at) = pending.remove(&r.nonce) {
                            receipts.lock().unwrap().push((at, at.elapsed().as_secs_f64() * 1e3));
                            submitted.lock().unwrap().insert(r.seq, at);
                        }
                    }
                    Ok(Ok(Event::Rejected(e))) => panic!("rejected: {e:?}"),
                    Ok(Ok(_)) => {}
                    Ok(Err(e)) => panic!("editor: {e}"),
                }
            }
            // Collect the last receipts.
            let end = tokio::time::Instant::now() + Duration::from_millis(500);
            while let Ok(Ok(ev)) = tokio::time::timeout_at(end, c.next_event()).await {
                if let Event::Receipt(r) = ev
                    && let Some(at) = pending.remove(&r.nonce)
                {
                    submitted.lock().unwrap().insert(r.seq, at);
                }
            }
            n
        }));
    }
    let head0 = store.head(&S).unwrap().seq;
    let started = Instant::now();
    let _ = start_tx.send(true);
    // Latencies count for commands submitted in the steady state: after the first 0.5 s (the
    // editors' first commands, every connection's first deltas) and before the last 0.25 s
    // (the stop).
    let steady = (started + Duration::from_millis(500), started + Duration::from_secs_f64(secs - 0.25));
    let in_steady = |t: &Instant| *t >= steady.0 && *t < steady.1;
    tokio::time::sleep(Duration::from_secs_f64(secs)).await;
    let appended = store.head(&S).unwrap().seq - head0;
    stop.store(true, SeqCst);
    let mut commands = 0;
    for e in editors {
        commands += e.await.unwrap();
    }
    let submitted = submitted.lock().unwrap().clone();
    let sequenced = sequenced.lock().unwrap().clone();
    let mut to_sequenced: Vec<f64> = submitted
        .iter()
        .filter(|(_, t)| in_steady(t))
        .filter_map(|(seq, t)| sequenced.get(seq).map(|s| s.duration_since(*t).as_secs_f64() * 1e3))
        .collect();
    let mut delivery = Vec::new();
    let (mut lat, mut bytes, mut raw, mut resyncs, mut deltas) = (Vec::new(), 0u64, 0u64, 0u64, 0usize);
    // (viewer, when submitted, latency ms) of every late sample, for the tail's shape.
    let mut late: Vec<(usize, Instant, f64)> = Vec::new();
    for (i, v) in viewers.into_iter().enumerate() {
        let (applied, b, r, rs) = v.await.unwrap();
        deltas += applied.len();
        bytes += b;
        raw += r;
        resyncs += rs;
        for (from, to, at) in applied {
            for s in from + 1..=to {
                let Some(t) = submitted.get(&s).filter(|t| in_steady(t)) else { continue };
                let ms = at.duration_since(*t).as_secs_f64() * 1e3;
                lat.push(ms);
                if ms > 5.0 {
                    late.push((i, *t, ms));
                }
                if let Some(t) = sequenced.get(&s) {
                    delivery.push(at.duration_since(*t).as_secs_f64() * 1e3);
                }
            }
        }
    }
    let tail = tail_shape(&mut late, submitted.values().min().copied());
    let ack = store.metrics().ack_latency;
    server_rt.spawn(server.shutdown()).await.unwrap();
    let pct = |v: &mut Vec<f64>, p: f64| {
        v.sort_by(|a, b| a.total_cmp(b));
        v.get(((v.len() as f64 * p) as usize).min(v.len().saturating_sub(1))).copied().unwrap_or(f64::NAN)
    };
    let mut receipts: Vec<f64> =
        receipts.lock().unwrap().iter().filter(|(at, _)| in_steady(at)).map(|(_, ms)| *ms).collect();
    let per = |b: u64| b as f64 / viewers_n.max(1) as f64 / secs;
    Run {
        p50_ms: pct(&mut lat, 0.50),
        p99_ms: pct(&mut lat, 0.99),
        receipt_p50_ms: pct(&mut receipts, 0.50),
        receipt_p99_ms: pct(&mut receipts, 0.99),
        sequenced_p99_ms: pct(&mut to_sequenced, 0.99),
        delivery_p50_ms: pct(&mut delivery, 0.50),
        delivery_p99_ms: pct(&mut delivery, 0.99),
        samples: lat.len(),
        commands,
        appended,
        viewers: viewers_n,
        bytes_per_viewer_s: per(bytes),
        raw_per_viewer_s: per(raw),
        resyncs,
        tail,
        deltas_per_viewer_s: deltas as f64 / viewers_n.max(1) as f64 / secs,
        ack_p50_ms: ack_quantile(&ack, 0.5),
        ack_p99_ms: ack_quantile(&ack, 0.99),
    }
}

/// The shape of the late samples (over 5 ms): how many, over how many viewers, and the 10 ms
/// windows of submit time holding most of them (with the viewers each touches): a stall of
/// the server touches every viewer at once, a slow connection one viewer at a time.
fn tail_shape(late: &mut [(usize, Instant, f64)], origin: Option<Instant>) -> String {
    let Some(origin) = origin else { return String::new() };
    let viewers: std::collections::BTreeSet<usize> = late.iter().map(|l| l.0).collect();
    let mut windows: std::collections::BTreeMap<u64, (usize, std::collections::BTreeSet<usize>, f64)> =
        Default::default();
    for (v, t, ms) in late.iter() {
        let w = windows.entry((t.duration_since(origin).as_millis() / 10) as u64).or_default();
        w.0 += 1;
        w.1.insert(*v);
        w.2 = w.2.max(*ms);
    }
    let mut top: Vec<_> = windows.iter().collect();
    top.sort_by_key(|w| std::cmp::Reverse(w.1.0));
    let top: Vec<String> = top
        .iter()
        .take(6)
        .map(|(w, (n, vs, max))| format!("{} ms: {n} from {} viewers (max {max:.1} ms)", *w * 10, vs.len()))
        .collect();
    format!(
        "{} samples over 5 ms from {} viewers in {} windows of 10 ms; most at {}",
        late.len(),
        viewers.len(),
        windows.len(),
        top.join("; ")
    )
}

/// UDP datagrams this host dropped so far because a socket's receive buffer was full
/// (`RcvbufErrors` in /proc/net/snmp; the network namespace's count, not only this process's).
fn udp_errors() -> u64 {
    let snmp = std::fs::read_to_string("/proc/net/snmp").unwrap_or_default();
    let mut udp = snmp.lines().filter(|l| l.starts_with("Udp:"));
    let (Some(names), Some(values)) = (udp.next(), udp.next()) else { return 0 };
    names
        .split_whitespace()
        .zip(values.split_whitespace())
        .find(|(n, _)| *n == "RcvbufErrors")
        .map_or(0, |(_, v)| v.parse().unwrap_or(0))
}

/// CPU seconds (user + system) used so far by this process's threads, summed by thread name.
fn thread_cpu() -> std::collections::BTreeMap<String, f64> {
    let mut out = std::collections::BTreeMap::new();
    let Ok(tasks) = std::fs::read_dir("/proc/self/task") else { return out };
    for t in tasks.flatten() {
        let Ok(stat) = std::fs::read_to_string(t.path().join("stat")) else { continue };
        // pid (comm) state ppid ... utime stime: fields 14 and 15, counted after the comm.
        let (Some(open), Some(close)) = (stat.find('('), stat.rfind(')')) else { continue };
        let name = stat[open + 1..close].trim_end_matches(|c: char| c.is_ascii_digit() || c == '-').to_string();
        let f: Vec<&str> = stat[close + 2..].split(' ').collect();
        let ticks = |i: usize| f.get(i).and_then(|v| v.parse::<f64>().ok()).unwrap_or(0.0);
        // Fields after the comm start at field 3 (state): utime is field 14, stime field 15.
        *out.entry(name).or_insert(0.0) += (ticks(11) + ticks(12)) / 100.0;
    }
    out
}

fn main() {
    use theta_gateway::live::Visibility::{Confirmed, Ordered};
    let secs: f64 = std::env::var("THETA_BENCH_SECS").ok().and_then(|s| s.parse().ok()).unwrap_or(5.0);
    // Half the CPUs serve, half run the clients (at least one worker each).
    let cpus = std::thread::available_parallelism().map_or(2, |n| n.get());
    let workers = std::env::var("THETA_BENCH_WORKERS").ok().and_then(|v| v.parse().ok()).unwrap_or((cpus / 2).max(1));
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("client")
        .enable_all()
        .build()
        .unwrap();
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(workers)
        .thread_name("server")
        .enable_all()
        .build()
        .unwrap();
    println!(
        "live streaming, loopback, {cpus} CPUs; {EDITORS} editors × {HZ} Hz transform updates, {} entities, {secs} s per run",
        EDITORS as u64 * ENTITIES_PER_EDITOR
    );
    println!(
        "| visibility | viewers' transport | editors' transport | viewers | encoding | interest | commands/s | appended/s | viewer p50 | viewer p99 | submit → sequenced p99 | sequenced → viewer p50 / p99 | receipt p50 / p99 | store ack p50 / p99 (≤ bucket) | bytes/viewer/s | raw bytes/viewer/s | resyncs |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let quic = TransportChoice::Quic;
    let webrtc = TransportChoice::WebRtc;
    let setup = |visibility, viewers, compression: &'static [&'static str], compact| Setup {
        transport: quic,
        editors: quic,
        viewers,
        compression,
        interest: false,
        compact,
        visibility,
    };
    // The visibility and bytes table: plain deltas, zstd-stream, zstd-stream with compact deltas,
    // each visibility at 16 and 100 viewers.
    let mut configs = vec![
        setup(Confirmed, 16, &[], false),
        setup(Confirmed, 16, &[ZSTD_STREAM], false),
        setup(Confirmed, 16, &[ZSTD_STREAM], true),
        setup(Ordered, 16, &[], false),
        setup(Ordered, 16, &[ZSTD_STREAM], true),
        setup(Confirmed, 100, &[ZSTD_STREAM], true),
        setup(Ordered, 100, &[ZSTD_STREAM], true),
    ];
    if std::env::var("THETA_BENCH_SET").is_ok_and(|v| v == "full") {
        configs.extend([
            setup(Confirmed, 16, &[ZSTD], false),
            setup(Confirmed, 16, &[ZSTD_DICT, ZSTD], false),
            Setup { interest: true, ..setup(Confirmed, 16, &[], false) },
            Setup { interest: true, ..setup(Confirmed, 16, &[ZSTD_STREAM], false) },
            // The same workload with WebRTC viewers (editors on QUIC), then editors on WebRTC too.
            Setup { transport: webrtc, ..setup(Confirmed, 16, &[], false) },
            Setup { transport: webrtc, ..setup(Confirmed, 16, &[ZSTD_STREAM], false) },
            Setup { transport: webrtc, editors: webrtc, ..setup(Confirmed, 16, &[], false) },
            Setup { editors: webrtc, ..setup(Confirmed, 16, &[], false) },
        ]);
        for v in [32, 64, 128, 256] {
            configs.push(setup(Ordered, v, &[ZSTD_STREAM], true));
        }
    }
    // THETA_BENCH_ONLY=webrtc|quic: only the runs where viewers or editors use that transport.
    let only = std::env::var("THETA_BENCH_ONLY").ok();
    let name = |t: TransportChoice| if t == TransportChoice::WebRtc { "webrtc" } else { "quic" };
    let runs =
        configs.into_iter().filter(|s| only.as_deref().is_none_or(|o| o == name(s.transport) || o == name(s.editors)));
    for setup in runs {
        let dir = tempfile::tempdir().unwrap();
        let store = make_store(dir.path());
        let cpu0 = thread_cpu();
        let udp0 = udp_errors();
        let r = rt.block_on(run(server_rt.handle().clone(), store.clone(), dir.path(), setup, secs));
        let cpu = thread_cpu();
        let udp = udp_errors();
        let encoding = match (setup.compression.first(), setup.compact) {
            (None, false) => "raw".to_string(),
            (None, true) => "compact".to_string(),
            (Some(k), false) => k.to_string(),
            (Some(k), true) => format!("{k} + compact"),
        };
        let visibility = if setup.visibility == Ordered { "ordered" } else { "confirmed" };
        println!(
            "| {visibility} | {} | {} | {} | {encoding} | {} | {:.0} | {:.0} | {:.2} ms | {:.2} ms | {:.2} ms | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.2} / {:.2} ms | {:.0} | {:.0} | {} |   ({} samples)",
            name(setup.transport),
            name(setup.editors),
            r.viewers,
            if setup.interest { "r = 40 m" } else { "no" },
            r.commands as f64 / secs,
            r.appended as f64 / secs,
            r.p50_ms,
            r.p99_ms,
            r.sequenced_p99_ms,
            r.delivery_p50_ms,
            r.delivery_p99_ms,
            r.receipt_p50_ms,
            r.receipt_p99_ms,
            r.ack_p50_ms,
            r.ack_p99_ms,
            r.bytes_per_viewer_s,
            r.raw_per_viewer_s,
            r.resyncs,
            r.samples
        );
        if std::env::var("THETA_BENCH_THREADS").is_ok_and(|v| v == "1") {
            // CPU seconds per thread name over the run (diagnostics: who is busy).
            let mut busy: Vec<(String, f64)> =
                cpu.iter().map(|(k, v)| (k.clone(), v - cpu0.get(k).copied().unwrap_or(0.0))).collect();
            busy.sort_by(|a, b| b.1.total_cmp(&a.1));
            let line: Vec<String> =
                busy.iter().filter(|(_, s)| *s >= 0.05).map(|(k, s)| format!("{k} {s:.2}")).collect();
            println!("    {}", r.tail);
            println!(
                "    {:.0} deltas/viewer/s; UDP datagrams dropped for a full receive buffer: {}; CPU s by thread over the run: {}",
                r.deltas_per_viewer_s,
                udp.saturating_sub(udp0),
                line.join(", ")
            );
        }
        if setup.viewers > 100 && r.p99_ms > 11.1 {
            println!("p99 crossed 11.1 ms at {} viewers", setup.viewers);
            break;
        }
    }
}
