//! Key layout of the store's single ordered keyspace.
//!
//! Every key starts with a one-byte tag and the 16-byte session id; integers are
//! big-endian so that byte order is numeric order. One keyspace (one sled tree) lets every
//! append be one atomic batch.
//!
//! | tag | rest of key | value | written |
//! | --- | --- | --- | --- |
//! | `E` | first seq | log block (see `blocks`): consecutive `LogEntry`s, compressed | acknowledgement path |
//! | `G` | page | Merkle node page: the 31 node hashes of levels 4–8 of leaves `page·256 ..` (lower ones are recomputed) | acknowledgement path, when the 256 leaves are complete |
//! | `N` | level (1), index | Merkle node hash, levels 9 and up | acknowledgement path |
//! | `S` | | session header (head seq, last hash, clock, name) | acknowledgement path |
//! | `M` | key (32) | role (1), granted at seq (8) | with the entry that changes it |
//! | `P` | component | conflict strategy (1) | with the entry that changes it |
//! | `Z` | | state checkpoint (Lamport values, versions, entities, tombstones, replay window) | every `state_checkpoint_every_entries` |
//! | `A` | author (32), last seq of the run | author index run: the author's seqs in the run | indexer, in the background |
//! | `I` | entity, last seq of the run | entity index run: the entity's seqs in the run | indexer, in the background |
//! | `W` | | index watermark: every entry up to this seq is in the runs | indexer, with its runs |
//! | `J` | index | rejection trail record | with the rejection |
//! | `C` | seq | projection checkpoint bytes | by the projector's owner |
//!
//! One key outside sessions: `F` (the byte alone) holds the on-disk format version.
//!
//! Replica marks (`R`, the all-zero session id, then the mark's key) hold what a replication
//! layer recorded with its last applied entry (`Store::submit_replicated`).
//!
//! The global rejection trail (rejections that name no known session) uses the all-zero
//! session id, which no session may have (a create-session command for it is invalid).

use theta_schemas::{AuthorKey, ComponentId, EntityId, SessionId};

/// Tags of the key kinds.
pub(crate) mod tag {
    pub const ENTRY: u8 = b'E';
    pub const NODE: u8 = b'N';
    pub const NODE_PAGE: u8 = b'G';
    pub const BY_AUTHOR: u8 = b'A';
    pub const BY_ENTITY: u8 = b'I';
    pub const WATERMARK: u8 = b'W';
    pub const META: u8 = b'S';
    pub const MEMBER: u8 = b'M';
    pub const POLICY: u8 = b'P';
    pub const STATE: u8 = b'Z';
    pub const TRAIL: u8 = b'J';
    pub const CHECKPOINT: u8 = b'C';
    pub const FORMAT: u8 = b'F';
    pub const REPLICA_MARK: u8 = b'R';
}

/// Builds a key from a tag, a session and parts.
pub(crate) struct Key(Vec<u8>);

impl Key {
    pub fn new(tag: u8, session: &SessionId) -> Key {
        let mut v = Vec::with_capacity(64);
        v.push(tag);
        v.extend_from_slice(&session.0);
        Key(v)
    }
    pub fn u64(mut self, x: u64) -> Key {
        self.0.extend_from_slice(&x.to_be_bytes());
        self
    }
    pub fn u8(mut self, x: u8) -> Key {
        self.0.push(x);
        self
    }
    pub fn bytes(mut self, b: &[u8]) -> Key {
        self.0.extend_from_slice(b);
        self
    }
    pub fn done(self) -> Vec<u8> {
        self.0
    }
}

pub(crate) fn replica_mark(key: u64) -> Vec<u8> {
    Key::new(tag::REPLICA_MARK, &SessionId::default()).u64(key).done()
}
pub(crate) fn entry(s: &SessionId, seq: u64) -> Vec<u8> {
    Key::new(tag::ENTRY, s).u64(seq).done()
}
pub(crate) fn node(s: &SessionId, level: u8, index: u64) -> Vec<u8> {
    Key::new(tag::NODE, s).u8(level).u64(index).done()
}
pub(crate) fn node_page(s: &SessionId, page: u64) -> Vec<u8> {
    Key::new(tag::NODE_PAGE, s).u64(page).done()
}
pub(crate) fn by_author(s: &SessionId, a: &AuthorKey, last: u64) -> Vec<u8> {
    Key::new(tag::BY_AUTHOR, s).bytes(&a.0).u64(last).done()
}
pub(crate) fn by_entity(s: &SessionId, e: EntityId, last: u64) -> Vec<u8> {
    Key::new(tag::BY_ENTITY, s).u64(e).u64(last).done()
}
pub(crate) fn watermark(s: &SessionId) -> Vec<u8> {
    Key::new(tag::WATERMARK, s).done()
}
pub(crate) fn meta(s: &SessionId) -> Vec<u8> {
    Key::new(tag::META, s).done()
}
pub(crate) fn member(s: &SessionId, a: &AuthorKey) -> Vec<u8> {
    Key::new(tag::MEMBER, s).bytes(&a.0).done()
}
pub(crate) fn policy(s: &SessionId, c: ComponentId) -> Vec<u8> {
    Key::new(tag::POLICY, s).u64(c.0).done()
}
pub(crate) fn state(s: &SessionId) -> Vec<u8> {
    Key::new(tag::STATE, s).done()
}
/// The format key.
pub(crate) const FORMAT: &[u8] = &[tag::FORMAT];
pub(crate) fn trail(s: &SessionId, idx: u64) -> Vec<u8> {
    Key::new(tag::TRAIL, s).u64(idx).done()
}
pub(crate) fn checkpoint(s: &SessionId, seq: u64) -> Vec<u8> {
    Key::new(tag::CHECKPOINT, s).u64(seq).done()
}

/// The prefix of every key with this tag and session.
pub(crate) fn prefix(tag: u8, s: &SessionId) -> Vec<u8> {
    Key::new(tag, s).done()
}

/// Reads a big-endian u64 at `at`.
pub(crate) fn be_u64(b: &[u8], at: usize) -> u64 {
    u64::from_be_bytes(b[at..at + 8].try_into().expect("8 bytes"))
}

/// The exclusive upper bound of all keys starting with `prefix`.
pub(crate) fn prefix_end(prefix: &[u8]) -> Vec<u8> {
    let mut end = prefix.to_vec();
    while let Some(last) = end.pop() {
        if last < 0xff {
            end.push(last + 1);
            return end;
        }
    }
    vec![0xff; prefix.len() + 1]
}

/// Reads little-endian fields off a byte slice.
pub(crate) struct Reader<'a>(pub &'a [u8]);

impl<'a> Reader<'a> {
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    pub fn u64(&mut self) -> Option<u64> {
        Some(u64::from_le_bytes(self.take(8)?.try_into().ok()?))
    }
    /// A count of items of at least `item_bytes` each, checked against what is left.
    pub fn count(&mut self, item_bytes: usize) -> Option<usize> {
        let n = usize::try_from(self.u64()?).ok()?;
        (n.checked_mul(item_bytes)? <= self.0.len()).then_some(n)
    }
}
