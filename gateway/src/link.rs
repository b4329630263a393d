//! One live connection, whatever carries it (QUIC streams or WebRTC data channels): the
//! handshake on the control channel, then receipts, heartbeats, stats and interest on it,
//! signed commands from the command channel into the store, and the viewer's replication
//! frames out. A transport adapter does the framing (and its size guard) and the byte counting,
//! and hands the driver frame payloads through a [`Link`].

use std::sync::Arc;
use std::sync::atomic::Ordering::Relaxed;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use theta_live::compress::Encoding;
use theta_live::frame::FrameError;
use theta_live::handshake::{CloseCode, Reject, ServerHandshake, ServerStep};
use theta_projector::interest::Area;
use theta_schemas::Message;
use theta_schemas::wire::{Heartbeat, WireError};
use theta_store::{ReadError, Store};
use tokio::sync::mpsc;

use crate::live::{LiveHub, ViewerOptions};
use crate::metrics::{ConnectionStats, Observability};

/// Seconds between the server's heartbeats and stats messages.
pub const STATS_INTERVAL: Duration = Duration::from_secs(1);

/// Closes the connection with an application code and a reason.
pub type Close = Arc<dyn Fn(u32, &str) + Send + Sync>;

/// A transport's replication channel: frames and writes bursts of payloads, in order.
#[async_trait::async_trait]
pub trait ReplicationSink: Send {
    /// Writes `payloads` (framed) in order; false when the peer is gone.
    async fn write(&mut self, payloads: &[Vec<u8>]) -> bool;
}

/// A channel to a writer task (WebRTC's data channel writer): each payload is sent on.
#[async_trait::async_trait]
impl ReplicationSink for mpsc::Sender<Vec<u8>> {
    async fn write(&mut self, payloads: &[Vec<u8>]) -> bool {
        for p in payloads {
            if self.send(p.clone()).await.is_err() {
                return false;
            }
        }
        true
    }
}

/// Bytes of payloads a replication write takes at most (more when one payload is bigger).
const BURST_BYTES: usize = 16 * 1024;

/// The driver's side of one connection.
pub struct Link {
    /// `quic` or `webrtc` (the `transport` label).
    pub transport: &'static str,
    /// Frame payloads from the control channel, or the framing error that ends it.
    pub control_in: mpsc::Receiver<Result<Vec<u8>, FrameError>>,
    /// Frame payloads (signed envelopes) from the command channel(s), or a framing error.
    pub commands_in: mpsc::Receiver<Result<Vec<u8>, FrameError>>,
    /// Payloads to frame and write on the control channel.
    pub control_out: mpsc::Sender<Vec<u8>>,
    /// Where the replication stream goes: the viewer's subscription hands it each burst of
    /// payloads directly (the viewer's queue in the hub is the buffer that matters).
    pub replication: Box<dyn ReplicationSink>,
    /// Counters the adapter updates (bytes) and the driver registers after the handshake.
    pub stats: Arc<ConnectionStats>,
    /// Closes the connection.
    pub close: Close,
    /// The connection's place in its address's limits (half-open until the welcome).
    pub address: Option<crate::peers::AddressPermit>,
}

fn now_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

fn now_us() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map_or(0, |d| d.as_micros() as u64)
}

