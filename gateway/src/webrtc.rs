//! The WebRTC endpoint (crate `webrtc` 0.21): where QUIC cannot reach (browsers, networks that
//! block UDP to arbitrary ports), the same frames and handshake travel over three reliable,
//! ordered data channels (`control`, `replication`, `commands`) opened by the client.
//! Signalling is an HTTP POST of the SDP offer to `/webrtc/offer` on the gateway's HTTP port,
//! answered with the SDP answer once ICE gathering is complete (no trickle). Each connection is
//! then driven by [`crate::link::drive`], with the same checks and counters as QUIC and metrics
//! tagged `transport="webrtc"`.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use theta_store::Store;
use theta_transport::{COMMANDS, CONTROL, REPLICATION, drain_channel, read_channel, write_channel};
use tokio::sync::mpsc;
use webrtc::data_channel::DataChannel;
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCConfigurationBuilder, RTCIceGatheringState,
    RTCIceServer, RTCPeerConnectionState, RTCSdpType, RTCSessionDescription, SettingEngineBuilder,
};

use crate::live::LiveHub;
use crate::metrics::{ConnectionStats, Observability};

/// WebRTC settings.
#[derive(Debug, Clone)]
pub struct WebRtcConfig {
    /// UDP addresses to gather candidates on (default `127.0.0.1:0`: loopback only).
    pub udp_addrs: Vec<String>,
    /// STUN/TURN server URLs for real deployments (`stun:host:port`, `turn:host:port`).
    pub ice_servers: Vec<String>,
    /// Handshake timeout, ms.
    pub handshake_timeout_ms: u64,
}

impl Default for WebRtcConfig {
    fn default() -> Self {
        WebRtcConfig { udp_addrs: vec!["127.0.0.1:0".into()], ice_servers: Vec::new(), handshake_timeout_ms: 5_000 }
    }
}

/// Why an offer could not be answered.
#[derive(Debug, thiserror::Error)]
pub enum WebRtcError {
    /// The body is not an SDP offer as JSON (`{"type":"offer","sdp":"..."}`).
    #[error("bad offer: {0}")]
    BadOffer(String),
    /// The peer connection failed.
    #[error("webrtc: {0}")]
    Peer(String),
    /// The signalling client's address is at its limit of live connections.
    #[error("too many live connections from this address ({})", .0.label())]
    AddressLimit(crate::peers::AddressRefusal),
}

/// The WebRTC endpoint: answers offers and drives their connections.
pub struct WebRtcEndpoint {
    store: Arc<Store>,
    hub: Arc<LiveHub>,
    obs: Arc<Observability>,
    config: WebRtcConfig,
    peers: Mutex<Vec<Arc<dyn PeerConnection>>>,
    limits: Arc<crate::peers::AddressLimits>,
    /// Peer connections still in memory: each owns one [`Handler`], counted until it drops.
    in_memory: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct Channels {
    control: Option<Arc<dyn DataChannel>>,
    replication: Option<Arc<dyn DataChannel>>,
    commands: Option<Arc<dyn DataChannel>>,
    started: bool,
}

struct Handler {
    endpoint: Arc<WebRtcEndpoint>,
    gathered: mpsc::Sender<()>,
    channels: Mutex<Channels>,
    /// Weak: the peer connection owns this handler, and a strong handle here would keep both
    /// alive after the connection closes.
    peer: std::sync::OnceLock<std::sync::Weak<dyn PeerConnection>>,
    /// The signalling client's place in its address's limits, until the connection starts.
    address: Mutex<Option<crate::peers::AddressPermit>>,
}

impl Drop for Handler {
    fn drop(&mut self) {
        self.endpoint.in_memory.fetch_sub(1, std::sync::atomic::Ordering::Relaxed);
    }
}

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Handler {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.gathered.try_send(());
        }
    }

    async fn on_connection_state_change(&self, state: RTCPeerConnectionState) {
        if matches!(state, RTCPeerConnectionState::Failed | RTCPeerConnectionState::Closed)
            && let Some(pc) = self.peer.get()
        {
            self.endpoint.forget(pc);
        }
    }

    async fn on_data_channel(&self, dc: Arc<dyn DataChannel>) {
        let label = dc.label().await.unwrap_or_default();
        {
            let mut c = self.channels.lock().expect("channels lock");
            match label.as_str() {
                CONTROL => c.control = Some(dc),
                REPLICATION => c.replication = Some(dc),
                COMMANDS => c.commands = Some(dc),
                _ => return, // unknown channels are ignored
            }
        }
        self.try_start();
    }
}

