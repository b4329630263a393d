//! Log blocks: consecutive entries of one session stored under one key.
//!
//! A group commit writes a session's new entries as blocks of at most `max_block_bytes`
//! before compression (key `E | session | first seq`). A block's plain form is a sequence of
//! `u32 little-endian length || LogEntry bytes`; it is stored as `codec (1 byte: 1 = zstd) ||
//! plain length (u32 LE) || zstd frame` (level 1). One sled write per block instead of one per
//! entry, and a fifth of the bytes, is what makes durable appends fast; reads find the block
//! holding a seq with one reverse range step.
//!
//! Merkle nodes below level 4 (16 leaves) are not stored: they are recomputed from the
//! entries when a proof needs them. Levels from [`STORED_MIN_LEVEL`] up are stored.

use theta_schemas::{LogEntry, SessionId};

use crate::backend::{Backend, KvIter};
use crate::error::ReadError;
use crate::keys;
use crate::merkle::{self, Hash};

/// Lowest Merkle level whose node hashes are stored.
pub(crate) const STORED_MIN_LEVEL: u8 = 4;

/// The codec byte of a zstd-compressed block.
pub(crate) const CODEC_ZSTD: u8 = 1;
/// Largest plain block accepted when reading (a block holds at most `max_block_bytes` or one
/// entry, both far below this).
const MAX_PLAIN_BLOCK: usize = 16 << 20;

/// zstd contexts, reused: creating one costs more than compressing a block, and the threads
/// that compress a group's blocks live for one group.
static COMPRESSORS: std::sync::Mutex<Vec<zstd::bulk::Compressor<'static>>> = std::sync::Mutex::new(Vec::new());

thread_local! {
    static DECOMPRESSOR: std::cell::RefCell<zstd::bulk::Decompressor<'static>> =
        std::cell::RefCell::new(zstd::bulk::Decompressor::new().expect("a zstd context"));
}

/// zstd level 1 with a pooled context.
pub(crate) fn compress(plain: &[u8]) -> Vec<u8> {
    let pooled = COMPRESSORS.lock().expect("compressor pool").pop();
    let mut c = pooled.unwrap_or_else(|| zstd::bulk::Compressor::new(1).expect("a zstd level-1 context"));
    let out = c.compress(plain).expect("zstd compresses into a growable buffer");
    COMPRESSORS.lock().expect("compressor pool").push(c);
    out
}

/// The plain form of entries (already encoded `LogEntry` buffers).
pub(crate) fn plain(entries: &[Vec<u8>]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.iter().map(|e| e.len() + 4).sum());
    for e in entries {
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// Encodes entries as one stored (compressed) block.
pub(crate) fn encode(entries: &[Vec<u8>]) -> Vec<u8> {
    let plain = plain(entries);
    let packed = compress(&plain);
    let mut out = Vec::with_capacity(5 + packed.len());
    out.push(CODEC_ZSTD);
    out.extend_from_slice(&(plain.len() as u32).to_le_bytes());
    out.extend_from_slice(&packed);
    out
}

/// The plain form of a stored block; `Err` says why it cannot be read.
pub(crate) fn decode(stored: &[u8]) -> Result<Vec<u8>, String> {
    let (&codec, rest) = stored.split_first().ok_or("empty block")?;
    if codec != CODEC_ZSTD {
        return Err(format!("unknown block codec {codec}"));
    }
    let len = rest.get(..4).ok_or("block header cut short")?;
    let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
    if len > MAX_PLAIN_BLOCK {
        return Err(format!("block claims {len} plain bytes"));
    }
    let plain = DECOMPRESSOR
        .with(|d| d.borrow_mut().decompress(&rest[4..], len))
        .map_err(|e| format!("block does not decompress: {e}"))?;
    if plain.len() != len {
        return Err(format!("block decompresses to {} bytes, not {len}", plain.len()));
    }
    Ok(plain)
}

/// Splits a block into its entries' bytes; `Err(i)` when the framing breaks at entry `i`.
pub(crate) fn split(raw: &[u8]) -> Result<Vec<&[u8]>, usize> {
    let mut out = Vec::new();
    let mut at = 0;
    while at < raw.len() {
        let Some(len) = raw.get(at..at + 4) else {
            return Err(out.len());
        };
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        let Some(e) = raw.get(at + 4..at + 4 + len) else {
            return Err(out.len());
        };
        out.push(e);
        at += 4 + len;
    }
    Ok(out)
}

fn corrupt(session: &SessionId, seq: u64, detail: impl Into<String>) -> ReadError {
    ReadError::Corrupted { session: *session, seq, detail: detail.into() }
}

/// Decodes one entry and checks that it is the one at `seq`.
pub(crate) fn decode_entry(session: &SessionId, seq: u64, raw: &[u8]) -> Result<LogEntry, ReadError> {
    let e = LogEntry::decode(raw).map_err(|e| corrupt(session, seq, format!("entry does not decode: {e}")))?;
    if e.seq != seq {
        return Err(corrupt(session, seq, format!("entry claims seq {}", e.seq)));
    }
    Ok(e)
}

/// The block holding `seq`: (first seq, plain bytes).
pub(crate) fn find(backend: &dyn Backend, session: &SessionId, seq: u64) -> Result<(u64, Vec<u8>), ReadError> {
    let start = keys::entry(session, 0);
    let end = keys::entry(session, seq.saturating_add(1));
    match backend.range_rev(&start, &end).next() {
        None => Err(corrupt(session, seq, "entry missing")),
        Some(kv) => {
            let (k, v) = kv?;
            let first = keys::be_u64(&k, 17);
            Ok((first, decode(&v).map_err(|e| corrupt(session, first, e))?))
        }
    }
}

/// Decodes the entry at `seq` out of its block.
pub(crate) fn entry_in(session: &SessionId, seq: u64, first: u64, raw: &[u8]) -> Result<LogEntry, ReadError> {
    let parts = split(raw).map_err(|i| corrupt(session, first + i as u64, "block framing broken"))?;
    let part = parts.get((seq - first) as usize).ok_or_else(|| corrupt(session, seq, "entry missing"))?;
    decode_entry(session, seq, part)
}

/// Reads one entry.
pub(crate) fn read_entry(backend: &dyn Backend, session: &SessionId, seq: u64) -> Result<LogEntry, ReadError> {
    let (first, raw) = find(backend, session, seq)?;
    entry_in(session, seq, first, &raw)
}

/// The Merkle node (`level`, `index`): stored from [`STORED_MIN_LEVEL`] up, recomputed from
/// the entries below it.
pub(crate) fn node_at(backend: &dyn Backend, session: &SessionId, level: u8, index: u64) -> Result<Hash, ReadError> {
    if level >= STORED_MIN_LEVEL {
        return backend
            .get(&keys::node(session, level, index))?
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| corrupt(session, index << level, format!("Merkle node ({level}, {index}) missing")));
    }
    let lo = index << level;
    let hi = (index + 1) << level;
    let mut leaves = Vec::with_capacity((hi - lo) as usize);
    let mut block: Option<(u64, Vec<u8>)> = None;
    for seq in lo + 1..=hi {
        let cached = block
            .as_ref()
            .is_some_and(|(first, raw)| seq >= *first && split(raw).is_ok_and(|p| ((seq - first) as usize) < p.len()));
        if !cached {
            block = Some(find(backend, session, seq)?);
        }
        let (first, raw) = block.as_ref().expect("block");
        leaves.push(merkle::leaf_hash(&entry_in(session, seq, *first, raw)?.entry_hash));
    }
    while leaves.len() > 1 {
        leaves = leaves.chunks(2).map(|p| merkle::node_hash(&p[0], &p[1])).collect();
    }
    Ok(leaves[0])
}

