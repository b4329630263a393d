//! `ReplayService`: the log and the world at any seq, live subscriptions, entity histories.

use super::*;

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