impl Handler {
    /// Starts driving the connection once the peer handle and all three channels exist (they
    /// may arrive in either order), exactly once.
    fn try_start(&self) {
        let Some(pc) = self.peer.get().and_then(std::sync::Weak::upgrade) else { return };
        let ready = {
            let mut c = self.channels.lock().expect("channels lock");
            // Taken, not cloned: a data channel refers back to its peer connection, which owns
            // this handler, so channels kept here would keep the closed connection alive.
            match (c.control.take(), c.replication.take(), c.commands.take()) {
                (Some(control), Some(replication), Some(commands)) if !c.started => {
                    c.started = true;
                    Some((control, replication, commands))
                }
                (control, replication, commands) => {
                    (c.control, c.replication, c.commands) = (control, replication, commands);
                    None
                }
            }
        };
        if let Some((control, replication, commands)) = ready {
            let address = self.address.lock().expect("address lock").take();
            self.endpoint.clone().start(pc.clone(), control, replication, commands, address);
        }
    }
}

/// One of a connection's byte counters, owned (for the shared stream and channel pumps).
pub(crate) struct Counter(Arc<ConnectionStats>, fn(&ConnectionStats) -> &std::sync::atomic::AtomicU64);

impl std::ops::Deref for Counter {
    type Target = std::sync::atomic::AtomicU64;
    fn deref(&self) -> &Self::Target {
        (self.1)(&self.0)
    }
}

pub(crate) fn bytes_in(stats: &Arc<ConnectionStats>) -> Counter {
    Counter(stats.clone(), |s| &s.bytes_in)
}

fn bytes_out(stats: &Arc<ConnectionStats>) -> Counter {
    Counter(stats.clone(), |s| &s.bytes_out)
}

impl WebRtcEndpoint {
    /// An endpoint serving `store`'s sessions through `hub`.
    pub fn new(
        store: Arc<Store>,
        hub: Arc<LiveHub>,
        obs: Arc<Observability>,
        config: WebRtcConfig,
        limits: Arc<crate::peers::AddressLimits>,
    ) -> Arc<Self> {
        let in_memory = std::sync::atomic::AtomicUsize::new(0);
        Arc::new(WebRtcEndpoint { store, hub, obs, config, peers: Mutex::new(Vec::new()), limits, in_memory })
    }

    /// Open peer connections.
    pub fn peers(&self) -> usize {
        self.peers.lock().expect("peers lock").len()
    }

    /// Peer connections still in memory, open or not (equal to [`WebRtcEndpoint::peers`] once
    /// closed ones are freed).
    pub fn peers_in_memory(&self) -> usize {
        self.in_memory.load(std::sync::atomic::Ordering::Relaxed)
    }

    /// Answers an SDP offer (JSON `{"type":"offer","sdp":...}`) from the signalling client at
    /// `from` with the SDP answer (JSON), ICE candidates included.
    pub async fn answer(self: &Arc<Self>, offer: &[u8], from: std::net::IpAddr) -> Result<Vec<u8>, WebRtcError> {
        let offer: RTCSessionDescription =
            serde_json::from_slice(offer).map_err(|e| WebRtcError::BadOffer(e.to_string()))?;
        let permit = self.limits.admit(from).map_err(|reason| {
            self.obs.address_refused("webrtc", reason);
            WebRtcError::AddressLimit(reason)
        })?;
        let offer = check_offer(offer)?;
        let peer = |e: &dyn std::fmt::Display| WebRtcError::Peer(e.to_string());
        let (gathered_tx, mut gathered) = mpsc::channel(1);
        self.in_memory.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let handler = Arc::new(Handler {
            endpoint: self.clone(),
            gathered: gathered_tx,
            channels: Mutex::new(Channels::default()),
            peer: std::sync::OnceLock::new(),
            address: Mutex::new(Some(permit)),
        });
        let config = RTCConfigurationBuilder::new()
            .with_ice_servers(
                self.config
                    .ice_servers
                    .iter()
                    .map(|u| RTCIceServer { urls: vec![u.clone()], ..Default::default() })
                    .collect(),
            )
            .build();
        // Loopback has no multicast: mDNS candidates are neither gathered nor resolved.
        let settings = SettingEngineBuilder::new()
            .with_multicast_dns_mode(rtc::ice::mdns::MulticastDnsMode::Disabled)
            .with_include_loopback_candidate(true)
            .build();
        let runtime = webrtc::runtime::default_runtime().ok_or_else(|| WebRtcError::Peer("no async runtime".into()))?;
        let pc = PeerConnectionBuilder::new()
            .with_configuration(config)
            .with_setting_engine(settings)
            .with_handler(handler.clone())
            .with_runtime(runtime)
            .with_udp_addrs(self.config.udp_addrs.clone())
            .with_data_channel_send_buffer_limit(theta_transport::SEND_BUFFER_BYTES)
            .build()
            .await
            .map_err(|e| peer(&e))?;
        let pc: Arc<dyn PeerConnection> = Arc::new(pc);
        let _ = handler.peer.set(Arc::downgrade(&pc));
        pc.set_remote_description(offer).await.map_err(|e| WebRtcError::BadOffer(e.to_string()))?;
        let answer = pc.create_answer(None).await.map_err(|e| peer(&e))?;
        pc.set_local_description(answer).await.map_err(|e| peer(&e))?;
        let _ = tokio::time::timeout(Duration::from_secs(5), gathered.recv()).await;
        let local = pc.local_description().await.ok_or_else(|| WebRtcError::Peer("no local description".into()))?;
        self.peers.lock().expect("peers lock").push(pc.clone());
        // Channels that arrived before the peer handle was set start now.
        handler.try_start();
        // A peer that never completes ICE (or never opens its channels) holds its address's
        // half-open slot, a UDP socket and the peer connection only until the handshake
        // timeout; then it is closed and counted like a QUIC handshake that timed out (code 6).
        let (me, waiting) = (self.clone(), Arc::downgrade(&handler));
        let limit = Duration::from_millis(self.config.handshake_timeout_ms);
        tokio::spawn(async move {
            tokio::time::sleep(limit).await;
            let Some(handler) = waiting.upgrade() else { return };
            {
                let mut c = handler.channels.lock().expect("channels lock");
                if c.started {
                    return;
                }
                // Channels that did open go with the connection (see `try_start`).
                *c = Channels { started: true, ..Channels::default() };
            }
            drop(handler.address.lock().expect("address lock").take());
            if let Some(pc) = handler.peer.get().and_then(std::sync::Weak::upgrade) {
                me.forget(&Arc::downgrade(&pc));
                let _ = pc.close().await;
            }
            me.obs.handshake_refused(6);
        });
        serde_json::to_vec(&local).map_err(|e| peer(&e))
    }

