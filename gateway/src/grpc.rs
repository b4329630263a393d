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

#[tonic::async_trait]
impl LogService for Gateway {
    async fn create_session(&self, req: Request<pb::AppendRequest>) -> Result<Response<pb::AppendResponse>, Status> {
        let _t = self.obs.call("CreateSession");
        let envelope = req.into_inner().envelope;
        match Envelope::open(&envelope) {
            Ok((_, body)) if body.command.kind() != CommandKind::CreateSession => {
                return Err(bad_field(
                    "envelope",
                    &format!("CreateSession expects a CreateSession command, got {}", body.command.kind()),
                ));
            }
            _ => {}
        }
        let r = self.append_one(envelope).await.map_err(|e| append_status(&e))?;
        Ok(Response::new(pb::AppendResponse { receipt: Some(convert::receipt(&r)) }))
    }

    async fn append(&self, req: Request<pb::AppendRequest>) -> Result<Response<pb::AppendResponse>, Status> {
        let _t = self.obs.call("Append");
        let r = self.append_one(req.into_inner().envelope).await.map_err(|e| append_status(&e))?;
        Ok(Response::new(pb::AppendResponse { receipt: Some(convert::receipt(&r)) }))
    }

    type AppendStreamStream = BoxStream<pb::AppendStreamResponse>;

    async fn append_stream(
        &self,
        req: Request<Streaming<pb::AppendRequest>>,
    ) -> Result<Response<Self::AppendStreamStream>, Status> {
        let _t = self.obs.call("AppendStream");
        let mut incoming = req.into_inner();
        let (pending_tx, mut pending_rx) =
            mpsc::channel::<oneshot::Receiver<Result<Receipt, AppendError>>>(STREAM_IN_FLIGHT);
        let (out_tx, out_rx) = mpsc::channel(STREAM_IN_FLIGHT);
        let gw = self.clone();
        let err_tx = out_tx.clone();
        // Reader: submit each request as it arrives (pipelined, bounded by STREAM_IN_FLIGHT).
        tokio::spawn(async move {
            loop {
                match incoming.message().await {
                    Ok(Some(m)) => {
                        if pending_tx.send(gw.submit(m.envelope)).await.is_err() {
                            break;
                        }
                    }
                    Ok(None) => break,
                    Err(status) => {
                        let _ = err_tx.send(Err(status)).await;
                        break;
                    }
                }
            }
        });
        // Writer: answer in request order.
        tokio::spawn(async move {
            let mut index = 0u64;
            while let Some(rx) = pending_rx.recv().await {
                let result = match rx.await.unwrap_or(Err(AppendError::ShuttingDown)) {
                    Ok(r) => pb::append_stream_response::Result::Receipt(convert::receipt(&r)),
                    Err(e) => pb::append_stream_response::Result::Rejection(pb::Rejection {
                        grpc_code: append_code(&e) as u32,
                        reason_code: e.code() as u32,
                        counter: e.code().counter().to_string(),
                        message: e.to_string(),
                    }),
                };
                if out_tx.send(Ok(pb::AppendStreamResponse { index, result: Some(result) })).await.is_err() {
                    break;
                }
                index += 1;
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(out_rx))))
    }

    async fn head(&self, req: Request<pb::HeadRequest>) -> Result<Response<pb::HeadResponse>, Status> {
        let _t = self.obs.call("Head");
        let s = convert::session(&req.get_ref().session)?;
        self.authorize(&req, "/theta.v1.LogService/Head", Some(&s), Need::Member, false)?;
        let h = self.store.head(&s).map_err(|e| read_status(&e))?;
        Ok(Response::new(convert::head(&h)))
    }
}

#[tonic::async_trait]
impl ReplayService for Gateway {
    type ReadLogStream = BoxStream<pb::EntryBatch>;

