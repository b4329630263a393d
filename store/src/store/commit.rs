//! The commit thread (stateful checks, group commit), the flush thread, and the answers to a
//! durable (or failed) group: listeners, indexer, replies.

use super::*;

/// The single writer: stateful checks, group commit, replies.
pub(super) struct Committer {
    pub(super) shared: Arc<Shared>,
    pub(super) states: BTreeMap<SessionId, SessionState>,
    pub(super) global_trail_next: u64,
    /// When the first unflushed batch was applied (interval durability).
    pub(super) dirty_since: Option<Instant>,
    /// Session-creation token buckets per key (bounded: at the bound, buckets that hold a
    /// token are forgotten).
    pub(super) creations: std::collections::HashMap<theta_schemas::AuthorKey, crate::guard::TokenBucket>,
    /// Groups waiting for their flush (`Durability::Sync`), and the thread flushing them.
    pub(super) flusher: Option<SyncSender<Flush>>,
    pub(super) flusher_thread: Option<JoinHandle<()>>,
    /// When to try again to reopen storage after a failure.
    pub(super) recovery: Recovery,
}

/// The first wait before reopening storage after a failure; it doubles up to [`RECOVERY_MAX`].
pub(super) const RECOVERY_FIRST: Duration = Duration::from_millis(50);
/// The longest wait between two attempts to reopen storage.
pub(super) const RECOVERY_MAX: Duration = Duration::from_secs(2);

/// The retry schedule of a failed store.
#[derive(Default)]
pub(super) struct Recovery {
    next: Option<Instant>,
    wait: Duration,
}

/// Starts the flusher thread.
pub(super) fn spawn_flusher(shared: &Arc<Shared>) -> (SyncSender<Flush>, JoinHandle<()>) {
    // Groups applied while a flush runs wait for the next one, which covers them all.
    let (flush_tx, flush_rx) = sync_channel::<Flush>(FLUSH_QUEUE);
    let f_shared = shared.clone();
    let thread = std::thread::Builder::new()
        .name("theta-flush".into())
        .spawn(move || flush_loop(f_shared, flush_rx))
        .expect("spawn flusher thread");
    (flush_tx, thread)
}

/// Keys whose session-creation buckets are remembered at once.
pub(super) const MAX_CREATION_BUCKETS: usize = 65_536;

pub(super) struct Outcome {
    pub(super) reply: Responder,
    pub(super) submitted: Instant,
    pub(super) result: Result<(SessionId, crate::session::Accepted), AppendError>,
}

impl Committer {
    pub(super) fn run(mut self, rx: Receiver<(u64, Vec<Stage2>)>, order: Arc<Order>) {
        let tick = match self.shared.config.durability {
            Durability::IntervalMs(ms) => Some(Duration::from_millis(ms.max(1))),
            _ => None,
        };
        let mut failed = false;
        // Worker results that arrived before an earlier ticket's.
        let mut early: BTreeMap<u64, Vec<Stage2>> = BTreeMap::new();
        let mut next_ticket = 0u64;
        loop {
            // A failed store wakes up to reopen its storage even when nothing is submitted.
            let wait = if self.stopped(&mut failed) { Some(self.recovery.wait_left()) } else { tick };
            let item = match wait {
                Some(w) => match rx.recv_timeout(w) {
                    Ok(i) => i,
                    Err(RecvTimeoutError::Timeout) => {
                        if let Some(t) = tick {
                            self.flush_if_due(t, &mut failed);
                        }
                        continue;
                    }
                    Err(RecvTimeoutError::Disconnected) => break,
                },
                None => match rx.recv() {
                    Ok(i) => i,
                    Err(_) => break,
                },
            };
            early.insert(item.0, item.1);
            early.extend(rx.try_iter());
            let mut items = Vec::new();
            while let Some(stages) = early.remove(&next_ticket) {
                items.extend(stages);
                next_ticket += 1;
            }
            if items.is_empty() {
                continue;
            }
            order.committed_to(next_ticket);
            let mut group: Vec<Verified> = Vec::new();
            for item in items {
                match item {
                    Stage2::Appends(a) => group.extend(a),
                    Stage2::Import(job) => {
                        self.commit(std::mem::take(&mut group), &mut failed);
                        if self.stopped(&mut failed) {
                            (job.reply)(Err(stopped()));
                        } else {
                            self.import(job, &mut failed);
                        }
                    }
                    Stage2::Trail(job) => {
                        self.commit(std::mem::take(&mut group), &mut failed);
                        if self.stopped(&mut failed) {
                            (job.reply)(Err(stopped()));
                        } else {
                            self.import_trail(job, &mut failed);
                        }
                    }
                    Stage2::Shutdown(done) => {
                        self.commit(std::mem::take(&mut group), &mut failed);
                        // A state checkpoint at every head: the next open folds nothing.
                        if !failed {
                            let mut batch = WriteBatch::default();
                            for state in self.states.values_mut() {
                                state.save_state(&mut batch);
                            }
                            if !batch.is_empty() && self.shared.backend.apply(batch).is_ok() {
                                self.dirty_since.get_or_insert_with(Instant::now);
                            }
                        }
                        if self.dirty_since.is_some() {
                            let _ = self.shared.backend.flush(true);
                        }
                        // The flusher answers what it holds, then stops.
                        self.flusher.take();
                        if let Some(t) = self.flusher_thread.take() {
                            let _ = t.join();
                        }
                        let _ = done.send(());
                        return;
                    }
                }
            }
            self.commit(group, &mut failed);
            if let Some(t) = tick {
                self.flush_if_due(t, &mut failed);
            }
        }
    }

