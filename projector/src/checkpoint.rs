//! Checkpoints: a projection with its fold state, zstd-compressed, for the store to keep.
//!
//! A checkpoint is a cache: deleting it changes only how long opening takes. A corrupt one is
//! detected (SHA-256 of its body, then the state hash of what it rebuilds) and refused.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! "THCK" | version u32 (=1) | session [16] | seq u64 | state_hash [32] | digest [32]
//!        | body_len u64 | zstd(body)
//! digest = SHA-256(session || seq || state_hash || body_len || zstd(body)): every byte is covered
//! body:  n_authors u32 | author [32]*          (every key named below, ascending)
//!        n_policies u32 | (component u64, strategy u8)*
//!        n_entities u64 | per entity, ascending id:
//!          id u64 | n_values u16 | (component u64, len u32, canonical bytes)*
//!          n_stamps u16 | (component u64, lamport u64, author index u32)*
//!          n_selection u16 | (author index u32, lamport u64, selected u8)*
//! ```

use sha2::{Digest, Sha256};
use theta_schemas::{AuthorKey, ComponentId, ConflictStrategy, SessionId};

use crate::hash::Hash;
use crate::projection::Projection;
use crate::values::Value;

const MAGIC: &[u8; 4] = b"THCK";
const VERSION: u32 = 1;
const HEADER: usize = 4 + 4 + 16 + 8 + 32 + 32 + 8;
/// Largest body a checkpoint may declare (1 GiB): a guard against absurd allocations.
const MAX_BODY: u64 = 1 << 30;

/// Why checkpoint bytes were refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum CheckpointError {
    /// Not a checkpoint of this version.
    #[error("not a version-1 Theta checkpoint")]
    NotACheckpoint,
    /// The body does not decompress or does not match its hash.
    #[error("checkpoint body is corrupt: {0}")]
    Corrupt(String),
    /// The rebuilt world's state hash differs from the checkpoint's.
    #[error("checkpoint rebuilds a different state")]
    StateMismatch,
}

fn digest(session: &SessionId, seq: u64, state_hash: &Hash, body_len: u64, packed: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(session.0);
    h.update(seq.to_le_bytes());
    h.update(state_hash);
    h.update(body_len.to_le_bytes());
    h.update(packed);
    h.finalize().into()
}

struct Writer(Vec<u8>);

impl Writer {
    fn u8(&mut self, x: u8) {
        self.0.push(x);
    }
    fn u16(&mut self, x: u16) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn u32(&mut self, x: u32) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn u64(&mut self, x: u64) {
        self.0.extend_from_slice(&x.to_le_bytes());
    }
    fn bytes(&mut self, b: &[u8]) {
        self.0.extend_from_slice(b);
    }
}

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl<'a> Reader<'a> {
    fn take(&mut self, n: usize) -> Result<&'a [u8], CheckpointError> {
        let end = self.at.checked_add(n).filter(|e| *e <= self.b.len());
        let end = end.ok_or_else(|| CheckpointError::Corrupt(format!("truncated at byte {}", self.at)))?;
        let s = &self.b[self.at..end];
        self.at = end;
        Ok(s)
    }
    fn u8(&mut self) -> Result<u8, CheckpointError> {
        Ok(self.take(1)?[0])
    }
    fn u16(&mut self) -> Result<u16, CheckpointError> {
        Ok(u16::from_le_bytes(self.take(2)?.try_into().expect("2")))
    }
    fn u32(&mut self) -> Result<u32, CheckpointError> {
        Ok(u32::from_le_bytes(self.take(4)?.try_into().expect("4")))
    }
    fn u64(&mut self) -> Result<u64, CheckpointError> {
        Ok(u64::from_le_bytes(self.take(8)?.try_into().expect("8")))
    }
    fn array<const N: usize>(&mut self) -> Result<[u8; N], CheckpointError> {
        Ok(self.take(N)?.try_into().expect("N"))
    }
}

impl Projection {
    /// Encodes the projection and its fold state as checkpoint bytes.
    pub fn checkpoint(&self) -> Vec<u8> {
        let mut w = Writer(Vec::with_capacity(1024));
        // Author keys repeat across stamps: write each once and refer to it by index.
        let mut authors = std::collections::BTreeSet::new();
        for r in self.entities.values() {
            authors.extend(r.stamps.values().map(|(_, a)| *a));
            authors.extend(r.selection.keys().copied());
        }
        let index: std::collections::BTreeMap<AuthorKey, u32> =
            authors.iter().enumerate().map(|(i, a)| (*a, i as u32)).collect();
        w.u32(authors.len() as u32);
        for a in &authors {
            w.bytes(&a.0);
        }
        w.u32(self.policies.len() as u32);
        for (c, s) in &self.policies {
            w.u64(c.0);
            w.u8(*s as u8);
        }
        w.u64(self.entities.len() as u64);
        for e in self.entities() {
            let r = &self.entities[&e];
            w.u64(e);
            w.u16(r.items.len() as u16);
            for c in r.items.keys() {
                let bytes = self.get(e, c).expect("present item").encode();
                w.u64(c.0);
                w.u32(bytes.len() as u32);
                w.bytes(&bytes);
            }
            w.u16(r.stamps.len() as u16);
            for (c, (lamport, author)) in r.stamps.iter() {
                w.u64(c.0);
                w.u64(*lamport);
                w.u32(index[author]);
            }
            w.u16(r.selection.len() as u16);
            for (author, (lamport, selected)) in &r.selection {
                w.u32(index[author]);
                w.u64(*lamport);
                w.u8(u8::from(*selected));
            }
        }
        let body = w.0;
        let packed = zstd::bulk::compress(&body, 3).expect("zstd compression of an in-memory buffer");
        let sha = digest(&self.session(), self.seq(), &self.state_hash(), body.len() as u64, &packed);
        let mut out = Vec::with_capacity(HEADER + packed.len());
        out.extend_from_slice(MAGIC);
        out.extend_from_slice(&VERSION.to_le_bytes());
        out.extend_from_slice(&self.session().0);
        out.extend_from_slice(&self.seq().to_le_bytes());
        out.extend_from_slice(&self.state_hash());
        out.extend_from_slice(&sha);
        out.extend_from_slice(&(body.len() as u64).to_le_bytes());
        out.extend_from_slice(&packed);
        out
    }