    async fn read_log(&self, req: Request<pb::ReadLogRequest>) -> Result<Response<Self::ReadLogStream>, Status> {
        let _t = self.obs.call("ReadLog");
        let s = convert::session(&req.get_ref().session)?;
        let caller = self.authorize(&req, "/theta.v1.ReplayService/ReadLog", Some(&s), Need::Member, true)?;
        let r = req.into_inner();
        let head = self.store.head(&s).map_err(|e| read_status(&e))?.seq;
        let to = if r.to_seq == 0 { head } else { r.to_seq };
        check_range(r.from_seq, to, head)?;
        let author = if r.author.is_empty() { None } else { Some(convert::author(&r.author)?) };
        let mut kinds = Vec::new();
        for k in &r.kinds {
            kinds
                .push(CommandKind::parse(k).ok_or_else(|| bad_field("kinds", &format!("unknown command kind {k:?}")))?);
        }
        let kind_names: Vec<&'static str> = kinds.iter().map(|k| k.name()).collect();
        let (from, entity, batch) = (r.from_seq.max(1), r.entity, batch_size(r.batch_size));
        let bare = r.envelope_only && author.is_none() && entity == 0 && kind_names.is_empty();
        let store = self.store.clone();
        Ok(Response::new(holding(
            blocking_stream(move |tx| {
                let keep = |e: &pb::Entry| {
                    (entity == 0 || e.entity == entity)
                        && (kind_names.is_empty() || kind_names.contains(&e.kind.as_str()))
                };
                let entries = match (author, entity) {
                    (Some(a), _) => store.read_by_author(&s, &a, from, to),
                    (None, e) if e != 0 => store.read_by_entity(&s, e, from, to),
                    _ => store.read_range(&s, from, to),
                }
                .map_err(|e| read_status(&e))?;
                let convert = if bare { convert::bare_entry } else { convert::entry };
                send_entries_with(tx, entries, batch, keep, convert).map(drop)
            }),
            caller.into_slot(),
        )))
    }

    type ReadStateStream = BoxStream<pb::StateChunk>;

    async fn read_state(&self, req: Request<pb::ReadStateRequest>) -> Result<Response<Self::ReadStateStream>, Status> {
        let _t = self.obs.call("ReadState");
        let s = convert::session(&req.get_ref().session)?;
        let caller = self.authorize(&req, "/theta.v1.ReplayService/ReadState", Some(&s), Need::Member, true)?;
        let r = req.into_inner();
        let head = self.store.head(&s).map_err(|e| read_status(&e))?.seq;
        let at = if r.at_seq == 0 { head } else { r.at_seq };
        let max = match r.max_chunk_bytes as usize {
            0 => theta_projector::DEFAULT_CHUNK_BYTES,
            n if (MIN_CHUNK_BYTES..=theta_schemas::MAX_ENVELOPE_BYTES).contains(&n) => n,
            n => {
                return Err(bad_field(
                    "max_chunk_bytes",
                    &format!("{n} is outside 0 (default) or {MIN_CHUNK_BYTES}..={}", theta_schemas::MAX_ENVELOPE_BYTES),
                ));
            }
        };
        let store = self.store.clone();
        Ok(Response::new(holding(
            blocking_stream(move |tx| {
                let opened = project(&store, &s, at).map_err(|e| history_status(&e))?;
                for chunk in opened.projection.snapshot(max, None) {
                    let msg = pb::StateChunk {
                        seq: chunk.seq,
                        state_hash: chunk.state_hash.to_vec(),
                        chunk_index: chunk.chunk_index,
                        chunk_count: chunk.chunk_count,
                        frame: theta_schemas::Message::SnapshotChunk(chunk).encode(),
                    };
                    if tx.blocking_send(Ok(msg)).is_err() {
                        break;
                    }
                }
                Ok(())
            }),
            caller.into_slot(),
        )))
    }

    type SubscribeStream = BoxStream<pb::EntryBatch>;