    /// Drops `pc` from the open peer connections.
    fn forget(&self, pc: &std::sync::Weak<dyn PeerConnection>) {
        self.peers.lock().expect("peers lock").retain(|p| !std::ptr::addr_eq(Arc::as_ptr(p), pc.as_ptr()));
    }

    /// Drives one connection once its three channels exist.
    fn start(
        self: Arc<Self>,
        pc: Arc<dyn PeerConnection>,
        control: Arc<dyn DataChannel>,
        replication: Arc<dyn DataChannel>,
        commands: Arc<dyn DataChannel>,
        address: Option<crate::peers::AddressPermit>,
    ) {
        let stats = self.obs.new_connection("webrtc");
        let (control_in_tx, control_in) = mpsc::channel(64);
        let (commands_in_tx, commands_in) = mpsc::channel(256);
        let (control_out, control_out_rx) = mpsc::channel(1_024);
        let (replication_out, replication_out_rx) = mpsc::channel(4);
        let tasks = vec![
            tokio::spawn(read_channel(control.clone(), control_in_tx, bytes_in(&stats))),
            tokio::spawn(read_channel(commands, commands_in_tx, bytes_in(&stats))),
            tokio::spawn(write_channel(control, control_out_rx, bytes_out(&stats))),
            tokio::spawn(drain_channel(replication.clone())),
            tokio::spawn(write_channel(replication, replication_out_rx, bytes_out(&stats))),
        ];
        let closer = pc.clone();
        let link = crate::link::Link {
            transport: "webrtc",
            control_in,
            commands_in,
            control_out,
            replication: Box::new(replication_out),
            stats,
            close: Arc::new(move |_code, _reason| {
                let pc = closer.clone();
                tokio::spawn(async move {
                    let _ = pc.close().await;
                });
            }),
            address,
        };
        let me = self.clone();
        tokio::spawn(async move {
            let timeout = me.config.handshake_timeout_ms;
            crate::link::drive(me.store.clone(), me.hub.clone(), me.obs.clone(), link, timeout).await;
            for t in tasks {
                t.abort();
            }
            let _ = pc.close().await;
            me.forget(&Arc::downgrade(&pc));
        });
    }

    /// Closes every peer connection.
    pub async fn shutdown(&self) {
        let peers: Vec<_> = std::mem::take(&mut *self.peers.lock().expect("peers lock"));
        for p in peers {
            let _ = p.close().await;
        }
    }
}

/// The signalling body of `POST /webrtc/offer`, checked before any peer connection exists: JSON
/// `{"type":"offer","sdp":...}` whose SDP parses. (The endpoint checks the JSON, then the
/// address's limits, then the SDP: an address at its limit is refused before any SDP work.)
pub fn parse_offer(body: &[u8]) -> Result<RTCSessionDescription, WebRtcError> {
    check_offer(serde_json::from_slice(body).map_err(|e| WebRtcError::BadOffer(e.to_string()))?)
}

/// A description that is an offer whose SDP parses (parsed and kept).
fn check_offer(offer: RTCSessionDescription) -> Result<RTCSessionDescription, WebRtcError> {
    let bad = |e: &dyn std::fmt::Display| WebRtcError::BadOffer(e.to_string());
    if offer.sdp_type != RTCSdpType::Offer {
        return Err(WebRtcError::BadOffer(format!("type is {:?}, not \"offer\"", offer.sdp_type.to_string())));
    }
    // Parsed eagerly (and kept): a description that is no offer or whose SDP does not parse
    // costs no peer connection.
    RTCSessionDescription::offer(offer.sdp).map_err(|e| bad(&e))
}
