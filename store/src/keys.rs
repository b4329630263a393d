//! Key layout of the store's single ordered keyspace.
//!
//! Every key starts with a one-byte tag and the 16-byte session id; integers are
//! big-endian so that byte order is numeric order. One keyspace (one sled tree) lets every
//! append be one atomic batch.
//!
//! | tag | rest of key | value |
//! | --- | --- | --- |
//! | `E` | first seq | log block: consecutive `LogEntry`s, each behind a u32 LE length |
//! | `N` | level (1), index | Merkle node hash, levels 4 and up (lower ones are recomputed) |
//! | `A` | author (32), seq | empty: author index |
//! | `I` | entity, seq | empty: entity index |
//! | `K` | author (32), nonce | seq that used the nonce |
//! | `S` | | session meta (head seq, last hash, clock, name) |
//! | `M` | key (32) | role (1), granted at seq (8) |
//! | `P` | component | conflict strategy (1) |
//! | `L` | author (32) | author's last Lamport timestamp |
//! | `V` | entity, component | scope version |
//! | `X` | entity | parent (8), children (4): live entities |
//! | `D` | entity | seq of deletion: tombstones |
//! | `J` | index | rejection trail record |
//! | `C` | seq | projection checkpoint bytes |
//!
//! The global rejection trail (rejections that name no known session) uses the all-zero
//! session id, which no session may have (a create-session command for it is invalid).

use theta_schemas::{AuthorKey, ComponentId, EntityId, SessionId};

/// Tags of the key kinds.
pub(crate) mod tag {
    pub const ENTRY: u8 = b'E';
    pub const NODE: u8 = b'N';
    pub const BY_AUTHOR: u8 = b'A';
    pub const BY_ENTITY: u8 = b'I';
    pub const NONCE: u8 = b'K';
    pub const META: u8 = b'S';
    pub const MEMBER: u8 = b'M';
    pub const POLICY: u8 = b'P';
    pub const LAMPORT: u8 = b'L';
    pub const VERSION: u8 = b'V';
    pub const ENTITY: u8 = b'X';
    pub const DELETED: u8 = b'D';
    pub const TRAIL: u8 = b'J';
    pub const CHECKPOINT: u8 = b'C';
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

pub(crate) fn entry(s: &SessionId, seq: u64) -> Vec<u8> {
    Key::new(tag::ENTRY, s).u64(seq).done()
}
pub(crate) fn node(s: &SessionId, level: u8, index: u64) -> Vec<u8> {
    Key::new(tag::NODE, s).u8(level).u64(index).done()
}
pub(crate) fn by_author(s: &SessionId, a: &AuthorKey, seq: u64) -> Vec<u8> {
    Key::new(tag::BY_AUTHOR, s).bytes(&a.0).u64(seq).done()
}
pub(crate) fn by_entity(s: &SessionId, e: EntityId, seq: u64) -> Vec<u8> {
    Key::new(tag::BY_ENTITY, s).u64(e).u64(seq).done()
}
pub(crate) fn nonce(s: &SessionId, a: &AuthorKey, nonce: u64) -> Vec<u8> {
    Key::new(tag::NONCE, s).bytes(&a.0).u64(nonce).done()
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
pub(crate) fn lamport(s: &SessionId, a: &AuthorKey) -> Vec<u8> {
    Key::new(tag::LAMPORT, s).bytes(&a.0).done()
}
pub(crate) fn version(s: &SessionId, e: EntityId, c: ComponentId) -> Vec<u8> {
    Key::new(tag::VERSION, s).u64(e).u64(c.0).done()
}
pub(crate) fn entity(s: &SessionId, e: EntityId) -> Vec<u8> {
    Key::new(tag::ENTITY, s).u64(e).done()
}
pub(crate) fn deleted(s: &SessionId, e: EntityId) -> Vec<u8> {
    Key::new(tag::DELETED, s).u64(e).done()
}
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
