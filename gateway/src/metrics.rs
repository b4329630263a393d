//! Telemetry: request counters and latencies, and the Prometheus `/metrics` endpoint.
//!
//! Every store counter is exported under its seed name with a `theta_` prefix and `_total`
//! suffix (`theta_replay_rejections_total`, ...); latencies are histograms in seconds.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::time::Instant;

use theta_store::metrics::{HistogramSnapshot, LATENCY_BUCKETS_US};
use theta_store::{RejectionCode, Store};

/// Calls and latency of one gRPC method.
#[derive(Debug, Default, Clone)]
struct MethodStats {
    calls: u64,
    latency: HistogramSnapshot,
}

/// Request telemetry of the gateway.
#[derive(Default)]
pub struct Observability {
    methods: Mutex<BTreeMap<&'static str, MethodStats>>,
    subscribers_dropped: std::sync::atomic::AtomicU64,
    quic_connections: std::sync::atomic::AtomicU64,
    webrtc_connections: std::sync::atomic::AtomicU64,
    signalling_refusals: std::sync::atomic::AtomicU64,
    protocol_violations: std::sync::atomic::AtomicU64,
    handshake_refusals: Mutex<BTreeMap<u32, u64>>,
    live: std::sync::OnceLock<std::sync::Arc<crate::live::LiveHub>>,
    connections: Mutex<BTreeMap<u64, std::sync::Arc<ConnectionStats>>>,
    next_connection: std::sync::atomic::AtomicU64,
    request_errors: Mutex<BTreeMap<(&'static str, i32), u64>>,
    requests_too_large: std::sync::atomic::AtomicU64,
    address_refusals: Mutex<BTreeMap<(&'static str, &'static str), u64>>,
    access: std::sync::OnceLock<std::sync::Arc<crate::auth::Access>>,
    grpc_in_flight: std::sync::atomic::AtomicU64,
}

/// One gRPC call in flight, from its request head until its response ends or is dropped.
pub struct CallInFlight(std::sync::Arc<Observability>);

impl Drop for CallInFlight {
    fn drop(&mut self) {
        self.0.grpc_in_flight.fetch_sub(1, Relaxed);
    }
}

/// The gRPC methods, as labels (any other path counts as `other`).
const METHODS: [&str; 19] = [
    "/theta.v1.LogService/CreateSession",
    "/theta.v1.LogService/Append",
    "/theta.v1.LogService/AppendStream",
    "/theta.v1.LogService/Head",
    "/theta.v1.ReplayService/ReadLog",
    "/theta.v1.ReplayService/ReadState",
    "/theta.v1.ReplayService/Subscribe",
    "/theta.v1.ReplayService/EntityHistory",
    "/theta.v1.AuditService/VerifyLog",
    "/theta.v1.AuditService/InclusionProof",
    "/theta.v1.AuditService/ConsistencyProof",
    "/theta.v1.AuditService/SignedTreeHead",
    "/theta.v1.AuditService/Rejections",
    "/theta.v1.AuditService/AuthorSummary",
    "/theta.v1.AdminService/Stats",
    "/grpc.health.v1.Health/Check",
    "/grpc.health.v1.Health/Watch",
    "/grpc.reflection.v1.ServerReflection/ServerReflectionInfo",
    "/grpc.reflection.v1alpha.ServerReflection/ServerReflectionInfo",
];

/// One live connection's telemetry (QUIC or WebRTC), shown in `/metrics` and sent to the client
/// once a second as a `Stats` message for its overlay.
#[derive(Debug, Default)]
pub struct ConnectionStats {
    /// Id, unique within the process (the `connection` label).
    pub id: u64,
    /// `quic` or `webrtc`.
    pub transport: &'static str,
    /// The client's role, lower case (set once the handshake is done).
    pub role: std::sync::OnceLock<String>,
    /// Bytes received from the client (frames, including headers).
    pub bytes_in: AtomicU64,
    /// Bytes sent to the client.
    pub bytes_out: AtomicU64,
    /// Last round trip measured from the server's heartbeats, microseconds.
    pub rtt_us: AtomicU64,
    /// Frames waiting in the viewer's queue.
    pub queue_depth: AtomicU64,
    /// The viewer's fan-out counters, once subscribed.
    pub viewer: std::sync::OnceLock<std::sync::Arc<crate::live::ViewerStats>>,
    rates: Mutex<Rates>,
}

#[derive(Debug, Default, Clone, Copy)]
struct Rates {
    at: Option<Instant>,
    totals: [u64; 3],
    per_sec: [u64; 3],
}

impl ConnectionStats {
    fn totals(&self) -> [u64; 3] {
        let deltas = self.viewer.get().map_or(0, |v| v.deltas.load(Relaxed));
        [self.bytes_in.load(Relaxed), self.bytes_out.load(Relaxed), deltas]
    }

