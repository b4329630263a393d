//! The `theta.v1` gRPC services over a [`Store`].
//!
//! Appends go to the store's pipeline without blocking a runtime thread (its callback
//! completes a oneshot). Reads run on blocking threads and feed bounded channels, so a slow
//! client slows only its own stream and never grows server memory.

use std::collections::BTreeMap;
use std::pin::Pin;
use std::sync::Arc;

use theta_proto::v1 as pb;
use theta_proto::v1::{
    admin_service_server::AdminService, audit_service_server::AuditService, log_service_server::LogService,
    replay_service_server::ReplayService,
};
use theta_schemas::signing::{verify_command, verifying_key};
use theta_schemas::{Command, CommandKind, Envelope, LogEntry, Role, SessionId};
use theta_store::merkle::{self, Frontier};
use theta_store::{AppendError, Receipt, Store};
use tokio::sync::{mpsc, oneshot, watch};
use tokio_stream::Stream;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};

use crate::auth::{Access, Caller, Need, StreamSlot};
use crate::convert;
use crate::history::project;
use crate::metrics::Observability;
use crate::status::{append_code, append_status, bad_field, history_status, read_status};

/// Largest ReadLog batch.
pub const MAX_BATCH_ENTRIES: usize = 8_192;
/// A batch is sent early once its entries hold this many bytes (gRPC clients' default
/// receive limit is 4 MiB).
pub const MAX_BATCH_BYTES: usize = 2 * 1024 * 1024;
/// Batches buffered per streaming call before the producer waits for the client.
const STREAM_BUFFER_BATCHES: usize = 4;
/// Appends of one AppendStream in flight before reading more requests.
const STREAM_IN_FLIGHT: usize = 256;

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send + 'static>>;

/// Shared state of every service.
#[derive(Clone)]
pub struct Gateway {
    pub(crate) store: Arc<Store>,
    heads: watch::Receiver<u64>,
    pub(crate) obs: Arc<Observability>,
    /// Becomes true when the server shuts down: long-lived streams end.
    closing: watch::Receiver<bool>,
    /// How long a subscriber may leave its buffer full before it is told to resume later.
    slow_subscriber: std::time::Duration,
    /// Credentials, roles and per-key read limits.
    pub(crate) access: Arc<Access>,
}

impl Gateway {
    /// Services over `store`; registers the store's commit listener.
    pub fn new(
        store: Arc<Store>,
        obs: Arc<Observability>,
        closing: watch::Receiver<bool>,
        slow_subscriber: std::time::Duration,
        access: Arc<Access>,
    ) -> Gateway {
        let (tx, rx) = watch::channel(0u64);
        store.add_commit_listener(move |_| {
            tx.send_modify(|n| *n += 1);
        });
        Gateway { store, heads: rx, obs, closing, slow_subscriber, access }
    }

    /// Checks the caller of `method` (see [`crate::auth`]).
    fn authorize<T>(
        &self,
        req: &Request<T>,
        method: &str,
        session: Option<&SessionId>,
        need: Need,
        stream: bool,
    ) -> Result<Caller, Status> {
        self.access.authorize(req.metadata(), method, session, need, stream, &self.store)
    }

    fn submit(&self, envelope: Vec<u8>) -> oneshot::Receiver<Result<Receipt, AppendError>> {
        let (tx, rx) = oneshot::channel();
        self.store.submit(envelope, move |r| {
            let _ = tx.send(r);
        });
        rx
    }

    async fn append_one(&self, envelope: Vec<u8>) -> Result<Receipt, AppendError> {
        self.submit(envelope).await.unwrap_or(Err(AppendError::ShuttingDown))
    }
}

/// Smallest `ReadState.max_chunk_bytes` other than 0.
pub const MIN_CHUNK_BYTES: usize = 1_024;

/// A range `from..=to` of a log whose head is `head`: both ends must be at or below the head.
fn check_range(from: u64, to: u64, head: u64) -> Result<(), Status> {
    for (what, v) in [("from_seq", from), ("to_seq", to)] {
        if v > head {
            return Err(read_status(&theta_store::ReadError::OutOfRange { what, value: v, head }));
        }
    }
    Ok(())
}

fn batch_size(requested: u32) -> usize {
    match requested {
        0 => 1_024,
        n => (n as usize).min(MAX_BATCH_ENTRIES),
    }
}

/// Keeps a key's stream slot until the stream is dropped.
fn holding<T: Send + 'static>(stream: BoxStream<T>, slot: Option<StreamSlot>) -> BoxStream<T> {
    use tokio_stream::StreamExt;
    Box::pin(stream.map(move |item| {
        let _held = &slot;
        item
    }))
}

/// Runs `produce` on a blocking thread, streaming what it sends.
fn blocking_stream<T: Send + 'static>(
    produce: impl FnOnce(&mpsc::Sender<Result<T, Status>>) -> Result<(), Status> + Send + 'static,
) -> BoxStream<T> {
    let (tx, rx) = mpsc::channel(STREAM_BUFFER_BATCHES);
    tokio::task::spawn_blocking(move || {
        if let Err(status) = produce(&tx) {
            let _ = tx.blocking_send(Err(status));
        }
    });
    Box::pin(ReceiverStream::new(rx))
}

/// Sends entries in batches; stops quietly when the client has gone.
fn send_entries(
    tx: &mpsc::Sender<Result<pb::EntryBatch, Status>>,
    entries: impl Iterator<Item = Result<LogEntry, theta_store::ReadError>>,
    batch: usize,
    keep: impl Fn(&pb::Entry) -> bool,
) -> Result<u64, Status> {
    send_entries_with(tx, entries, batch, keep, convert::entry)
}

fn send_entries_with(
    tx: &mpsc::Sender<Result<pb::EntryBatch, Status>>,
    entries: impl Iterator<Item = Result<LogEntry, theta_store::ReadError>>,
    batch: usize,
    keep: impl Fn(&pb::Entry) -> bool,
    convert: fn(LogEntry) -> pb::Entry,
) -> Result<u64, Status> {
    let mut out = Vec::with_capacity(batch);
    let mut bytes = 0;
    let mut last = 0;
    for e in entries {
        let e = convert(e.map_err(|e| read_status(&e))?);
        last = e.seq;
        if !keep(&e) {
            continue;
        }
        // The entry's size inside the EntryBatch message (field tag and length prefix included).
        let len = prost::Message::encoded_len(&e);
        let size = 1 + prost::encoding::encoded_len_varint(len as u64) + len;
        if !out.is_empty() && (out.len() == batch || bytes + size > MAX_BATCH_BYTES) {
            bytes = 0;
            if tx.blocking_send(Ok(pb::EntryBatch { entries: std::mem::take(&mut out) })).is_err() {
                return Ok(last);
            }
        }
        bytes += size;
        out.push(e);
    }
    if !out.is_empty() {
        let _ = tx.blocking_send(Ok(pb::EntryBatch { entries: out }));
    }
    Ok(last)
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Status> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(format!("worker failed: {e}")))?
}

mod admin;
mod audit;
mod log;
mod replay;

pub use audit::{author_summary, verify_log};
