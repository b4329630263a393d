//! The live protocol's byte transport, shared by both ends: framed payloads read from QUIC
//! streams and WebRTC data channels into channels, and written back out, with byte counters.
//! The protocol itself (framing rules, handshake, fan-out, mirror) is `theta-live`, which has
//! no I/O; this crate is the thin tokio glue the gateway and the client both use.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use bytes::BytesMut;
use theta_live::frame::{self, Decoder, FrameError};
use theta_schemas::MAX_ENVELOPE_BYTES;
use tokio::sync::mpsc;
use webrtc::data_channel::{DataChannel, DataChannelEvent};

/// Data channel labels: the control channel (handshake, receipts, heartbeats, stats, interest).
pub const CONTROL: &str = "control";
/// The server → client channel with snapshots and deltas.
pub const REPLICATION: &str = "replication";
/// The client → server channel with signed commands.
pub const COMMANDS: &str = "commands";
/// Bytes a data channel may hold unacknowledged before `send` waits (both ends). Without a
/// limit a slow peer's backlog would pile up inside SCTP, unseen; with it, it stays in the
/// viewer's queue, where the server notices it and resyncs the viewer with a snapshot.
pub const SEND_BUFFER_BYTES: usize = 256 * 1024;
/// Largest batch of frames sent as one data channel message, bytes (a frame larger than this
/// still goes alone).
const BATCH_BYTES: usize = 64 * 1024;

/// A received frame payload, or the framing error that ended its channel.
pub type Received = Result<Vec<u8>, FrameError>;

/// Feeds one received chunk through the framing decoder into `tx`; false when the channel
/// must stop (a framing error, passed on, or a closed receiver).
pub async fn deliver(decoder: &mut Decoder, chunk: &[u8], tx: &mpsc::Sender<Received>, bytes: &AtomicU64) -> bool {
    bytes.fetch_add(chunk.len() as u64, Relaxed);
    match decoder.push(chunk) {
        Ok(frames) => {
            for f in frames {
                if tx.send(Ok(f)).await.is_err() {
                    return false;
                }
            }
            true
        }
        Err(e) => {
            let _ = tx.send(Err(e)).await;
            false
        }
    }
}

/// Forwards a QUIC stream's bytes through the framing decoder into `tx`, counting bytes.
pub async fn read_quic(
    mut stream: quinn::RecvStream,
    tx: mpsc::Sender<Received>,
    bytes: impl std::ops::Deref<Target = AtomicU64>,
) {
    let mut decoder = Decoder::new(MAX_ENVELOPE_BYTES);
    while let Ok(Some(chunk)) = stream.read_chunk(MAX_ENVELOPE_BYTES, true).await {
        if !deliver(&mut decoder, &chunk.bytes, &tx, &bytes).await {
            return;
        }
    }
}

/// Forwards a data channel's messages through the framing decoder into `tx`, counting bytes.
pub async fn read_channel(
    dc: Arc<dyn DataChannel>,
    tx: mpsc::Sender<Received>,
    bytes: impl std::ops::Deref<Target = AtomicU64>,
) {
    let mut decoder = Decoder::new(MAX_ENVELOPE_BYTES);
    while let Some(event) = dc.poll().await {
        match event {
            DataChannelEvent::OnMessage(m) if !deliver(&mut decoder, &m.data, &tx, &bytes).await => return,
            DataChannelEvent::OnClose => return,
            _ => {}
        }
    }
}

/// Consumes the events of a channel this end only writes to (buffered-amount and state events).
/// A connection delivers the events of all its channels in one stream: events left unread on
/// one channel fill its queue and hold back the messages of the others.
pub async fn drain_channel(dc: Arc<dyn DataChannel>) {
    while let Some(event) = dc.poll().await {
        if matches!(event, DataChannelEvent::OnClose) {
            return;
        }
    }
}

/// Writes payloads framed on a data channel, several frames per message when they queue up.
pub async fn write_channel(
    dc: Arc<dyn DataChannel>,
    mut rx: mpsc::Receiver<Vec<u8>>,
    bytes: impl std::ops::Deref<Target = AtomicU64>,
) {
    // Frames waiting together travel as one message (up to 64 KiB bytes): a data channel
    // message costs far more than its bytes.
    while let Some(first) = rx.recv().await {
        let mut batch = BytesMut::from(&frame::encode(&first)[..]);
        while batch.len() < BATCH_BYTES {
            match rx.try_recv() {
                Ok(p) => batch.extend_from_slice(&frame::encode(&p)),
                Err(_) => break,
            }
        }
        let n = batch.len() as u64;
        if dc.send(batch).await.is_err() {
            return;
        }
        bytes.fetch_add(n, Relaxed);
    }
}