    /// Whether a storage failure stopped the store (here or on the flusher) and reopening the
    /// storage, when due, did not bring it back.
    pub(super) fn stopped(&mut self, failed: &mut bool) -> bool {
        *failed |= self.shared.failed.load(Relaxed);
        if *failed && self.recovery.due() {
            *failed = !self.recover();
        }
        *failed
    }

    /// Marks the store failed: nothing more is written until storage is reopened.
    pub(super) fn fail(&mut self, failed: &mut bool, what: &str) {
        *failed = true;
        if !self.shared.failed.swap(true, Relaxed) {
            self.shared.metrics.storage_failures.fetch_add(1, Relaxed);
            tracing_error(&format!("storage failure, appends are refused until storage works again: {what}"));
        }
        self.recovery.schedule();
    }

    /// Reopens storage after a failure and reloads every session from what it holds, as an
    /// open would: the flusher first answers every group it holds (refused), the backend drops
    /// its memory and reads its files again, the indexer forgets what it gathered and catches
    /// up from the watermarks, and the live heads become the stored ones. Nothing acknowledged
    /// can be missing (it was durable); entries refused with `Storage` may be there (their
    /// write reached the disk before the failure) or not. Sessions whose sequenced head
    /// changed are announced to the reset listeners.
    fn recover(&mut self) -> bool {
        // The flusher answers what it holds with refusals (the failed flag is still set).
        self.flusher.take();
        if let Some(t) = self.flusher_thread.take() {
            let _ = t.join();
        }
        let attempt = || -> Result<Loaded, BackendError> {
            self.shared.backend.reopen()?;
            load_sessions(&*self.shared.backend, VerifyOnOpen::Tail)
        };
        let attempt = attempt();
        // A new flusher either way: it refuses while the failed flag is set.
        let (tx, thread) = spawn_flusher(&self.shared);
        (self.flusher, self.flusher_thread) = (Some(tx), Some(thread));
        let Loaded { states, mut views, global_trail_next } = match attempt {
            Ok(l) => l,
            Err(e) => {
                self.recovery.schedule();
                tracing_error(&format!("storage still failing, appends stay refused: {e}"));
                return false;
            }
        };
        let mut reset = Vec::new();
        {
            let mut live = self.shared.views.write().expect("views lock");
            for (id, old) in live.iter().filter(|(_, v)| v.corrupted.is_none()) {
                let stored = match views.get(id) {
                    Some(v) if v.corrupted.is_some() => continue,
                    Some(v) => v.head.seq,
                    None => 0,
                };
                if stored < old.head.seq {
                    // Never seen in a test: storage lost what it had made durable.
                    let detail = format!("acknowledged entries after {stored} missing after reopening storage");
                    tracing_error(&format!("session {id}: {detail}"));
                    let head = views.get(id).map_or_else(|| old.head.clone(), |v| v.head.clone());
                    views.insert(*id, View { head, corrupted: Some(Corruption { seq: stored + 1, detail }) });
                }
            }
            for (id, state) in &self.states {
                let now = states.get(id).map(|s| s.meta.head_seq);
                if now != Some(state.meta.head_seq) {
                    reset.push(views.get(id).map_or_else(|| head_of(state), |v| v.head.clone()));
                }
            }
            *live = views;
        }
        self.shared.blocks.clear();
        // The indexer forgets what it gathered (some of it may have been written to the
        // engine's memory only) and rebuilds from the watermarks.
        if let Some(tx) = self.shared.indexer.lock().expect("indexer lock").as_ref() {
            let (done_tx, done_rx) = std::sync::mpsc::channel();
            if tx.send(IndexJob::Reset(done_tx)).is_ok() {
                let _ = done_rx.recv();
            }
            catch_up_indexes(&*self.shared.backend, &states, tx);
        }
        self.states = states;
        self.global_trail_next = global_trail_next;
        self.dirty_since = None;
        self.recovery = Recovery::default();
        self.shared.failed.store(false, Relaxed);
        self.shared.metrics.storage_recoveries.fetch_add(1, Relaxed);
        tracing_error("storage works again: appends are accepted");
        if !reset.is_empty() {
            for f in self.shared.reset_listeners.read().expect("listener lock").iter() {
                f(&reset);
            }
        }
        true
    }

