//! Entry hashes and RFC 6962 Merkle proofs over a session's entries: everything a client needs
//! to check what a server proves, without the store.
//!
//! - Entry hash: `SHA-256("theta/entry/v1\0" || session (16) || seq (8, BE) ||
//!   receipt_time_ms (8, BE) || prev_hash (32) || envelope bytes)`.
//! - Leaf hash (RFC 6962): `SHA-256(0x00 || entry_hash)`; node hash:
//!   `SHA-256(0x01 || left || right)`; the root of the empty tree is `SHA-256("")`.
//! - Leaf `i` (0-based) is the entry with seq `i + 1`; a tree of size `n` covers seqs `1..=n`.
//!
//! The proof checkers follow RFC 9162 §2.1.3.2 and §2.1.4.2. Building trees and proofs is the
//! store's (`theta_store::merkle`).

use sha2::{Digest, Sha256};

use crate::SessionId;

/// A 32-byte SHA-256 digest.
pub type Hash = [u8; 32];

/// Domain prefix of entry hashes.
pub const ENTRY_DOMAIN: &[u8] = b"theta/entry/v1\0";

/// The entry hash of a log entry.
pub fn entry_hash(session: &SessionId, seq: u64, receipt_time_ms: u64, prev_hash: &Hash, envelope: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(ENTRY_DOMAIN);
    h.update(session.0);
    h.update(seq.to_be_bytes());
    h.update(receipt_time_ms.to_be_bytes());
    h.update(prev_hash);
    h.update(envelope);
    h.finalize().into()
}

/// RFC 6962 leaf hash of an entry hash.
pub fn leaf_hash(entry_hash: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([0u8]);
    h.update(entry_hash);
    h.finalize().into()
}

/// RFC 6962 interior node hash.
pub fn node_hash(left: &Hash, right: &Hash) -> Hash {
    let mut h = Sha256::new();
    h.update([1u8]);
    h.update(left);
    h.update(right);
    h.finalize().into()
}

/// Root of the empty tree.
pub fn empty_root() -> Hash {
    Sha256::digest([]).into()
}

/// Checks an inclusion proof (RFC 9162 §2.1.3.2).
pub fn verify_inclusion(leaf: &Hash, index: u64, size: u64, proof: &[Hash], root: &Hash) -> bool {
    if index >= size {
        return false;
    }
    let (mut f_n, mut s_n) = (index, size - 1);
    let mut r = *leaf;
    for p in proof {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            r = node_hash(p, &r);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            r = node_hash(&r, p);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    s_n == 0 && r == *root
}

/// Checks a consistency proof (RFC 9162 §2.1.4.2).
pub fn verify_consistency(old_size: u64, new_size: u64, old_root: &Hash, new_root: &Hash, proof: &[Hash]) -> bool {
    if old_size > new_size {
        return false;
    }
    if old_size == new_size {
        return proof.is_empty() && old_root == new_root;
    }
    if old_size == 0 {
        return proof.is_empty();
    }
    if proof.is_empty() {
        return false;
    }
    let mut path: Vec<Hash> = proof.to_vec();
    if old_size.is_power_of_two() {
        path.insert(0, *old_root);
    }
    let (mut f_n, mut s_n) = (old_size - 1, new_size - 1);
    while f_n & 1 == 1 {
        f_n >>= 1;
        s_n >>= 1;
    }
    let (mut fr, mut sr) = (path[0], path[0]);
    for c in &path[1..] {
        if s_n == 0 {
            return false;
        }
        if f_n & 1 == 1 || f_n == s_n {
            fr = node_hash(c, &fr);
            sr = node_hash(c, &sr);
            if f_n & 1 == 0 {
                while f_n & 1 == 0 && f_n != 0 {
                    f_n >>= 1;
                    s_n >>= 1;
                }
            }
        } else {
            sr = node_hash(&sr, c);
        }
        f_n >>= 1;
        s_n >>= 1;
    }
    fr == *old_root && sr == *new_root && s_n == 0
}
