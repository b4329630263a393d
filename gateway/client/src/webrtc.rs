//! The client over WebRTC data channels (crate `webrtc` 0.21): the same frames and handshake as
//! over QUIC, on three reliable, ordered channels named `control`, `replication` and
//! `commands`. Signalling is one HTTP POST of the SDP offer (ICE gathered first, no trickle) to
//! the gateway, answered with the SDP answer (docs/PROTOCOL.md, "WebRTC").

use std::sync::Arc;
use std::sync::atomic::AtomicU64;
use std::time::Duration;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::mpsc;
use webrtc::data_channel::{DataChannel, DataChannelEvent};
use webrtc::peer_connection::{
    PeerConnection, PeerConnectionBuilder, PeerConnectionEventHandler, RTCIceGatheringState, RTCSessionDescription,
};

use crate::quic::{ClientError, Link, Options};

pub use theta_transport::{
    COMMANDS, CONTROL, REPLICATION, SEND_BUFFER_BYTES, drain_channel, read_channel, write_channel,
};

/// Largest signalling body accepted, bytes.
pub const MAX_SDP_BYTES: usize = 64 * 1024;

fn err(e: impl std::fmt::Display) -> ClientError {
    ClientError::Connection(format!("webrtc: {e}"))
}

struct Gathered(mpsc::Sender<()>);

#[async_trait::async_trait]
impl PeerConnectionEventHandler for Gathered {
    async fn on_ice_gathering_state_change(&self, state: RTCIceGatheringState) {
        if state == RTCIceGatheringState::Complete {
            let _ = self.0.try_send(());
        }
    }
}

/// The UDP address to gather on: loopback for a loopback server (loopback has no multicast and
/// browsers' peers must see a loopback candidate), any interface otherwise.
pub fn udp_bind_for(host: &str) -> &'static str {
    if host == "localhost" || host.starts_with("127.") || host == "[::1]" { "127.0.0.1:0" } else { "0.0.0.0:0" }
}

/// Posts `body` to an `http://host:port/path` URL; returns the response body of a 200.
pub async fn http_post(url: &str, body: &[u8]) -> Result<Vec<u8>, ClientError> {
    let rest = url.strip_prefix("http://").ok_or_else(|| err(format!("signalling URL {url:?} must be http://")))?;
    let (authority, path) = match rest.find('/') {
        Some(i) => (&rest[..i], &rest[i..]),
        None => (rest, "/"),
    };
    let mut stream = tokio::net::TcpStream::connect(authority).await.map_err(err)?;
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: {authority}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.map_err(err)?;
    stream.write_all(body).await.map_err(err)?;
    let mut response = Vec::new();
    stream.take(MAX_SDP_BYTES as u64 + 4_096).read_to_end(&mut response).await.map_err(err)?;
    let split = response.windows(4).position(|w| w == b"\r\n\r\n").ok_or_else(|| err("malformed HTTP response"))?;
    let status = String::from_utf8_lossy(&response[..split]);
    let body = response[split + 4..].to_vec();
    if !status.starts_with("HTTP/1.1 200") {
        let line = status.lines().next().unwrap_or("").to_string();
        return Err(err(format!("signalling refused: {line}: {}", String::from_utf8_lossy(&body))));
    }
    Ok(body)
}

/// A peer connection with the three channels open and nothing else (for tools and tests that
/// speak the protocol themselves).
pub struct RawPeer {
    /// The peer connection.
    pub pc: Arc<dyn PeerConnection>,
    /// The control channel (open).
    pub control: Arc<dyn DataChannel>,
    /// The replication channel.
    pub replication: Arc<dyn DataChannel>,
    /// The command channel.
    pub commands: Arc<dyn DataChannel>,
}

/// Connects the three channels through the signalling URL, and waits until they open.
pub async fn connect_raw(url: &str) -> Result<RawPeer, ClientError> {
    let host = url.trim_start_matches("http://").split([':', '/']).next().unwrap_or("").to_string();
    let url = url.to_string();
    let runtime = webrtc::runtime::default_runtime().ok_or_else(|| err("no async runtime"))?;
    let (gathered_tx, mut gathered) = mpsc::channel(1);
    let pc = PeerConnectionBuilder::new()
        .with_handler(Arc::new(Gathered(gathered_tx)))
        .with_runtime(runtime)
        .with_udp_addrs(vec![udp_bind_for(&host).to_string()])
        .with_data_channel_send_buffer_limit(crate::webrtc::SEND_BUFFER_BYTES)
        .build()
        .await
        .map_err(err)?;
    let pc: Arc<dyn PeerConnection> = Arc::new(pc);
    let control = pc.create_data_channel(CONTROL, None).await.map_err(err)?;
    let replication = pc.create_data_channel(REPLICATION, None).await.map_err(err)?;
    let commands = pc.create_data_channel(COMMANDS, None).await.map_err(err)?;
    let offer = pc.create_offer(None).await.map_err(err)?;
    pc.set_local_description(offer).await.map_err(err)?;
    let _ = tokio::time::timeout(Duration::from_secs(5), gathered.recv()).await;
    let local = pc.local_description().await.ok_or_else(|| err("no local description"))?;
    let body = serde_json::to_vec(&local).map_err(err)?;
    let answer = http_post(&url, &body).await?;
    let answer: RTCSessionDescription = serde_json::from_slice(&answer).map_err(err)?;
    pc.set_remote_description(answer).await.map_err(err)?;
    // The control channel opening means the connection is up.
    let mut opened = false;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    while !opened {
        match tokio::time::timeout_at(deadline, control.poll()).await {
            Ok(Some(DataChannelEvent::OnOpen)) => opened = true,
            Ok(Some(DataChannelEvent::OnClose)) | Ok(None) => return Err(err("control channel closed before opening")),
            Ok(Some(_)) => {}
            Err(_) => {
                let _ = pc.close().await;
                return Err(err("the data channels did not open within 10 s"));
            }
        }
    }
    Ok(RawPeer { pc, control, replication, commands })
}

/// Connects over WebRTC through the signalling URL in `o.webrtc_signal`.
pub(crate) async fn open(o: &Options) -> Result<Link, ClientError> {
    let url = o.webrtc_signal.clone().ok_or_else(|| err("no signalling URL (webrtc_signal)"))?;
    let RawPeer { pc, control, replication, commands } = connect_raw(&url).await?;
    let (bytes_in, bytes_out) = (Arc::new(AtomicU64::new(0)), Arc::new(AtomicU64::new(0)));
    let (control_in_tx, control_in) = mpsc::channel(256);
    let (replication_in_tx, replication_in) = mpsc::channel(256);
    let (control_out, control_out_rx) = mpsc::channel(64);
    let (commands_out, commands_out_rx) = mpsc::channel(256);
    let tasks = vec![
        tokio::spawn(read_channel(control.clone(), control_in_tx, bytes_in.clone())),
        tokio::spawn(read_channel(replication, replication_in_tx, bytes_in.clone())),
        tokio::spawn(write_channel(control, control_out_rx, bytes_out.clone())),
        tokio::spawn(drain_channel(commands.clone())),
        tokio::spawn(write_channel(commands, commands_out_rx, bytes_out.clone())),
    ];
    Ok(Link {
        transport: "webrtc",
        control_in,
        replication_in,
        control_out,
        commands_out,
        bytes_in,
        bytes_out,
        close: Box::new(move || {
            let pc = pc.clone();
            tokio::spawn(async move {
                let _ = pc.close().await;
            });
        }),
        tasks,
    })
}