    async fn subscribe(&self, req: Request<pb::SubscribeRequest>) -> Result<Response<Self::SubscribeStream>, Status> {
        let _t = self.obs.call("Subscribe");
        let s = convert::session(&req.get_ref().session)?;
        let caller = self.authorize(&req, "/theta.v1.ReplayService/Subscribe", Some(&s), Need::Member, true)?;
        let r = req.into_inner();
        self.store.head(&s).map_err(|e| read_status(&e))?;
        // One slot more than the data may use: the "fell behind" status always fits.
        let (tx, rx) = mpsc::channel(STREAM_BUFFER_BATCHES + 1);
        let store = self.store.clone();
        let mut heads = self.heads.clone();
        let mut closing = self.closing.clone();
        let batch = batch_size(r.batch_size) as u64;
        let patience = self.slow_subscriber;
        let obs = self.obs.clone();
        let mut next = r.from_seq.max(1);
        tokio::spawn(async move {
            loop {
                heads.borrow_and_update();
                let head = match store.head(&s) {
                    Ok(h) => h.seq,
                    Err(e) => {
                        let _ = tx.send(Err(read_status(&e))).await;
                        return;
                    }
                };
                if head >= next {
                    // Read one batch on a blocking thread, then wait for the client to make room.
                    let (store2, from, to) = (store.clone(), next, head.min(next + batch - 1));
                    let read = tokio::task::spawn_blocking(move || -> Result<Vec<pb::Entry>, Status> {
                        let entries = store2.read_range(&s, from, to).map_err(|e| read_status(&e))?;
                        entries.map(|e| e.map(convert::entry).map_err(|e| read_status(&e))).collect()
                    })
                    .await;
                    let entries = match read {
                        Ok(Ok(entries)) => entries,
                        Ok(Err(status)) => {
                            let _ = tx.send(Err(status)).await;
                            return;
                        }
                        Err(_) => return,
                    };
                    // Wait, woken by the client's reads, until two slots are free: the batch
                    // takes one and the "fell behind" status always has the last.
                    match tokio::time::timeout(patience, tx.reserve_many(2)).await {
                        Ok(Ok(mut permits)) => {
                            permits.next().expect("two permits").send(Ok(pb::EntryBatch { entries }));
                            next = to + 1;
                        }
                        Ok(Err(_)) => return,
                        Err(_) => {
                            // The client stopped reading: tell it where to resume, and let go.
                            obs.subscriber_dropped();
                            let _ = tx.try_send(Err(Status::resource_exhausted(format!(
                                "subscriber fell behind (not reading for {} ms); resume with from_seq={next}",
                                patience.as_millis()
                            ))));
                            return;
                        }
                    }
                    continue;
                }
                if *closing.borrow() {
                    let _ = tx
                        .send(Err(Status::unavailable("the server is shutting down; resume from the last seq")))
                        .await;
                    return;
                }
                tokio::select! {
                    changed = heads.changed() => if changed.is_err() { return },
                    _ = closing.changed() => {}
                    _ = tx.closed() => return,
                }
            }
        });
        Ok(Response::new(holding(Box::pin(ReceiverStream::new(rx)), caller.into_slot())))
    }

    type EntityHistoryStream = BoxStream<pb::EntryBatch>;

    async fn entity_history(
        &self,
        req: Request<pb::EntityHistoryRequest>,
    ) -> Result<Response<Self::EntityHistoryStream>, Status> {
        let _t = self.obs.call("EntityHistory");
        let s = convert::session(&req.get_ref().session)?;
        let caller = self.authorize(&req, "/theta.v1.ReplayService/EntityHistory", Some(&s), Need::Member, true)?;
        let r = req.into_inner();
        let head = self.store.head(&s).map_err(|e| read_status(&e))?.seq;
        let to = if r.to_seq == 0 { head } else { r.to_seq };
        check_range(r.from_seq, to, head)?;
        let store = self.store.clone();
        Ok(Response::new(holding(
            blocking_stream(move |tx| {
                let entries = store.read_by_entity(&s, r.entity, r.from_seq.max(1), to).map_err(|e| read_status(&e))?;
                send_entries(tx, entries, 1_024, |_| true).map(drop)
            }),
            caller.into_slot(),
        )))
    }
}

/// Re-verifies entries `from..=to`: signatures, chain links and hashes, and the tree.
pub fn verify_log(store: &Store, s: &SessionId, from: u64, to: u64) -> Result<pb::VerifyLogResponse, Status> {
    let head = store.head(s).map_err(|e| read_status(&e))?;
    let to = if to == 0 { head.seq } else { to };
    if to > head.seq {
        return Err(Status::out_of_range(format!("to_seq {to} is beyond the head {}", head.seq)));
    }
    let from = from.max(1);
    let mut report = pb::VerifyLogResponse {
        signatures_ok: true,
        chain_ok: true,
        tree_ok: true,
        tree_size: to,
        tree_root: store.tree_root(s, to).map_err(|e| read_status(&e))?.to_vec(),
        ..Default::default()
    };
    let bad = |report: &mut pb::VerifyLogResponse, seq: u64, why: String| {
        if report.first_bad_seq == 0 {
            report.first_bad_seq = seq;
            report.first_bad_reason = why;
        }
    };
    let mut prev =
        if from == 1 { [0u8; 32] } else { store.entry(s, from - 1).map_err(|e| read_status(&e))?.entry_hash };
    let mut frontier = (from == 1).then(Frontier::new);
    for e in store.read_range(s, from, to).map_err(|e| read_status(&e))? {
        let e = e.map_err(|e| read_status(&e))?;
        report.entries_checked += 1;
        let recomputed = merkle::entry_hash(s, e.seq, e.receipt_time_ms, &e.prev_hash, &e.envelope);
        if e.prev_hash != prev || recomputed != e.entry_hash {
            report.chain_ok = false;
            bad(&mut report, e.seq, "hash chain broken".into());
        }
        match Envelope::open(&e.envelope) {
            Ok((env, body)) => {
                let ok = verifying_key(&body.author).and_then(|k| verify_command(&k, &env.body, &env.signature));
                if let Err(err) = ok {
                    report.signatures_ok = false;
                    bad(&mut report, e.seq, format!("signature: {err}"));
                }
            }
            Err(err) => {
                report.signatures_ok = false;
                bad(&mut report, e.seq, format!("envelope: {err}"));
            }
        }
        if let Some(f) = frontier.as_mut() {
            f.push(merkle::leaf_hash(&e.entry_hash), |_, _, _| {});
        }
        prev = e.entry_hash;
    }
    match frontier {
        Some(f) if f.root()[..] != report.tree_root[..] => {
            report.tree_ok = false;
            bad(&mut report, to, "Merkle root differs from the entries".into());
        }
        Some(_) => {}
        None => {
            // Not from the start: prove the first and last entries against the root instead.
            for seq in [from, to] {
                let p = store.inclusion_proof(s, seq, to).map_err(|e| read_status(&e))?;
                let leaf = merkle::leaf_hash(&store.entry(s, seq).map_err(|e| read_status(&e))?.entry_hash);
                if leaf != p.leaf_hash || !p.verify() {
                    report.tree_ok = false;
                    bad(&mut report, seq, "inclusion proof fails".into());
                }
            }
        }
    }
    Ok(report)
}

