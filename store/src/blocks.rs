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
//! entries when a proof needs them. Levels 4 to 8 are stored as *node pages*: the 31 nodes of
//! levels 4..=8 inside one complete subtree of 256 leaves under one key (`G | session | page`),
//! written when the subtree completes; until then (the log's last, incomplete 256) they are
//! recomputed from the entries too. Levels from 9 up are stored one per key (`N`).

use theta_schemas::{LogEntry, SessionId};

use crate::backend::{Backend, KvIter};
use crate::error::ReadError;
use crate::keys;
use crate::merkle::{self, Hash};

/// Lowest Merkle level whose node hashes are stored.
pub(crate) const STORED_MIN_LEVEL: u8 = 4;
/// Highest level kept in node pages; levels above it are stored one node per key.
pub(crate) const PAGE_LEVEL: u8 = 8;
/// Node hashes in one page: 16 + 8 + 4 + 2 + 1.
pub(crate) const PAGE_NODES: usize = (1 << (PAGE_LEVEL - STORED_MIN_LEVEL + 1)) - 1;

/// The nodes of levels [`STORED_MIN_LEVEL`]..=[`PAGE_LEVEL`] of one subtree of 256 leaves,
/// level-major (the 16 level-4 nodes first, the subtree's root last).
pub(crate) type NodePage = [Hash; PAGE_NODES];

/// The page holding node (`level`, `index`) (`STORED_MIN_LEVEL <= level <= PAGE_LEVEL`), and
/// its slot in the page.
pub(crate) fn page_slot(level: u8, index: u64) -> (u64, usize) {
    let span = PAGE_LEVEL - level;
    let offset: usize = (STORED_MIN_LEVEL..level).map(|l| 1usize << (PAGE_LEVEL - l)).sum();
    (index >> span, offset + (index & ((1u64 << span) - 1)) as usize)
}

/// A node page's stored bytes: its hashes in order.
pub(crate) fn encode_page(page: &NodePage) -> Vec<u8> {
    page.concat()
}

/// Puts a completed node into `page`; returns the page's index once its root (level
/// [`PAGE_LEVEL`]) is in, i.e. when the page is complete.
pub(crate) fn fill_page(page: &mut NodePage, level: u8, index: u64, hash: &Hash) -> Option<u64> {
    if !(STORED_MIN_LEVEL..=PAGE_LEVEL).contains(&level) {
        return None;
    }
    let (p, slot) = page_slot(level, index);
    page[slot] = *hash;
    (level == PAGE_LEVEL).then_some(p)
}

/// The nodes of the log's incomplete last subtree of 256 leaves (a tree of `size` leaves),
/// recomputed from its entries: what the committer holds in memory until the page completes.
pub(crate) fn tail_page(backend: &dyn Backend, session: &SessionId, size: u64) -> Result<NodePage, ReadError> {
    let mut page = [[0u8; 32]; PAGE_NODES];
    let base = size - size % (1 << PAGE_LEVEL);
    let mut frontier = merkle::Frontier::new();
    if base < size {
        for e in Cursor::new(backend, session, base + 1, size)? {
            // Indexes relative to the subtree are indexes within page 0.
            frontier.push(merkle::leaf_hash(&e?.entry_hash), |level, index, h| {
                fill_page(&mut page, level, index, h);
            });
        }
    }
    Ok(page)
}

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
pub(crate) fn plain<E: AsRef<[u8]>>(entries: &[E]) -> Vec<u8> {
    let mut out = Vec::with_capacity(entries.iter().map(|e| e.as_ref().len() + 4).sum());
    for e in entries {
        let e = e.as_ref();
        out.extend_from_slice(&(e.len() as u32).to_le_bytes());
        out.extend_from_slice(e);
    }
    out
}

/// Splits consecutive encoded entries into blocks of at most `max_block_bytes` plain bytes
/// (an entry larger than that gets a block of its own): the ranges of `entries` per block.
pub(crate) fn layout<E: AsRef<[u8]>>(entries: &[E], max_block_bytes: usize) -> Vec<std::ops::Range<usize>> {
    let mut out = Vec::new();
    let (mut start, mut size) = (0, 0);
    for (i, e) in entries.iter().enumerate() {
        let len = e.as_ref().len() + 4;
        if i > start && size + len > max_block_bytes {
            out.push(start..i);
            start = i;
            size = 0;
        }
        size += len;
    }
    if start < entries.len() {
        out.push(start..entries.len());
    }
    out
}