/// Runs one connection to its end.
pub async fn drive(store: Arc<Store>, hub: Arc<LiveHub>, obs: Arc<Observability>, link: Link, timeout_ms: u64) {
    let Link { transport, mut control_in, mut commands_in, control_out, mut replication, stats, close, mut address } =
        link;
    let mut hs = ServerHandshake::new(crate::quic::server_capabilities(), rand::random(), now_ms(), timeout_ms);
    let deadline = tokio::time::Instant::now() + Duration::from_millis(timeout_ms);
    let accepted = loop {
        let payload = match tokio::time::timeout_at(deadline, control_in.recv()).await {
            Err(_) => {
                if let Some(ServerStep::Close { error, .. }) = hs.poll_timeout(now_ms() + timeout_ms + 1) {
                    let _ = control_out.send(error).await;
                }
                obs.handshake_refused(6);
                tokio::time::sleep(Duration::from_millis(50)).await;
                close(6, "handshake timeout");
                return;
            }
            Ok(Some(Ok(p))) => p,
            Ok(Some(Err(e))) => {
                let _ = control_out.send(Reject::Unexpected("oversized or empty frame").to_frame()).await;
                obs.handshake_refused(7);
                tokio::time::sleep(Duration::from_millis(50)).await;
                close(7, &e.to_string());
                return;
            }
            Ok(None) => return,
        };
        let step =
            hs.on_message(&payload, now_ms(), |session, key| match (store.role(session, key), store.head(session)) {
                (Ok((role, _)), Ok(head)) => Ok((role, head.seq, head.clock)),
                (Err(ReadError::UnknownSession { .. }), _) | (_, Err(_)) | (Err(_), _) => {
                    Err(Reject::UnknownSession(*session))
                }
            });
        match step {
            ServerStep::Send(bytes) => {
                if control_out.send(bytes).await.is_err() {
                    return;
                }
            }
            ServerStep::Done { welcome, accepted } => {
                // The handshake is complete once the server accepts it: the address stops
                // counting it as half-open before the peer can see the Welcome.
                if let Some(a) = address.as_mut() {
                    a.established();
                }
                if control_out.send(welcome).await.is_err() {
                    return;
                }
                obs.live_connected(transport);
                break accepted;
            }
            ServerStep::Close { error, reject } => {
                obs.handshake_refused(reject.code() as u32);
                let _ = control_out.send(error).await;
                tokio::time::sleep(Duration::from_millis(50)).await;
                close(reject.code() as u32, &reject.to_string());
                return;
            }
        }
    };
    let _ = stats.role.set(format!("{:?}", accepted.role).to_lowercase());
    let guard = obs.register(stats.clone());
    let mut tasks = Vec::new();
    // Replication: the snapshot, then deltas in seq order.
    let options = ViewerOptions {
        encoding: Encoding::from_agreed(&accepted.capabilities.compression),
        interest: accepted.capabilities.interest_management,
        resume_seq: accepted.resume_seq,
        max_chunk_bytes: accepted.capabilities.max_chunk_bytes as usize,
        compact: accepted.capabilities.compact_deltas,
    };
    let viewer = hub.subscribe_with(accepted.session, options).ok();
    let interest = viewer.as_ref().map(|v| v.interest());
    if let Some(mut sub) = viewer {
        let _ = stats.viewer.set(sub.stats.clone());
        let (stats, out, close) = (stats.clone(), control_out.clone(), close.clone());
        tasks.push(tokio::spawn(async move {
            loop {
                match sub.next_burst(BURST_BYTES).await {
                    Ok(Some(burst)) => {
                        stats.queue_depth.store(sub.queued() as u64, Relaxed);
                        if !replication.write(&burst).await {
                            return;
                        }
                    }
                    Ok(None) => return,
                    Err(failure) => {
                        // The session's live thread failed: say so, and close so the client
                        // reconnects (its mirror resumes from a restarted thread).
                        let code = CloseCode::LiveRestart as u32;
                        let error = WireError { code, reason: failure.to_string(), nonce: 0 };
                        let _ = out.send(Message::Error(error).encode()).await;
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        close(code, &failure.to_string());
                        return;
                    }
                }
            }
        }));
    }
    // Once a second: a heartbeat (the client echoes it: the server's RTT) and the stats message.
    {
        let (out, stats) = (control_out.clone(), stats.clone());
        tasks.push(tokio::spawn(async move {
            let mut tick = tokio::time::interval(STATS_INTERVAL);
            let mut sequence = 0u64;
            loop {
                tick.tick().await;
                sequence += 1;
                let hb = Heartbeat { sequence, sent_at_us: now_us(), echo_us: 0 };
                if out.send(Message::Heartbeat(hb).encode()).await.is_err()
                    || out.send(Message::Stats(stats.sample()).encode()).await.is_err()
                {
                    return;
                }
            }
        }));
    }
    // Commands: the same store checks and counters as every other entry point.
    {
        let (store, out, obs, close) = (store.clone(), control_out.clone(), obs.clone(), close.clone());
        let session = accepted.session;
        tasks.push(tokio::spawn(async move {
            while let Some(item) = commands_in.recv().await {
                match item {
                    Ok(envelope) => crate::quic::submit_command(&store, session, envelope, &out).await,
                    Err(e) => {
                        obs.protocol_violation();
                        close(7, &e.to_string());
                        return;
                    }
                }
            }
        }));
    }
    // The control channel after the handshake: heartbeats (answered with an echo, or an echo
    // of ours giving the RTT) and interest updates. The connection lives as long as it does.
    let mut sequence = 0u64;
    while let Some(item) = control_in.recv().await {
        let msg = match item {
            Ok(f) => Message::decode(&f),
            Err(e) => {
                obs.protocol_violation();
                close(7, &e.to_string());
                break;
            }
        };
        match msg {
            Ok(Message::Heartbeat(h)) if h.echo_us != 0 => {
                stats.rtt_us.store(now_us().saturating_sub(h.echo_us), Relaxed);
            }
            Ok(Message::Heartbeat(h)) => {
                sequence += 1;
                let reply = Heartbeat { sequence, sent_at_us: now_us(), echo_us: h.sent_at_us };
                if control_out.send(Message::Heartbeat(reply).encode()).await.is_err() {
                    break;
                }
            }
            Ok(Message::Interest(i)) if interest.is_some() && options.interest => {
                if let Some(handle) = &interest {
                    handle.set(Area { center: i.center, radius: i.radius });
                }
            }
            _ => {
                obs.protocol_violation();
                close(7, "unexpected message on the control channel");
                break;
            }
        }
    }
    for t in tasks {
        t.abort();
    }
    drop(guard);
}