/// Per-author activity and grants, from the whole log.
pub fn author_summary(store: &Store, s: &SessionId) -> Result<pb::AuthorSummaryResponse, Status> {
    #[derive(Default)]
    struct Acc {
        role: Option<(Role, u64)>,
        entries: u64,
        first: u64,
        last: u64,
        kinds: BTreeMap<&'static str, u64>,
    }
    let mut by: BTreeMap<theta_schemas::AuthorKey, Acc> = BTreeMap::new();
    for e in store.read_range(s, 1, u64::MAX).map_err(|e| read_status(&e))? {
        let e = e.map_err(|e| read_status(&e))?;
        let Ok((_, body)) = Envelope::open(&e.envelope) else { continue };
        let a = by.entry(body.author).or_default();
        a.entries += 1;
        if a.first == 0 {
            a.first = e.seq;
        }
        a.last = e.seq;
        *a.kinds.entry(body.command.kind().name()).or_default() += 1;
        match body.command {
            Command::CreateSession { .. } => a.role = Some((Role::Owner, e.seq)),
            Command::GrantRole { key, role } => by.entry(key).or_default().role = Some((role, e.seq)),
            Command::RevokeRole { key } => by.entry(key).or_default().role = None,
            _ => {}
        }
    }
    Ok(pb::AuthorSummaryResponse {
        authors: by
            .into_iter()
            .map(|(k, a)| pb::AuthorActivity {
                author: k.0.to_vec(),
                role: a.role.map_or(Role::None, |r| r.0).name().to_string(),
                granted_at_seq: a.role.map_or(0, |r| r.1),
                entries: a.entries,
                first_seq: a.first,
                last_seq: a.last,
                kinds: a.kinds.into_iter().map(|(k, n)| pb::KindCount { kind: k.to_string(), count: n }).collect(),
            })
            .collect(),
    })
}

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> Result<T, Status> + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|e| Status::internal(format!("worker failed: {e}")))?
}

#[tonic::async_trait]
impl AuditService for Gateway {
    async fn verify_log(&self, req: Request<pb::VerifyLogRequest>) -> Result<Response<pb::VerifyLogResponse>, Status> {
        let _t = self.obs.call("VerifyLog");
        let s = convert::session(&req.get_ref().session)?;
        self.authorize(&req, "/theta.v1.AuditService/VerifyLog", Some(&s), Need::Auditor, false)?;
        let r = req.into_inner();
        let store = self.store.clone();
        Ok(Response::new(blocking(move || verify_log(&store, &s, r.from_seq, r.to_seq)).await?))
    }

    async fn inclusion_proof(
        &self,
        req: Request<pb::InclusionProofRequest>,
    ) -> Result<Response<pb::InclusionProofResponse>, Status> {
        let _t = self.obs.call("InclusionProof");
        let s = convert::session(&req.get_ref().session)?;
        self.authorize(&req, "/theta.v1.AuditService/InclusionProof", Some(&s), Need::Auditor, false)?;
        let r = req.into_inner();
        let size = if r.tree_size == 0 { self.store.head(&s).map_err(|e| read_status(&e))?.seq } else { r.tree_size };
        let p = self.store.inclusion_proof(&s, r.seq, size).map_err(|e| read_status(&e))?;
        Ok(Response::new(pb::InclusionProofResponse {
            seq: p.seq,
            leaf_index: p.seq - 1,
            tree_size: p.tree_size,
            leaf_hash: p.leaf_hash.to_vec(),
            path: p.path.iter().map(|h| h.to_vec()).collect(),
            root: p.root.to_vec(),
        }))
    }