    /// Appends restored rejection records to a trail, durably like a group.
    pub(super) fn import_trail(&mut self, job: TrailJob, failed: &mut bool) {
        let TrailJob { session, records, marks, reply } = job;
        let mut batch = WriteBatch::default();
        let n = records.len() as u64;
        for r in records {
            self.trail(session, r, &mut batch);
        }
        for (key, bytes) in marks {
            batch.put(keys::replica_mark(key), bytes);
        }
        let config = self.shared.config.clone();
        if let Some(state) = session.and_then(|s| self.states.get_mut(&s)) {
            state.finish(&mut batch, &config, false);
        }
        let group = Group {
            outcomes: Vec::new(),
            heads: Vec::new(),
            indexed: BTreeMap::new(),
            commands: BTreeMap::new(),
            imported: Some((reply, n, 0)),
        };
        self.send(group, batch, failed);
    }

    pub(super) fn flush_if_due(&mut self, interval: Duration, failed: &mut bool) {
        if let Some(since) = self.dirty_since
            && since.elapsed() >= interval
        {
            if let Err(e) = self.shared.backend.flush(true) {
                self.fail(failed, &e.to_string());
            }
            self.shared.metrics.flushes.fetch_add(1, Relaxed);
            self.dirty_since = None;
        }
    }

    pub(super) fn append_one(
        &mut self,
        body: &theta_schemas::CommandBody,
        bytes: &mut Vec<u8>,
        now: u64,
        limited: bool,
        batch: &mut WriteBatch,
        touched: &mut BTreeSet<SessionId>,
    ) -> Result<crate::session::Accepted, AppendError> {
        if let Some(View { corrupted: Some(c), .. }) = self.shared.views.read().expect("views lock").get(&body.session)
        {
            return Err(AppendError::Corrupted { session: body.session, seq: c.seq, detail: c.detail.clone() });
        }
        let creating = !self.states.contains_key(&body.session);
        if creating {
            if body.command.kind() != CommandKind::CreateSession {
                return Err(AppendError::UnknownSession { session: body.session });
            }
            self.admit(&body.author, limited.then_some(now))?;
            self.states.insert(body.session, SessionState::new(body.session));
        }
        let config = &self.shared.config;
        let state = self.states.get_mut(&body.session).expect("present");
        if let Err(e) = state.check(body, config, limited.then_some(now)) {
            if creating {
                self.states.remove(&body.session);
            }
            return Err(e);
        }
        let (accepted, _) = state.apply(body, std::mem::take(bytes), now, batch);
        touched.insert(body.session);
        Ok(accepted)
    }