    /// Rebuilds a projection from checkpoint bytes, checking them on the way.
    pub fn from_checkpoint(bytes: &[u8]) -> Result<Projection, CheckpointError> {
        if bytes.len() < HEADER || &bytes[..4] != MAGIC || bytes[4..8] != VERSION.to_le_bytes() {
            return Err(CheckpointError::NotACheckpoint);
        }
        let mut h = Reader { b: bytes, at: 8 };
        let session = SessionId(h.array()?);
        let seq = h.u64()?;
        let state_hash: Hash = h.array()?;
        let sha: Hash = h.array()?;
        let body_len = h.u64()?;
        if body_len > MAX_BODY {
            return Err(CheckpointError::Corrupt(format!("declared body of {body_len} bytes")));
        }
        if digest(&session, seq, &state_hash, body_len, &bytes[HEADER..]) != sha {
            return Err(CheckpointError::Corrupt("digest mismatch".into()));
        }
        let body = zstd::bulk::decompress(&bytes[HEADER..], body_len as usize)
            .map_err(|e| CheckpointError::Corrupt(format!("zstd: {e}")))?;
        if body.len() as u64 != body_len {
            return Err(CheckpointError::Corrupt("body length mismatch".into()));
        }
        let mut r = Reader { b: &body, at: 0 };
        let mut p = Projection::new(session);
        p.begin_replay();
        // Deferred: flecs batches each entity's component adds into one table move.
        p.world().defer_begin();
        let parsed = read_body(&mut r, &mut p);
        p.world().defer_end();
        parsed?;
        if r.at != body.len() {
            return Err(CheckpointError::Corrupt("trailing bytes".into()));
        }
        p.set_seq(seq);
        p.link_hierarchy();
        p.end_replay();
        if p.state_hash() != state_hash {
            return Err(CheckpointError::StateMismatch);
        }
        Ok(p)
    }
}

/// Reads policies and entities into `p` (deferred by the caller).
fn read_body(r: &mut Reader<'_>, p: &mut Projection) -> Result<(), CheckpointError> {
    let n_authors = r.u32()? as usize;
    if n_authors > r.b.len() / 32 {
        return Err(CheckpointError::Corrupt(format!("{n_authors} authors declared")));
    }
    let mut authors = Vec::with_capacity(n_authors);
    for _ in 0..n_authors {
        authors.push(AuthorKey(r.array()?));
    }
    let author = |i: u32| {
        authors
            .get(i as usize)
            .copied()
            .ok_or_else(|| CheckpointError::Corrupt(format!("author index {i} out of range")))
    };
    for _ in 0..r.u32()? {
        let c = ComponentId(r.u64()?);
        let s = ConflictStrategy::ALL
            .get(usize::from(r.u8()?))
            .copied()
            .ok_or_else(|| CheckpointError::Corrupt("unknown strategy".into()))?;
        p.policies.insert(c, s);
    }
    let n = r.u64()?;
    let mut last = None;
    for _ in 0..n {
        let e = r.u64()?;
        if last.is_some_and(|l| l >= e) {
            return Err(CheckpointError::Corrupt("entities out of order".into()));
        }
        last = Some(e);
        p.spawn(e);
        for _ in 0..r.u16()? {
            let c = ComponentId(r.u64()?);
            let len = r.u32()? as usize;
            let bytes = r.take(len)?;
            let v = Value::decode(c, bytes).map_err(|err| CheckpointError::Corrupt(err.to_string()))?;
            // The stored bytes are hashed as they are: non-canonical ones change the state
            // hash, which is checked below.
            p.set_value_bytes(e, v, bytes);
        }
        for _ in 0..r.u16()? {
            let c = ComponentId(r.u64()?);
            let lamport = r.u64()?;
            let author = author(r.u32()?)?;
            if crate::slots::slot(c).is_none() {
                return Err(CheckpointError::Corrupt(format!("stamp of unknown component {c}")));
            }
            p.entities.get_mut(&e).expect("spawned").stamps.insert(c, (lamport, author));
        }
        for _ in 0..r.u16()? {
            let author = author(r.u32()?)?;
            let lamport = r.u64()?;
            let selected = r.u8()? != 0;
            p.entities.get_mut(&e).expect("spawned").selection.insert(author, (lamport, selected));
        }
    }
    Ok(())
}
