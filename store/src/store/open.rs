//! Opening: the on-disk format check, the service key, and verification of a session's log.

use super::*;

/// The on-disk format this build writes and reads (the `F` key).
pub const FORMAT_VERSION: u8 = 3;

/// Checks the on-disk format: a new store gets the current one; a store of another format is
/// refused with what to run.
pub(super) fn check_format(backend: &dyn Backend) -> Result<(), OpenError> {
    match backend.get(keys::FORMAT)? {
        Some(v) if v == [FORMAT_VERSION] => Ok(()),
        Some(v) => Err(OpenError::Format { found: v.first().copied().unwrap_or(0), supported: FORMAT_VERSION }),
        None => {
            let any = backend.range(&[keys::tag::META], &[keys::tag::META + 1]).next().transpose()?;
            if any.is_some() {
                // Stores written before the format key existed are format 1.
                return Err(OpenError::Format { found: 1, supported: FORMAT_VERSION });
            }
            let mut b = WriteBatch::default();
            b.put(keys::FORMAT.to_vec(), vec![FORMAT_VERSION]);
            backend.apply(b)?;
            backend.flush(true)?;
            Ok(())
        }
    }
}

pub(super) fn service_key(path: &Path) -> Result<SigningKey, OpenError> {
    let err = |reason: String| OpenError::ServiceKey { path: path.display().to_string(), reason };
    match std::fs::read_to_string(path) {
        Ok(text) => {
            let mut secret = [0u8; 32];
            hex::decode_to_slice(text.trim(), &mut secret).map_err(|e| err(format!("not 64 hex digits: {e}")))?;
            Ok(SigningKey::from_bytes(&secret))
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            let key = SigningKey::generate(&mut rand::rngs::OsRng);
            let tmp = path.with_extension("key.tmp");
            let mut opts = std::fs::OpenOptions::new();
            opts.write(true).create(true).truncate(true);
            #[cfg(unix)]
            std::os::unix::fs::OpenOptionsExt::mode(&mut opts, 0o600);
            let write = || -> std::io::Result<()> {
                use std::io::Write as _;
                let mut f = opts.open(&tmp)?;
                writeln!(f, "{}", hex::encode(key.to_bytes()))?;
                f.sync_all()?;
                std::fs::rename(&tmp, path)?;
                if let Some(dir) = path.parent() {
                    std::fs::File::open(dir)?.sync_all()?;
                }
                Ok(())
            };
            write().map_err(|e| err(format!("cannot create: {e}")))?;
            Ok(key)
        }
        Err(e) => Err(err(e.to_string())),
    }
}

pub(super) fn last_key_u64(backend: &dyn Backend, tag: u8, session: &SessionId) -> Result<Option<u64>, BackendError> {
    let p = keys::prefix(tag, session);
    match backend.range_rev(&p, &keys::prefix_end(&p)).next() {
        None => Ok(None),
        Some(kv) => Ok(Some(keys::be_u64(&kv?.0, 17))),
    }
}

/// Verifies a session's stored entries from `from` to its head: block codec and framing,
/// decoding, seq continuity, chain hashes and stored Merkle nodes (when verifying from 1). The
/// indexes and the state checkpoint are derived: loading folds the log after the checkpoint,
/// and index reads scan the log past the watermark.
pub(super) fn verify_session(backend: &dyn Backend, state: &SessionState, from: u64) -> Result<(), Corruption> {
    let id = state.id;
    let head = state.meta.head_seq;
    let bad = |seq: u64, detail: String| Corruption { seq, detail };
    let storage = |seq: u64| move |e: BackendError| Corruption { seq, detail: format!("storage: {e}") };
    let from = from.max(1);
    if from > head {
        // Nothing to check but that no entry lies beyond the head.
        let beyond =
            backend.range(&keys::entry(&id, head + 1), &keys::prefix_end(&keys::prefix(keys::tag::ENTRY, &id))).next();
        return match beyond {
            Some(Ok((k, _))) => Err(bad(keys::be_u64(&k, 17), format!("entry beyond the head {head}"))),
            Some(Err(e)) => Err(storage(head)(e)),
            None => Ok(()),
        };
    }
    let mut prev = if from == 1 {
        [0u8; 32]
    } else {
        blocks::read_entry(backend, &id, from - 1, None).map_err(|e| bad(from - 1, e.to_string()))?.entry_hash
    };
    let mut rebuilt = (from == 1).then(|| (Frontier::new(), Box::new([[0u8; 32]; blocks::PAGE_NODES])));
    let mut seq = from;
    let first_block = blocks::find_key(backend, &id, from).map_err(|e| bad(from, e.to_string()))?;
    let iter = backend.range(&keys::entry(&id, first_block), &keys::prefix_end(&keys::prefix(keys::tag::ENTRY, &id)));
    for kv in iter {
        let (k, raw) = kv.map_err(storage(seq))?;
        let block_first = keys::be_u64(&k, 17);
        if block_first > head {
            return Err(bad(block_first, format!("entry beyond the head {head}")));
        }
        let raw = blocks::decode(&raw).map_err(|e| bad(block_first.max(seq), e))?;
        let parts = blocks::split(&raw).map_err(|i| bad(block_first + i as u64, "block framing broken".into()))?;
        for (i, part) in parts.into_iter().enumerate() {
            let at = block_first + i as u64;
            if at < seq {
                continue; // before `from`, inside the first block
            }
            if at != seq {
                return Err(bad(seq, format!("entry missing (next stored is {at})")));
            }
            if seq > head {
                return Err(bad(seq, format!("entry beyond the head {head}")));
            }
            let e = blocks::decode_entry(&id, seq, part).map_err(|e| bad(seq, e.to_string()))?;
            if e.prev_hash != prev {
                return Err(bad(seq, "previous-hash link broken".into()));
            }
            let h = merkle::entry_hash(&id, seq, e.receipt_time_ms, &e.prev_hash, &e.envelope);
            if h != e.entry_hash {
                return Err(bad(seq, "entry hash does not match its contents".into()));
            }
            if let Some((f, page)) = rebuilt.as_mut() {
                let mut mismatch = None;
                f.push(merkle::leaf_hash(&h), |level, index, hash| {
                    if mismatch.is_some() {
                        return;
                    }
                    if level > blocks::PAGE_LEVEL {
                        match backend.get(&keys::node(&id, level, index)) {
                            Ok(Some(v)) if v == hash[..] => {}
                            _ => mismatch = Some(format!("Merkle node ({level}, {index}) does not match")),
                        }
                    } else if let Some(p) = blocks::fill_page(page, level, index, hash) {
                        match backend.get(&keys::node_page(&id, p)) {
                            Ok(Some(v)) if v == blocks::encode_page(page) => {}
                            _ => mismatch = Some(format!("Merkle node page {p} does not match")),
                        }
                    }
                });
                if let Some(m) = mismatch {
                    return Err(bad(seq, m));
                }
            }
            Envelope::open(&e.envelope).map_err(|err| bad(seq, format!("envelope does not decode: {err}")))?;
            prev = h;
            seq += 1;
        }
    }
    if seq != head + 1 {
        return Err(bad(seq, format!("entries end at {} but the head is {head}", seq - 1)));
    }
    if prev != state.meta.last_hash {
        return Err(bad(head, "last entry hash differs from the session header".into()));
    }
    if let Some((f, _)) = rebuilt
        && f.root() != state.frontier.root()
    {
        return Err(bad(head, "Merkle root differs from the stored tree".into()));
    }
    Ok(())
}