    /// Admission and the per-key session-creation rate (`now_ms` None: admission only).
    pub(super) fn admit(&mut self, author: &theta_schemas::AuthorKey, now_ms: Option<u64>) -> Result<(), AppendError> {
        let config = &self.shared.config;
        if !config.admission.admits(author) {
            return Err(AppendError::NotAdmitted { author: *author });
        }
        let Some(now_ms) = now_ms else { return Ok(()) };
        let per_min = f64::from(config.session_creations_per_min.max(1));
        if self.creations.len() >= MAX_CREATION_BUCKETS && !self.creations.contains_key(author) {
            self.creations.retain(|_, b| b.clone().take(per_min / 60.0, per_min, now_ms).is_err());
        }
        self.creations
            .entry(*author)
            .or_insert_with(|| crate::guard::TokenBucket::full(per_min, now_ms))
            .take(per_min / 60.0, per_min, now_ms)
            .map_err(|retry_after_ms| AppendError::RateLimited { author: *author, retry_after_ms })
    }

    pub(super) fn trail(&mut self, session: Option<SessionId>, record: Rejection, batch: &mut WriteBatch) {
        let max = self.shared.config.rejection_trail_entries;
        if max == 0 {
            return;
        }
        let (id, next) = match session.and_then(|s| self.states.get_mut(&s)) {
            Some(state) => (state.id, &mut state.meta.trail_next),
            None => (SessionId::default(), &mut self.global_trail_next),
        };
        let idx = *next;
        *next += 1;
        batch.put(keys::trail(&id, idx), Rejection { index: idx, ..record }.encode());
        if idx >= max {
            batch.delete(keys::trail(&id, idx - max));
        }
    }

    pub(super) fn commit(&mut self, group: Vec<Verified>, failed: &mut bool) {
        if group.is_empty() {
            return;
        }
        if self.stopped(failed) {
            // After a storage failure nothing more is written: a later flush would make the
            // failed group durable behind its refusals (and the trail records are writes too).
            let metrics = &self.shared.metrics;
            for (checked, reply, submitted, _) in group {
                let e = match checked.result {
                    Err(e) => e,
                    Ok(_) => AppendError::Storage("the store stopped after a storage failure".into()),
                };
                metrics.reject(e.code());
                metrics.ack_latency.observe_us(submitted.elapsed().as_micros() as u64);
                metrics.queue_depth.fetch_sub(1, Relaxed);
                reply.send(Err(e));
            }
            return;
        }
        let now = now_ms();
        let mut batch = WriteBatch::default();
        let mut touched = BTreeSet::new();
        let mut trail_touched = BTreeSet::new();
        let mut outcomes = Vec::with_capacity(group.len());
        let mut indexed: BTreeMap<SessionId, Vec<(u64, AuthorKey, EntityId)>> = BTreeMap::new();
        let keep_commands = self.shared.wants_commands.load(Relaxed);
        let mut commands: BTreeMap<SessionId, Vec<(u64, theta_schemas::CommandBody)>> = BTreeMap::new();
        for (checked, reply, submitted, stamp) in group {
            let Checked { mut bytes, result, origin, .. } = checked;
            // A replicated append carries its leader's clock and is not rate-limited here.
            let (time, limited) = stamp.as_ref().map_or((now, true), |s| (s.time_ms, false));
            let (author, session, result) = match result {
                Err(e) => (origin.map(|o| o.1), origin.map(|o| o.0), Err(e)),
                Ok(body) => {
                    let r = if *failed {
                        Err(AppendError::Storage("the store stopped after a storage failure".into()))
                    } else {
                        self.append_one(&body, &mut bytes, time, limited, &mut batch, &mut touched)
                    };
                    let (author, session) = (body.author, body.session);
                    if let Ok(a) = &r {
                        indexed.entry(session).or_default().push((a.seq, author, body.entity));
                        if keep_commands {
                            commands.entry(session).or_default().push((a.seq, body));
                        }
                    }
                    (Some(author), Some(session), r.map(|a| (session, a)))
                }
            };
            if let Err(e) = &result {
                let known = session.filter(|s| self.states.contains_key(s));
                if let Some(s) = known {
                    trail_touched.insert(s);
                }
                let envelope_hash = sha2::Sha256::digest(&bytes).into();
                let record =
                    Rejection { index: 0, time_ms: time, code: e.code(), author, envelope_hash, reason: e.to_string() };
                self.trail(known, record, &mut batch);
            }
            if let Some((key, mark)) = stamp.and_then(|s| s.mark) {
                batch.put(keys::replica_mark(key), mark);
            }
            outcomes.push(Outcome { reply, submitted, result });
        }
        let every = self.shared.config.verified_checkpoint_every_entries.max(1);
        let config = self.shared.config.clone();
        for s in touched.iter().chain(&trail_touched) {
            let state = self.states.get_mut(s).expect("touched session");
            // Entries this store hashed itself count as verified; Tail verification on open
            // starts after the last such point.
            if state.meta.head_seq - state.meta.verified_upto >= every {
                state.meta.verified_upto = state.meta.head_seq;
            }
            state.finish(&mut batch, &config, false);
        }
        let heads: Vec<Head> = touched.iter().map(|s| head_of(&self.states[s])).collect();
        let commands = commands.into_iter().map(|(s, c)| (s, c.into())).collect();
        self.send(Group { outcomes, heads, indexed, commands, imported: None }, batch, failed);
    }