    /// Recomputes the per-second rates (bytes in, bytes out, deltas) since the last call and
    /// returns the connection's stats message.
    pub fn sample(&self) -> theta_schemas::wire::Stats {
        let now = Instant::now();
        let totals = self.totals();
        let mut r = self.rates.lock().expect("rates lock");
        if let Some(at) = r.at {
            let secs = now.duration_since(at).as_secs_f64().max(1e-3);
            let before = r.totals;
            for ((rate, now), then) in r.per_sec.iter_mut().zip(totals).zip(before) {
                *rate = (now.saturating_sub(then) as f64 / secs).round() as u64;
            }
        }
        r.at = Some(now);
        r.totals = totals;
        theta_schemas::wire::Stats {
            rtt_us: self.rtt_us.load(Relaxed),
            bytes_in_per_sec: r.per_sec[0],
            bytes_out_per_sec: r.per_sec[1],
            deltas_per_sec: r.per_sec[2],
            queue_depth: self.queue_depth.load(Relaxed) as u32,
            transport: self.transport.to_string(),
            resyncs: self.viewer.get().map_or(0, |v| v.resyncs.load(Relaxed)),
        }
    }

    fn last_rates(&self) -> [u64; 3] {
        self.rates.lock().expect("rates lock").per_sec
    }
}

/// Removes a connection from `/metrics` when dropped.
pub struct ConnectionGuard {
    obs: std::sync::Arc<Observability>,
    /// The connection's stats.
    pub stats: std::sync::Arc<ConnectionStats>,
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.obs.connections.lock().expect("metrics lock").remove(&self.stats.id);
    }
}

impl std::fmt::Debug for Observability {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Observability").finish_non_exhaustive()
    }
}

/// Records a call's latency when dropped.
pub struct CallTimer<'a> {
    obs: &'a Observability,
    method: &'static str,
    started: Instant,
}

impl Drop for CallTimer<'_> {
    fn drop(&mut self) {
        let us = self.started.elapsed().as_micros() as u64;
        let mut m = self.obs.methods.lock().expect("metrics lock");
        let s = m.entry(self.method).or_default();
        s.calls += 1;
        let i = LATENCY_BUCKETS_US.iter().position(|b| us <= *b).unwrap_or(LATENCY_BUCKETS_US.len());
        s.latency.buckets[i] += 1;
        s.latency.count += 1;
        s.latency.sum_us += us;
    }
}

impl Observability {
    /// Counts a gRPC error status of `path` (`theta_request_errors_total{method, code}`).
    pub fn request_error(&self, path: &str, code: i32) {
        let method = METHODS.iter().find(|m| **m == path).map_or("other", |m| m.rsplit('/').next().unwrap_or(m));
        *self.request_errors.lock().expect("metrics lock").entry((method, code)).or_default() += 1;
    }

    /// Counts a live connection refused by its address's limits.
    pub fn address_refused(&self, transport: &'static str, reason: crate::peers::AddressRefusal) {
        *self.address_refusals.lock().expect("metrics lock").entry((transport, reason.label())).or_default() += 1;
    }

    /// Counts a gRPC call in flight until the guard drops.
    pub fn call_started(self: &std::sync::Arc<Self>) -> CallInFlight {
        self.grpc_in_flight.fetch_add(1, Relaxed);
        CallInFlight(self.clone())
    }

    /// Counts a request refused by the transport's size limit.
    pub fn request_too_large(&self) {
        self.requests_too_large.fetch_add(1, Relaxed);
    }

    /// Shows the access checks' counters too.
    pub fn attach_access(&self, access: std::sync::Arc<crate::auth::Access>) {
        let _ = self.access.set(access);
    }