    async fn consistency_proof(
        &self,
        req: Request<pb::ConsistencyProofRequest>,
    ) -> Result<Response<pb::ConsistencyProofResponse>, Status> {
        let _t = self.obs.call("ConsistencyProof");
        let s = convert::session(&req.get_ref().session)?;
        self.authorize(&req, "/theta.v1.AuditService/ConsistencyProof", Some(&s), Need::Auditor, false)?;
        let r = req.into_inner();
        let new = if r.new_size == 0 { self.store.head(&s).map_err(|e| read_status(&e))?.seq } else { r.new_size };
        let proof = self.store.consistency_proof(&s, r.old_size, new).map_err(|e| read_status(&e))?;
        Ok(Response::new(pb::ConsistencyProofResponse {
            old_size: r.old_size,
            new_size: new,
            old_root: self.store.tree_root(&s, r.old_size).map_err(|e| read_status(&e))?.to_vec(),
            new_root: self.store.tree_root(&s, new).map_err(|e| read_status(&e))?.to_vec(),
            proof: proof.iter().map(|h| h.to_vec()).collect(),
        }))
    }

    async fn signed_tree_head(
        &self,
        req: Request<pb::SignedTreeHeadRequest>,
    ) -> Result<Response<pb::SignedTreeHeadResponse>, Status> {
        let _t = self.obs.call("SignedTreeHead");
        let s = convert::session(&req.get_ref().session)?;
        self.authorize(&req, "/theta.v1.AuditService/SignedTreeHead", Some(&s), Need::Member, false)?;
        let h = self.store.signed_tree_head(&s).map_err(|e| read_status(&e))?;
        Ok(Response::new(pb::SignedTreeHeadResponse {
            session: h.session.0.to_vec(),
            tree_size: h.tree_size,
            root: h.root.to_vec(),
            timestamp_ms: h.timestamp_ms,
            signature: h.signature.to_vec(),
            public_key: h.public_key.to_vec(),
        }))
    }

    async fn rejections(
        &self,
        req: Request<pb::RejectionsRequest>,
    ) -> Result<Response<pb::RejectionsResponse>, Status> {
        let _t = self.obs.call("Rejections");
        let s = if req.get_ref().session.is_empty() { None } else { Some(convert::session(&req.get_ref().session)?) };
        let need = if s.is_some() { Need::Auditor } else { Need::Admin };
        self.authorize(&req, "/theta.v1.AuditService/Rejections", s.as_ref(), need, false)?;
        let records = self.store.rejections(s.as_ref()).map_err(|e| read_status(&e))?;
        Ok(Response::new(pb::RejectionsResponse {
            records: records
                .into_iter()
                .map(|r| pb::RejectionRecord {
                    index: r.index,
                    time_ms: r.time_ms,
                    reason_code: r.code as u32,
                    counter: r.code.counter().to_string(),
                    author: r.author.map(|a| a.0.to_vec()).unwrap_or_default(),
                    envelope_hash: r.envelope_hash.to_vec(),
                    reason: r.reason,
                })
                .collect(),
        }))
    }

    async fn author_summary(
        &self,
        req: Request<pb::AuthorSummaryRequest>,
    ) -> Result<Response<pb::AuthorSummaryResponse>, Status> {
        let _t = self.obs.call("AuthorSummary");
        let s = convert::session(&req.get_ref().session)?;
        self.authorize(&req, "/theta.v1.AuditService/AuthorSummary", Some(&s), Need::Auditor, false)?;
        let store = self.store.clone();
        Ok(Response::new(blocking(move || author_summary(&store, &s)).await?))
    }
}

#[tonic::async_trait]
impl AdminService for Gateway {
    async fn stats(&self, req: Request<pb::StatsRequest>) -> Result<Response<pb::StatsResponse>, Status> {
        let _t = self.obs.call("Stats");
        self.authorize(&req, "/theta.v1.AdminService/Stats", None, Need::Admin, false)?;
        let counters =
            self.obs.counters(&self.store).into_iter().map(|(name, value)| pb::Counter { name, value }).collect();
        Ok(Response::new(pb::StatsResponse {
            counters,
            sessions: self
                .store
                .sessions()
                .into_iter()
                .map(|h| pb::SessionStats { session: h.session.0.to_vec(), name: h.name, seq: h.seq })
                .collect(),
            service_public_key: self.store.service_public_key().to_vec(),
        }))
    }
}