    /// Applies a group's writes and sends it on: to the flusher (`Sync`), or answered now.
    pub(super) fn send(&mut self, group: Group, batch: WriteBatch, failed: &mut bool) {
        let applied = if batch.is_empty() { Ok(false) } else { self.shared.backend.apply(batch).map(|()| true) };
        let applied = match applied {
            Ok(a) => a,
            Err(e) => {
                self.fail(failed, &e.to_string());
                return complete(&self.shared, group, Err(e.to_string()));
            }
        };
        if !group.commands.is_empty() {
            let sequenced = self.shared.sequenced_listeners.read().expect("listener lock").clone();
            if !sequenced.is_empty() {
                let committed: Vec<Committed> = group
                    .heads
                    .iter()
                    .filter_map(|h| {
                        let commands = group.commands.get(&h.session)?.clone();
                        Some(Committed { head: h.clone(), commands })
                    })
                    .collect();
                for f in sequenced {
                    f(&committed);
                }
            }
        }
        match self.shared.config.durability {
            // Flushed on the flusher thread while this one builds the next group.
            Durability::Sync => {
                if let Some(f) = &self.flusher
                    && let Err(e) = f.send(Flush { group, applied })
                {
                    complete(&self.shared, e.0.group, Err("the store is shutting down".into()));
                }
            }
            Durability::IntervalMs(_) => {
                if applied {
                    self.dirty_since.get_or_insert_with(Instant::now);
                }
                complete(&self.shared, group, Ok(()));
            }
            Durability::None => complete(&self.shared, group, Ok(())),
        }
    }

    /// Runs an import's ordered pass and sends its writes the way of a group: durable before
    /// the reply.
    pub(super) fn import(&mut self, job: ImportJob, failed: &mut bool) {
        let ImportJob { session, entries, prepared, compressed, reply } = job;
        let config = self.shared.config.clone();
        let backend = self.shared.backend.clone();
        if let Some(View { corrupted: Some(c), .. }) = self.shared.views.read().expect("views lock").get(&session) {
            let error = AppendError::Corrupted { session, seq: c.seq, detail: c.detail.clone() };
            return reply(Err(ImportError::Rejected { seq: c.seq, error }));
        }
        // Work on the live state; a failed import reloads it from storage, where nothing of the
        // failed call was written (cheaper than cloning the state for every call).
        let mut state = self.states.remove(&session).unwrap_or_else(|| SessionState::new(session));
        let before = state.meta.head_seq;
        let mut indexed = Vec::new();
        let mut batch = match import_into(&mut state, entries, prepared, &config, &mut indexed) {
            Ok(batch) => batch,
            Err(e) => {
                if before > 0 {
                    let meta = backend.get(&keys::meta(&session)).ok().flatten().and_then(|raw| Meta::decode(&raw));
                    if let Some(meta) = meta {
                        match SessionState::load(&*backend, session, meta) {
                            Ok(s) => {
                                self.states.insert(session, s);
                            }
                            Err(err) => {
                                self.fail(failed, &format!("session {session}: reload after a failed import: {err}"));
                            }
                        }
                    }
                }
                return reply(Err(e));
            }
        };
        let n = state.meta.head_seq;
        // The import checked every link and hash of these entries: they count as verified.
        state.meta.verified_upto = n;
        state.finish_with(&mut batch, &config, false, Some(compressed));
        let group = Group {
            outcomes: Vec::new(),
            heads: vec![head_of(&state)],
            indexed: BTreeMap::from([(session, indexed)]),
            commands: BTreeMap::new(),
            imported: Some((reply, n, n - before)),
        };
        self.states.insert(session, state);
        self.send(group, batch, failed);
    }
}