/// Encodes entries as one stored (compressed) block.
pub(crate) fn encode<E: AsRef<[u8]>>(entries: &[E]) -> Vec<u8> {
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

/// A decoded block: its plain bytes and where each entry lies in them.
#[derive(Debug)]
pub(crate) struct Block {
    /// The seq of its first entry.
    pub first: u64,
    plain: Vec<u8>,
    parts: Vec<(usize, usize)>,
}

impl Block {
    /// Decodes a stored block whose first entry is `first`.
    fn open(session: &SessionId, first: u64, stored: &[u8]) -> Result<Block, ReadError> {
        let plain = decode(stored).map_err(|e| corrupt(session, first, e))?;
        let parts = offsets(&plain).map_err(|i| corrupt(session, first + i as u64, "block framing broken"))?;
        Ok(Block { first, plain, parts })
    }

    /// Whether it holds `seq`.
    pub fn contains(&self, seq: u64) -> bool {
        seq >= self.first && seq - self.first < self.parts.len() as u64
    }

    /// The entry at `seq`.
    pub fn entry(&self, session: &SessionId, seq: u64) -> Result<LogEntry, ReadError> {
        if !self.contains(seq) {
            return Err(corrupt(session, seq, "entry missing"));
        }
        let (at, len) = self.parts[(seq - self.first) as usize];
        decode_entry(session, seq, &self.plain[at..at + len])
    }

    fn bytes(&self) -> usize {
        self.plain.len() + self.parts.len() * 16 + 64
    }
}

/// The first seq of the block holding `seq` (its key), without reading the block.
pub(crate) fn find_key(backend: &dyn Backend, session: &SessionId, seq: u64) -> Result<u64, ReadError> {
    let start = keys::entry(session, 0);
    let end = keys::entry(session, seq.saturating_add(1));
    match backend.range_rev(&start, &end).next() {
        None => Err(corrupt(session, seq, "entry missing")),
        Some(kv) => Ok(keys::be_u64(&kv?.0, 17)),
    }
}

/// Decoded blocks kept for point reads (single entries, index hits, proofs), up to a byte
/// budget, oldest out first. Sequential scans do not go through it.
pub(crate) struct BlockCache {
    inner: std::sync::Mutex<CacheInner>,
    capacity: usize,
}

#[derive(Default)]
struct CacheInner {
    blocks: std::collections::HashMap<(SessionId, u64), std::sync::Arc<Block>>,
    order: std::collections::VecDeque<(SessionId, u64)>,
    bytes: usize,
}

impl BlockCache {
    /// A cache of at most `capacity` bytes (0: none).
    pub fn new(capacity: usize) -> BlockCache {
        BlockCache { inner: Default::default(), capacity }
    }

    /// Forgets every block (after storage was reopened).
    pub fn clear(&self) {
        *self.inner.lock().expect("block cache lock") = CacheInner::default();
    }

    fn get(&self, session: &SessionId, first: u64) -> Option<std::sync::Arc<Block>> {
        self.inner.lock().expect("block cache lock").blocks.get(&(*session, first)).cloned()
    }

    fn put(&self, session: &SessionId, block: std::sync::Arc<Block>) {
        let size = block.bytes();
        if size > self.capacity {
            return;
        }
        let mut c = self.inner.lock().expect("block cache lock");
        while c.bytes + size > self.capacity {
            let Some(old) = c.order.pop_front() else { break };
            if let Some(b) = c.blocks.remove(&old) {
                c.bytes -= b.bytes();
            }
        }
        if c.blocks.insert((*session, block.first), block.clone()).is_none() {
            c.order.push_back((*session, block.first));
            c.bytes += size;
        }
    }
}

/// The block holding `seq`, from `cache` when there.
pub(crate) fn load(
    backend: &dyn Backend,
    session: &SessionId,
    seq: u64,
    cache: Option<&BlockCache>,
) -> Result<std::sync::Arc<Block>, ReadError> {
    let first = find_key(backend, session, seq)?;
    if let Some(b) = cache.and_then(|c| c.get(session, first)) {
        return Ok(b);
    }
    let stored = backend.get(&keys::entry(session, first))?.ok_or_else(|| corrupt(session, seq, "entry missing"))?;
    let block = std::sync::Arc::new(Block::open(session, first, &stored)?);
    if let Some(c) = cache {
        c.put(session, block.clone());
    }
    Ok(block)
}

/// Reads one entry.
pub(crate) fn read_entry(
    backend: &dyn Backend,
    session: &SessionId,
    seq: u64,
    cache: Option<&BlockCache>,
) -> Result<LogEntry, ReadError> {
    load(backend, session, seq, cache)?.entry(session, seq)
}

/// The Merkle node (`level`, `index`): above [`PAGE_LEVEL`] from its key, from
/// [`STORED_MIN_LEVEL`] up from its node page, and recomputed from the entries below it where
/// no page holds it (low levels, and the incomplete last subtree of 256 leaves).
pub(crate) fn node_at(
    backend: &dyn Backend,
    session: &SessionId,
    level: u8,
    index: u64,
    cache: Option<&BlockCache>,
) -> Result<Hash, ReadError> {
    if level > PAGE_LEVEL {
        return backend
            .get(&keys::node(session, level, index))?
            .and_then(|v| v.try_into().ok())
            .ok_or_else(|| corrupt(session, index << level, format!("Merkle node ({level}, {index}) missing")));
    }
    if level >= STORED_MIN_LEVEL {
        let (page, slot) = page_slot(level, index);
        if let Some(raw) = backend.get(&keys::node_page(session, page))? {
            return raw
                .get(slot * 32..(slot + 1) * 32)
                .filter(|_| raw.len() == PAGE_NODES * 32)
                .map(|h| h.try_into().expect("32 bytes"))
                .ok_or_else(|| corrupt(session, page << PAGE_LEVEL, format!("Merkle node page {page} malformed")));
        }
    }
    let lo = index << level;
    let hi = (index + 1) << level;
    let mut leaves = Vec::with_capacity((hi - lo) as usize);
    let mut block: Option<std::sync::Arc<Block>> = None;
    for seq in lo + 1..=hi {
        if !block.as_ref().is_some_and(|b| b.contains(seq)) {
            block = Some(load(backend, session, seq, cache)?);
        }
        let b = block.as_ref().expect("loaded above");
        leaves.push(merkle::leaf_hash(&b.entry(session, seq)?.entry_hash));
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
        let first = if from > to { from } else { find_key(backend, session, from)? };
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::{MemoryBackend, WriteBatch};

    fn entry(seq: u64) -> Vec<u8> {
        LogEntry { seq, envelope: vec![seq as u8; 100], prev_hash: [0; 32], entry_hash: [1; 32], receipt_time_ms: 7 }
            .encode()
    }

    #[test]
    fn point_reads_come_from_the_cache_and_the_budget_evicts_the_oldest() {
        let backend = MemoryBackend::new();
        let s = SessionId([3; 16]);
        let mut b = WriteBatch::default();
        for first in [1u64, 11, 21] {
            let entries: Vec<Vec<u8>> = (first..first + 10).map(entry).collect();
            b.put(keys::entry(&s, first), encode(&entries));
        }
        backend.apply(b).unwrap();
        let one = Block::open(&s, 1, &backend.get(&keys::entry(&s, 1)).unwrap().unwrap()).unwrap().bytes();
        // Room for two blocks.
        let cache = BlockCache::new(2 * one + one / 2);
        let a = load(&backend, &s, 5, Some(&cache)).unwrap();
        assert_eq!(a.first, 1);
        assert!(std::sync::Arc::ptr_eq(&a, &load(&backend, &s, 9, Some(&cache)).unwrap()), "a hit");
        assert_eq!(read_entry(&backend, &s, 15, Some(&cache)).unwrap().envelope, vec![15u8; 100]);
        load(&backend, &s, 25, Some(&cache)).unwrap();
        // The third block pushed the first out: loading it again gives a new copy.
        assert!(!std::sync::Arc::ptr_eq(&a, &load(&backend, &s, 5, Some(&cache)).unwrap()));
        assert!(cache.inner.lock().unwrap().bytes <= 2 * one + one / 2);
        // Past the last block's entries: missing, not a wrong entry.
        assert!(matches!(read_entry(&backend, &s, 31, Some(&cache)), Err(ReadError::Corrupted { seq: 31, .. })));
    }
}