    /// Starts timing a call of `method`.
    pub fn call(&self, method: &'static str) -> CallTimer<'_> {
        CallTimer { obs: self, method, started: Instant::now() }
    }

    /// Counts a refused WebRTC signalling request (a body that is not an SDP offer).
    pub fn signalling_refused(&self) {
        self.signalling_refusals.fetch_add(1, Relaxed);
    }

    /// Counts a live connection closed after its handshake for bad framing or an unexpected
    /// message (close code 7).
    pub fn protocol_violation(&self) {
        self.protocol_violations.fetch_add(1, Relaxed);
    }

    /// Counts a refused QUIC handshake by close code.
    pub fn handshake_refused(&self, code: u32) {
        *self.handshake_refusals.lock().expect("metrics lock").entry(code).or_default() += 1;
    }

    /// Counters for a new live connection (not yet listed in `/metrics`: see
    /// [`Observability::register`]).
    pub fn new_connection(&self, transport: &'static str) -> std::sync::Arc<ConnectionStats> {
        let id = self.next_connection.fetch_add(1, Relaxed) + 1;
        std::sync::Arc::new(ConnectionStats { id, transport, ..ConnectionStats::default() })
    }

    /// Lists a connection in `/metrics` until the guard drops.
    pub fn register(self: &std::sync::Arc<Self>, stats: std::sync::Arc<ConnectionStats>) -> ConnectionGuard {
        self.connections.lock().expect("metrics lock").insert(stats.id, stats.clone());
        ConnectionGuard { obs: self.clone(), stats }
    }

    /// Counts a completed live handshake on `transport`.
    pub fn live_connected(&self, transport: &str) {
        match transport {
            "quic" => self.quic_connections.fetch_add(1, Relaxed),
            _ => self.webrtc_connections.fetch_add(1, Relaxed),
        };
    }

    /// Attaches the live fan-out, whose counters are then exported.
    pub fn attach_live(&self, hub: std::sync::Arc<crate::live::LiveHub>) {
        let _ = self.live.set(hub);
    }

    /// Counts a subscriber told to resume later because it stopped reading.
    pub fn subscriber_dropped(&self) {
        self.subscribers_dropped.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }

    fn dropped(&self) -> u64 {
        self.subscribers_dropped.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Every counter by name (store counters, then per-method call counts).
    pub fn counters(&self, store: &Store) -> Vec<(String, u64)> {
        let m = store.metrics();
        let mut out = vec![
            ("appends_accepted".to_string(), m.appends_accepted),
            ("batches_committed".to_string(), m.batches_committed),
            ("flushes".to_string(), m.flushes),
            ("signatures_verified".to_string(), m.signatures_verified),
            ("batch_verify_fallbacks".to_string(), m.batch_verify_fallbacks),
            ("storage_failures".to_string(), m.storage_failures),
            ("storage_recoveries".to_string(), m.storage_recoveries),
            ("imported_entries".to_string(), m.imported_entries),
            ("queue_depth".to_string(), m.queue_depth),
        ];
        for code in RejectionCode::ALL {
            out.push((code.counter().to_string(), m.rejected(code)));
        }
        out.push(("conflicts".to_string(), m.rejected(RejectionCode::Conflict)));
        out.push(("slow_subscriber_drops".to_string(), self.dropped()));
        out.push(("requests_too_large".to_string(), self.requests_too_large.load(Relaxed)));
        if let Some(a) = self.access.get() {
            for (reason, n) in a.counters.failures() {
                out.push((format!("auth_failures.{reason}"), n));
            }
            for (reason, n) in a.counters.limits() {
                out.push((format!("read_limit_drops.{reason}"), n));
            }
        }
        for ((method, code), n) in self.request_errors.lock().expect("metrics lock").iter() {
            out.push((format!("request_errors.{method}.{}", tonic::Code::from_i32(*code).description()), *n));
        }
        for (method, s) in self.methods.lock().expect("metrics lock").iter() {
            out.push((format!("grpc_calls.{method}"), s.calls));
        }
        out
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self, store: &Store) -> String {
        let m = store.metrics();
        let mut s = String::new();
        let counter = |s: &mut String, name: &str, help: &str, v: u64| {
            let _ = writeln!(s, "# HELP theta_{name}_total {help}");
            let _ = writeln!(s, "# TYPE theta_{name}_total counter");
            let _ = writeln!(s, "theta_{name}_total {v}");
        };
        counter(&mut s, "appends_accepted", "Appends accepted into a log.", m.appends_accepted);
        counter(&mut s, "batches_committed", "Group-commit batches written.", m.batches_committed);
        counter(&mut s, "flushes", "Durable flushes (flush + fdatasync).", m.flushes);
        counter(&mut s, "signatures_verified", "Signatures verified.", m.signatures_verified);
        counter(
            &mut s,
            "batch_verify_fallbacks",
            "Failed signature batches re-checked one by one.",
            m.batch_verify_fallbacks,
        );
        counter(&mut s, "imported_entries", "Entries written by trusted import.", m.imported_entries);
        counter(
            &mut s,
            "storage_failures",
            "Storage failures (a write, flush or fsync failed) that stopped appends.",
            m.storage_failures,
        );
        counter(
            &mut s,
            "storage_recoveries",
            "Times the store reopened its storage after a failure and took appends again.",
            m.storage_recoveries,
        );
        for code in RejectionCode::ALL {
            counter(
                &mut s,
                code.counter(),
                &format!("Appends rejected with reason code {}.", code as u8),
                m.rejected(code),
            );
        }
        counter(
            &mut s,
            "conflicts",
            "Appends rejected by a scope's conflict rules (same as conflict_rejections).",
            m.rejected(RejectionCode::Conflict),
        );
        counter(
            &mut s,
            "slow_subscriber_drops",
            "Subscribe streams ended because the client stopped reading.",
            self.dropped(),
        );
        counter(
            &mut s,
            "requests_too_large",
            "gRPC requests refused by the transport's size limit (answered RESOURCE_EXHAUSTED).",
            self.requests_too_large.load(Relaxed),
        );
        if let Some(a) = self.access.get() {
            let _ = writeln!(s, "# HELP theta_auth_failures_total gRPC calls refused by the access checks, by reason.");
            let _ = writeln!(s, "# TYPE theta_auth_failures_total counter");
            for (reason, n) in a.counters.failures() {
                let _ = writeln!(s, "theta_auth_failures_total{{reason=\"{reason}\"}} {n}");
            }
            let _ =
                writeln!(s, "# HELP theta_read_limit_drops_total gRPC reads refused by a per-key limit, by reason.");
            let _ = writeln!(s, "# TYPE theta_read_limit_drops_total counter");
            for (reason, n) in a.counters.limits() {
                let _ = writeln!(s, "theta_read_limit_drops_total{{reason=\"{reason}\"}} {n}");
            }
        }
        let _ = writeln!(
            s,
            "# HELP theta_live_address_refusals_total Live connections refused by their address's limits, by transport and reason."
        );
        let _ = writeln!(s, "# TYPE theta_live_address_refusals_total counter");
        for transport in ["quic", "webrtc"] {
            for reason in [crate::peers::AddressRefusal::HalfOpen, crate::peers::AddressRefusal::Connections] {
                let n = self
                    .address_refusals
                    .lock()
                    .expect("metrics lock")
                    .get(&(transport, reason.label()))
                    .copied()
                    .unwrap_or(0);
                let _ = writeln!(
                    s,
                    "theta_live_address_refusals_total{{transport=\"{transport}\",reason=\"{}\"}} {n}",
                    reason.label()
                );
            }
        }
        let _ = writeln!(s, "# HELP theta_request_errors_total gRPC calls answered with an error, by method and code.");
        let _ = writeln!(s, "# TYPE theta_request_errors_total counter");
        for ((method, code), n) in self.request_errors.lock().expect("metrics lock").iter() {
            let _ = writeln!(s, "theta_request_errors_total{{method=\"{method}\",code=\"{code}\"}} {n}");
        }
        let _ = writeln!(s, "# HELP theta_queue_depth Appends submitted and not yet answered.");
        let _ = writeln!(s, "# TYPE theta_queue_depth gauge");
        let _ = writeln!(s, "theta_queue_depth {}", m.queue_depth);
        let _ = writeln!(s, "# HELP theta_storage_failed 1 while a storage failure stops appends, else 0.");
        let _ = writeln!(s, "# TYPE theta_storage_failed gauge");
        let _ = writeln!(s, "theta_storage_failed {}", u8::from(store.storage_failed()));
        histogram(&mut s, "theta_append_ack_seconds", "Append submit-to-acknowledgement latency.", &[], &m.ack_latency);
        histogram(&mut s, "theta_flush_seconds", "Durable flush duration.", &[], &m.flush_latency);
        histogram(
            &mut s,
            "theta_signature_verification_seconds",
            "Signature verification time per batch.",
            &[],
            &m.verify_latency,
        );
        let methods = self.methods.lock().expect("metrics lock").clone();
        let _ = writeln!(s, "# HELP theta_grpc_requests_total gRPC calls by method.");
        let _ = writeln!(s, "# TYPE theta_grpc_requests_total counter");
        for (method, st) in &methods {
            let _ = writeln!(s, "theta_grpc_requests_total{{method=\"{method}\"}} {}", st.calls);
        }
        let _ = writeln!(
            s,
            "# HELP theta_grpc_request_seconds gRPC call latency by method (time to the response head for streams)."
        );
        let _ = writeln!(s, "# TYPE theta_grpc_request_seconds histogram");
        for (method, st) in &methods {
            histogram_body(&mut s, "theta_grpc_request_seconds", &[("method", method)], &st.latency);
        }
        let relaxed = std::sync::atomic::Ordering::Relaxed;
        counter(
            &mut s,
            "quic_connections",
            "QUIC connections that completed the handshake.",
            self.quic_connections.load(relaxed),
        );
        counter(
            &mut s,
            "webrtc_connections",
            "WebRTC connections that completed the handshake.",
            self.webrtc_connections.load(relaxed),
        );
        counter(
            &mut s,
            "webrtc_signalling_refusals",
            "WebRTC offers refused as malformed or oversized.",
            self.signalling_refusals.load(relaxed),
        );
        counter(
            &mut s,
            "live_protocol_violations",
            "Live connections closed after the handshake for bad framing or an unexpected message.",
            self.protocol_violations.load(relaxed),
        );
        let _ = writeln!(
            s,
            "# HELP theta_live_handshake_refusals_total Refused live handshakes (QUIC and WebRTC) by close code."
        );
        let _ = writeln!(s, "# TYPE theta_live_handshake_refusals_total counter");
        for (code, n) in self.handshake_refusals.lock().expect("metrics lock").iter() {
            let _ = writeln!(s, "theta_live_handshake_refusals_total{{code=\"{code}\"}} {n}");
        }
        let (resyncs, deltas) =
            self.live.get().map_or((0, 0), |h| (h.resyncs.load(relaxed), h.deltas_sent.load(relaxed)));
        counter(&mut s, "viewer_resyncs", "Viewers resynced with a fresh snapshot because they fell behind.", resyncs);
        counter(&mut s, "deltas_sent", "Deltas sent to live viewers.", deltas);
        if let Some(h) = self.live.get() {
            counter(
                &mut s,
                "replication_raw_bytes",
                "Replication payload bytes before compression, for viewers that negotiated it.",
                h.raw_bytes.load(relaxed),
            );
            counter(
                &mut s,
                "replication_compressed_bytes",
                "The same payloads' bytes as sent (compressed where that was smaller).",
                h.compressed_bytes.load(relaxed),
            );
            counter(&mut s, "dictionaries_trained", "zstd dictionaries trained from session traffic.", {
                h.dictionaries.load(relaxed)
            });
            counter(&mut s, "viewer_resumes", "Reconnected viewers resumed from their seq without a snapshot.", {
                h.resumes.load(relaxed)
            });
            counter(
                &mut s,
                "live_session_failures",
                "Live session threads that stopped on a read error (their viewers' streams end; the next viewer restarts it).",
                h.session_failures.load(relaxed),
            );
            counter(
                &mut s,
                "live_checkpoints_written",
                "Checkpoints written by live session threads from their projection (no second fold of the log).",
                h.checkpoints_written.load(relaxed),
            );
            let _ = writeln!(s, "# HELP theta_live_session_threads Sessions with a live projection thread now.");
            let _ = writeln!(s, "# TYPE theta_live_session_threads gauge");
            let _ = writeln!(s, "theta_live_session_threads {}", h.session_threads());
        }
        self.render_connections(&mut s);
        let _ = writeln!(s, "# HELP theta_grpc_calls_in_flight gRPC calls open now (streams until they end).");
        let _ = writeln!(s, "# TYPE theta_grpc_calls_in_flight gauge");
        let _ = writeln!(s, "theta_grpc_calls_in_flight {}", self.grpc_in_flight.load(Relaxed));
        render_process(&mut s);
        let _ = writeln!(s, "# HELP theta_sessions Sessions in the store.");
        let _ = writeln!(s, "# TYPE theta_sessions gauge");
        let _ = writeln!(s, "theta_sessions {}", store.sessions().len());
        s
    }
}

/// The standard process metrics of Prometheus clients, from `/proc/self` (Linux; elsewhere
/// they are left out).
fn render_process(s: &mut String) {
    let Ok(status) = std::fs::read_to_string("/proc/self/status") else { return };
    let kib = |name: &str| {
        status.lines().find_map(|l| l.strip_prefix(name)).and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
    };
    let metrics = [
        ("process_resident_memory_bytes", "Resident memory size in bytes.", kib("VmRSS:").map(|k| k * 1024)),
        ("process_virtual_memory_bytes", "Virtual memory size in bytes.", kib("VmSize:").map(|k| k * 1024)),
        (
            "process_open_fds",
            "Number of open file descriptors.",
            std::fs::read_dir("/proc/self/fd").ok().map(|d| d.count() as u64),
        ),
        ("process_threads", "Number of OS threads in the process.", kib("Threads:")),
    ];
    for (name, help, value) in metrics {
        if let Some(v) = value {
            let _ = writeln!(s, "# HELP {name} {help}");
            let _ = writeln!(s, "# TYPE {name} gauge");
            let _ = writeln!(s, "{name} {v}");
        }
    }
}

impl Observability {
    fn render_connections(&self, s: &mut String) {
        let conns: Vec<_> = self.connections.lock().expect("metrics lock").values().cloned().collect();
        let mut by_transport: BTreeMap<&str, u64> = BTreeMap::new();
        for c in &conns {
            *by_transport.entry(c.transport).or_default() += 1;
        }
        let _ = writeln!(s, "# HELP theta_live_connections Open live connections by transport.");
        let _ = writeln!(s, "# TYPE theta_live_connections gauge");
        for t in ["quic", "webrtc"] {
            let _ = writeln!(s, "theta_live_connections{{transport=\"{t}\"}} {}", by_transport.get(t).unwrap_or(&0));
        }
        type Field = fn(&ConnectionStats) -> f64;
        let gauges: [(&str, &str, &str, Field); 5] = [
            ("theta_connection_rtt_seconds", "gauge", "Round-trip time from heartbeats.", |c| {
                c.rtt_us.load(Relaxed) as f64 / 1e6
            }),
            ("theta_connection_receive_bytes_per_second", "gauge", "Bytes received per second.", |c| {
                c.last_rates()[0] as f64
            }),
            ("theta_connection_send_bytes_per_second", "gauge", "Bytes sent per second.", |c| c.last_rates()[1] as f64),
            ("theta_connection_deltas_per_second", "gauge", "Deltas sent per second.", |c| c.last_rates()[2] as f64),
            ("theta_connection_queue_depth", "gauge", "Frames waiting in the viewer's queue.", |c| {
                c.queue_depth.load(Relaxed) as f64
            }),
        ];
        let counters: [(&str, &str, &str, Field); 2] = [
            ("theta_connection_received_bytes_total", "counter", "Bytes received on this connection.", |c| {
                c.bytes_in.load(Relaxed) as f64
            }),
            ("theta_connection_sent_bytes_total", "counter", "Bytes sent on this connection.", |c| {
                c.bytes_out.load(Relaxed) as f64
            }),
        ];
        for (name, kind, help, f) in gauges.iter().chain(counters.iter()) {
            let _ = writeln!(s, "# HELP {name} {help} Per live connection.");
            let _ = writeln!(s, "# TYPE {name} {kind}");
            for c in &conns {
                let _ = writeln!(
                    s,
                    "{name}{{connection=\"{}\",transport=\"{}\",role=\"{}\"}} {}",
                    c.id,
                    c.transport,
                    c.role.get().map_or("", String::as_str),
                    f(c)
                );
            }
        }
    }
}

fn histogram(s: &mut String, name: &str, help: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
    let _ = writeln!(s, "# HELP {name} {help}");
    let _ = writeln!(s, "# TYPE {name} histogram");
    histogram_body(s, name, labels, h);
}

fn histogram_body(s: &mut String, name: &str, labels: &[(&str, &str)], h: &HistogramSnapshot) {
    let base: String = labels.iter().map(|(k, v)| format!("{k}=\"{v}\",")).collect();
    let mut cumulative = 0;
    for (i, bound) in LATENCY_BUCKETS_US.iter().enumerate() {
        cumulative += h.buckets[i];
        let _ = writeln!(s, "{name}_bucket{{{base}le=\"{}\"}} {cumulative}", *bound as f64 / 1e6);
    }
    cumulative += h.buckets[LATENCY_BUCKETS_US.len()];
    let _ = writeln!(s, "{name}_bucket{{{base}le=\"+Inf\"}} {cumulative}");
    let plain = base.trim_end_matches(',');
    let braces = if plain.is_empty() { String::new() } else { format!("{{{plain}}}") };
    let _ = writeln!(s, "{name}_sum{braces} {}", h.sum_us as f64 / 1e6);
    let _ = writeln!(s, "{name}_count{braces} {}", h.count);
}