/// The answer to an import after a storage failure stopped the store.
pub(super) fn stopped() -> ImportError {
    ImportError::Rejected { seq: 0, error: AppendError::Storage("the store stopped after a storage failure".into()) }
}

/// A committed group on its way to its replies: its outcomes, the heads it made, and the
/// entries for the indexer.
pub(super) struct Group {
    pub(super) outcomes: Vec<Outcome>,
    pub(super) heads: Vec<Head>,
    pub(super) indexed: BTreeMap<SessionId, Vec<(u64, AuthorKey, EntityId)>>,
    /// The accepted commands per session, decoded (kept only while a command listener exists).
    pub(super) commands: BTreeMap<SessionId, Arc<[(u64, theta_schemas::CommandBody)]>>,
    /// An import's reply, the head after it and the entries it added.
    pub(super) imported: Option<(ImportReply, u64, u64)>,
}

/// A group applied to the backend, to be made durable before its replies (`Durability::Sync`).
pub(super) struct Flush {
    pub(super) group: Group,
    /// Whether the group wrote anything (a group of refusals without trail records did not).
    pub(super) applied: bool,
}

/// The flusher thread: flush + fdatasync per group, in commit order, overlapping the committer's
/// work on the next group; then the group's heads, listeners, index entries and replies.
pub(super) fn flush_loop(shared: Arc<Shared>, rx: Receiver<Flush>) {
    while let Ok(first) = rx.recv() {
        // Every group applied by now is covered by one flush.
        let mut groups = vec![first];
        groups.extend(rx.try_iter());
        let applied = groups.iter().any(|f| f.applied);
        let result = if shared.failed.load(Relaxed) {
            Err("the store stopped after a storage failure".to_string())
        } else if applied {
            let t = Instant::now();
            let r = shared.backend.flush(true);
            shared.metrics.flush_latency.observe_us(t.elapsed().as_micros() as u64);
            shared.metrics.flushes.fetch_add(1, Relaxed);
            r.map_err(|e| {
                if !shared.failed.swap(true, Relaxed) {
                    shared.metrics.storage_failures.fetch_add(1, Relaxed);
                    tracing_error(&format!("storage failure, appends are refused until storage works again: {e}"));
                }
                e.to_string()
            })
        } else {
            Ok(())
        };
        for Flush { group, .. } in groups {
            complete(&shared, group, result.clone());
        }
    }
}