/// What storage holds: every session's state and view, and the next global trail index.
pub(super) struct Loaded {
    pub(super) states: BTreeMap<SessionId, SessionState>,
    pub(super) views: BTreeMap<SessionId, View>,
    pub(super) global_trail_next: u64,
}

/// Loads every session from storage and verifies it as `verify` says; a session that fails is
/// kept as a corrupted view only.
pub(super) fn load_sessions(backend: &dyn Backend, verify: VerifyOnOpen) -> Result<Loaded, BackendError> {
    let mut states = BTreeMap::new();
    let mut views = BTreeMap::new();
    let metas: Vec<(SessionId, Vec<u8>)> = backend
        .range(&[keys::tag::META], &[keys::tag::META + 1])
        .map(|kv| kv.map(|(k, v)| (SessionId(k[1..17].try_into().expect("session key")), v)))
        .collect::<Result<_, _>>()?;
    for (id, raw) in metas {
        let corrupt = |seq: u64, detail: String| View {
            head: Head {
                session: id,
                seq,
                clock: 0,
                tree_root: [0; 32],
                last_entry_hash: [0; 32],
                name: String::new(),
            },
            corrupted: Some(Corruption { seq, detail }),
        };
        let Some(meta) = Meta::decode(&raw) else {
            views.insert(id, corrupt(0, "unreadable session header".into()));
            continue;
        };
        let mut state = match SessionState::load(backend, id, meta) {
            Ok(s) => s,
            Err(ReadError::Corrupted { seq, detail, .. }) => {
                views.insert(id, corrupt(seq, detail));
                continue;
            }
            // Storage that cannot be read is not a corrupted session: the caller fails.
            Err(ReadError::Storage(e)) => return Err(BackendError::Engine(e)),
            Err(e) => {
                views.insert(id, corrupt(0, e.to_string()));
                continue;
            }
        };
        let from = match verify {
            VerifyOnOpen::Full => 1,
            VerifyOnOpen::Tail => state.meta.verified_upto + 1,
        };
        match verify_session(backend, &state, from) {
            Ok(()) => {
                if state.meta.verified_upto != state.meta.head_seq {
                    state.meta.verified_upto = state.meta.head_seq;
                    let mut b = WriteBatch::default();
                    b.put(keys::meta(&id), state.meta.encode());
                    backend.apply(b)?;
                }
                views.insert(id, View { head: head_of(&state), corrupted: None });
                states.insert(id, state);
            }
            Err(c) => {
                views.insert(id, corrupt(c.seq, c.detail));
            }
        }
    }
    let global_trail_next = last_key_u64(backend, keys::tag::TRAIL, &SessionId::default())?.map_or(0, |i| i + 1);
    Ok(Loaded { states, views, global_trail_next })
}

/// Asks the indexer to index each session's log past its watermark.
pub(super) fn catch_up_indexes(
    backend: &dyn Backend,
    states: &BTreeMap<SessionId, SessionState>,
    index_tx: &std::sync::mpsc::Sender<IndexJob>,
) {
    for (id, state) in states {
        // An unreadable watermark counts as none: the indexer rebuilds from the start.
        let w = crate::index::watermark(backend, id).unwrap_or(0);
        if w < state.meta.head_seq {
            let _ = index_tx.send(IndexJob::CatchUp(*id, w + 1, state.meta.head_seq));
        }
    }
}