/// The (start, length) of each entry in a plain block; `Err(i)` when the framing breaks at
/// entry `i`.
fn offsets(raw: &[u8]) -> Result<Vec<(usize, usize)>, usize> {
    let mut out = Vec::with_capacity(raw.len() / 256);
    let mut at = 0;
    while at < raw.len() {
        let Some(len) = raw.get(at..at + 4) else {
            return Err(out.len());
        };
        let len = u32::from_le_bytes(len.try_into().expect("4 bytes")) as usize;
        if raw.len() < at + 4 + len {
            return Err(out.len());
        }
        out.push((at + 4, len));
        at += 4 + len;
    }
    Ok(out)
}

/// Streams entries with seq in `from..=to` from consecutive blocks, decoding each block once.
pub(crate) struct Cursor {
    session: SessionId,
    blocks: KvIter,
    /// The current block, plain, the offsets of its entries and the seq of its first one.
    plain: Vec<u8>,
    parts: Vec<(usize, usize)>,
    first: u64,
    pos: usize,
    next_seq: u64,
    to: u64,
    failed: bool,
}

impl Cursor {
    /// A cursor over `from..=to` (`from` ≥ 1).
    pub fn new(backend: &dyn Backend, session: &SessionId, from: u64, to: u64) -> Result<Cursor, ReadError> {
        let first = if from > to { from } else { find(backend, session, from)?.0 };
        let end = keys::entry(session, to.saturating_add(1));
        let blocks = backend.range(&keys::entry(session, first), &end);
        Ok(Cursor {
            session: *session,
            blocks,
            plain: Vec::new(),
            parts: Vec::new(),
            first: 0,
            pos: 0,
            next_seq: from,
            to,
            failed: false,
        })
    }

    fn fail(&mut self, e: ReadError) -> Option<Result<LogEntry, ReadError>> {
        self.failed = true;
        Some(Err(e))
    }
}

impl Iterator for Cursor {
    type Item = Result<LogEntry, ReadError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.failed || self.next_seq > self.to {
            return None;
        }
        loop {
            while self.pos < self.parts.len() {
                let seq = self.first + self.pos as u64;
                let (at, len) = self.parts[self.pos];
                self.pos += 1;
                if seq < self.next_seq {
                    continue; // before `from`, inside the first block
                }
                if seq > self.next_seq {
                    let missing = self.next_seq;
                    return self.fail(corrupt(&self.session, missing, "entry missing"));
                }
                self.next_seq += 1;
                let r = decode_entry(&self.session, seq, &self.plain[at..at + len]);
                self.failed = r.is_err();
                return Some(r);
            }
            let (k, stored) = match self.blocks.next() {
                None => {
                    let missing = self.next_seq;
                    return self.fail(corrupt(&self.session, missing, "entry missing"));
                }
                Some(Err(e)) => return self.fail(e.into()),
                Some(Ok(kv)) => kv,
            };
            let first = keys::be_u64(&k, 17);
            self.plain = match decode(&stored) {
                Ok(plain) => plain,
                Err(e) => return self.fail(corrupt(&self.session, first, e)),
            };
            self.parts = match offsets(&self.plain) {
                Ok(p) => p,
                Err(i) => return self.fail(corrupt(&self.session, first + i as u64, "block framing broken")),
            };
            (self.first, self.pos) = (first, 0);
            if first > self.next_seq {
                let missing = self.next_seq;
                return self.fail(corrupt(&self.session, missing, "entry missing"));
            }
        }
    }
}