/// Answers a group whose writes are durable (`Ok`) or failed: publishes its heads (never moving
/// a head back), tells the listeners and the indexer, and sends every reply.
pub(super) fn complete(shared: &Shared, group: Group, durable: Result<(), String>) {
    let Group { outcomes, heads, indexed, mut commands, imported } = group;
    let mut roots: HashMap<SessionId, (u64, Hash)> = HashMap::new();
    if durable.is_ok() {
        let mut fresh = Vec::with_capacity(heads.len());
        {
            let mut views = shared.views.write().expect("views lock");
            for head in heads {
                roots.insert(head.session, (head.seq, head.tree_root));
                let newer = views.get(&head.session).is_none_or(|v| v.head.seq < head.seq);
                if newer {
                    views.insert(head.session, View { head: head.clone(), corrupted: None });
                    fresh.push(head);
                }
            }
        }
        if !fresh.is_empty() {
            let command_listeners = shared.command_listeners.read().expect("listener lock").clone();
            if !command_listeners.is_empty() {
                let committed: Vec<Committed> = fresh
                    .iter()
                    .map(|h| Committed { head: h.clone(), commands: commands.remove(&h.session).unwrap_or_default() })
                    .collect();
                for f in command_listeners {
                    f(&committed);
                }
            }
            let listeners = shared.listeners.read().expect("listener lock").clone();
            for f in listeners {
                f(&fresh);
            }
        }
        if let Some(i) = shared.indexer.lock().expect("indexer lock").as_ref() {
            for (s, entries) in indexed {
                let _ = i.send(IndexJob::Entries(s, entries));
            }
        }
    }
    let metrics = &shared.metrics;
    if let Some((reply, head, added)) = imported {
        match &durable {
            Ok(()) => {
                metrics.imported_entries.fetch_add(added, Relaxed);
                reply(Ok(head));
            }
            Err(e) => reply(Err(ImportError::Rejected { seq: 0, error: AppendError::Storage(e.clone()) })),
        }
        return;
    }
    metrics.batches_committed.fetch_add(1, Relaxed);
    for o in outcomes {
        let result = match (o.result, &durable) {
            (Ok((session, a)), Ok(())) => {
                let (tree_size, tree_root) = roots[&session];
                Ok(Receipt {
                    session,
                    seq: a.seq,
                    lamport: a.lamport,
                    nonce: a.nonce,
                    entry_hash: a.entry_hash,
                    tree_size,
                    tree_root,
                })
            }
            (Ok(_), Err(e)) => Err(AppendError::Storage(e.clone())),
            (Err(e), _) => Err(e),
        };
        match &result {
            Ok(_) => metrics.appends_accepted.fetch_add(1, Relaxed),
            Err(e) => {
                metrics.reject(e.code());
                0
            }
        };
        metrics.ack_latency.observe_us(o.submitted.elapsed().as_micros() as u64);
        metrics.queue_depth.fetch_sub(1, Relaxed);
        o.reply.send(result);
    }
}

/// Checks and applies imported entries to `state`; returns their writes.
pub(super) fn import_into(
    state: &mut SessionState,
    entries: Vec<LogEntry>,
    prepared: Vec<Prepared>,
    config: &StoreConfig,
    indexed: &mut Vec<(u64, AuthorKey, EntityId)>,
) -> Result<WriteBatch, ImportError> {
    let session = state.id;
    let mut batch = WriteBatch::default();
    for (e, p) in entries.into_iter().zip(prepared) {
        let seq = state.meta.head_seq + 1;
        let chain = |detail: &str| ImportError::Chain { seq: e.seq, detail: detail.into() };
        if e.seq != seq {
            return Err(chain(&format!("expected seq {seq}")));
        }
        if e.prev_hash != state.meta.last_hash {
            return Err(chain("previous hash does not match the log"));
        }
        let body = p.body.map_err(|error| ImportError::Rejected { seq, error })?;
        if body.session != session {
            return Err(chain("entry belongs to another session"));
        }
        state.check(&body, config, None).map_err(|error| ImportError::Rejected { seq, error })?;
        if !p.hash_ok {
            return Err(chain("entry hash does not match its contents"));
        }
        indexed.push((seq, body.author, body.entity));
        state.apply_hashed(&body, e.envelope, e.receipt_time_ms, e.entry_hash, Some(p.encoded), &mut batch);
    }
    Ok(batch)
}

pub(super) fn tracing_error(msg: &str) {
    eprintln!("theta-store: {msg}");
}

impl Recovery {
    /// Schedules the next attempt (the first one soon, later ones further apart).
    fn schedule(&mut self) {
        self.wait = if self.wait.is_zero() { RECOVERY_FIRST } else { (self.wait * 2).min(RECOVERY_MAX) };
        self.next = Some(Instant::now() + self.wait);
    }

    /// Whether an attempt is due (one is always due when none was scheduled: a failure the
    /// flusher saw).
    fn due(&mut self) -> bool {
        match self.next {
            None => {
                self.schedule();
                false
            }
            Some(t) => Instant::now() >= t,
        }
    }

    /// How long until the next attempt.
    fn wait_left(&self) -> Duration {
        self.next.map_or(RECOVERY_FIRST, |t| t.saturating_duration_since(Instant::now()))
    }
}
