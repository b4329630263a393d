//! What the store hands out: receipts, heads, signed tree heads, rejections, proofs, import
//! errors.

use super::*;

/// Domain prefix of signed tree heads.
pub const TREE_HEAD_DOMAIN: &[u8] = b"theta/tree-head/v1\0";

/// The acknowledgement of an accepted append. Returned only once the entry is durable (in
/// the default [`Durability::Sync`] mode).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Receipt {
    /// The session.
    pub session: SessionId,
    /// The entry's seq.
    pub seq: u64,
    /// The command's Lamport timestamp.
    pub lamport: u64,
    /// The command's nonce.
    pub nonce: u64,
    /// The entry hash.
    pub entry_hash: Hash,
    /// Size of the tree the entry was committed in (≥ `seq`: the whole group commit).
    pub tree_size: u64,
    /// Root of that tree; `InclusionProof(seq, tree_size)` proves the entry against it.
    pub tree_root: Hash,
}

/// A session's head, as readers see it (durable entries only).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Head {
    /// The session.
    pub session: SessionId,
    /// Seq of the last entry (= tree size).
    pub seq: u64,
    /// The session's Lamport clock.
    pub clock: u64,
    /// Merkle root over entries `1..=seq`.
    pub tree_root: Hash,
    /// Hash of the last entry (zeros when empty).
    pub last_entry_hash: Hash,
    /// The session's name.
    pub name: String,
}

/// A tree head signed by the store's service key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SignedTreeHead {
    /// The session.
    pub session: SessionId,
    /// Tree size.
    pub tree_size: u64,
    /// Root.
    pub root: Hash,
    /// Store clock when signed, Unix ms.
    pub timestamp_ms: u64,
    /// Ed25519 signature over [`SignedTreeHead::message`].
    pub signature: [u8; 64],
    /// The service's public key.
    pub public_key: [u8; 32],
}

impl SignedTreeHead {
    /// The signed bytes: `TREE_HEAD_DOMAIN || session || tree_size (BE) || timestamp_ms (BE) || root`.
    pub fn message(session: &SessionId, tree_size: u64, timestamp_ms: u64, root: &Hash) -> Vec<u8> {
        let mut m = Vec::with_capacity(TREE_HEAD_DOMAIN.len() + 64);
        m.extend_from_slice(TREE_HEAD_DOMAIN);
        m.extend_from_slice(&session.0);
        m.extend_from_slice(&tree_size.to_be_bytes());
        m.extend_from_slice(&timestamp_ms.to_be_bytes());
        m.extend_from_slice(root);
        m
    }

    /// Checks the signature under `public_key` (the signing rule of every path).
    pub fn verify(&self) -> bool {
        let Ok(key) = theta_schemas::signing::public_key(&self.public_key) else {
            return false;
        };
        let msg = SignedTreeHead::message(&self.session, self.tree_size, self.timestamp_ms, &self.root);
        theta_schemas::signing::verify(&key, &msg, &self.signature).is_ok()
    }
}

/// One record of the rejection trail.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Rejection {
    /// Position in its trail (monotonic).
    pub index: u64,
    /// Store clock, Unix ms.
    pub time_ms: u64,
    /// The reason code.
    pub code: RejectionCode,
    /// The author, when the envelope decoded.
    pub author: Option<AuthorKey>,
    /// SHA-256 of the envelope bytes as received.
    pub envelope_hash: Hash,
    /// The error message.
    pub reason: String,
}

impl Rejection {
    pub(crate) fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(73 + self.reason.len());
        v.extend_from_slice(&self.time_ms.to_be_bytes());
        v.push(self.code as u8);
        v.extend_from_slice(&self.author.unwrap_or_default().0);
        v.extend_from_slice(&self.envelope_hash);
        v.extend_from_slice(self.reason.as_bytes());
        v
    }

    pub(crate) fn decode(index: u64, b: &[u8]) -> Option<Rejection> {
        if b.len() < 73 {
            return None;
        }
        let author = AuthorKey(b[9..41].try_into().ok()?);
        Some(Rejection {
            index,
            time_ms: keys::be_u64(b, 0),
            code: RejectionCode::from_u8(b[8])?,
            author: (author != AuthorKey::default()).then_some(author),
            envelope_hash: b[41..73].try_into().ok()?,
            reason: String::from_utf8_lossy(&b[73..]).into_owned(),
        })
    }
}

/// An RFC 6962 inclusion proof.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct InclusionProof {
    /// The entry's seq (leaf index + 1).
    pub seq: u64,
    /// Tree size the proof is for.
    pub tree_size: u64,
    /// The entry's leaf hash.
    pub leaf_hash: Hash,
    /// Audit path, bottom up.
    pub path: Vec<Hash>,
    /// Root of the tree of `tree_size`.
    pub root: Hash,
}

impl InclusionProof {
    /// Checks the proof against its own root.
    pub fn verify(&self) -> bool {
        merkle::verify_inclusion(&self.leaf_hash, self.seq - 1, self.tree_size, &self.path, &self.root)
    }
}

/// Why a trusted import failed. Nothing of the failing call is written.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum ImportError {
    /// An entry does not continue the chain (seq, previous hash or its own hash).
    #[error("entry at seq {seq} does not continue the chain: {detail}")]
    Chain {
        /// The entry's position.
        seq: u64,
        /// What does not match.
        detail: String,
    },
    /// An entry's command fails a check it must have passed when first accepted.
    #[error("entry at seq {seq} is not acceptable: {error}")]
    Rejected {
        /// The entry's position.
        seq: u64,
        /// The check that failed.
        #[source]
        error: AppendError,
    },
}
