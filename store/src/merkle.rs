//! Entry hashes and the RFC 6962 Merkle tree over a session's entries.
//!
//! - Entry hash: `SHA-256("theta/entry/v1\0" || session (16) || seq (8, BE) ||
//!   receipt_time_ms (8, BE) || prev_hash (32) || envelope bytes)`.
//! - Leaf hash (RFC 6962): `SHA-256(0x00 || entry_hash)`; node hash:
//!   `SHA-256(0x01 || left || right)`; the root of the empty tree is `SHA-256("")`.
//! - Leaf `i` (0-based) is the entry with seq `i + 1`; a tree of size `n` covers seqs `1..=n`.
//!
//! The store keeps the hash of every complete, aligned subtree (`level`, `index`: leaves
//! `index·2^level .. (index+1)·2^level`), so any proof needs O(log n) reads. The proof
//! checkers here follow RFC 9162 §2.1.3.2 and §2.1.4.2 and need nothing from the store.

use sha2::{Digest, Sha256};
use theta_schemas::SessionId;

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

/// The right edge of a tree: the roots of its complete subtrees, one per set bit of the
/// size. Appending is O(1) amortized; the root is O(log n).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Frontier {
    size: u64,
    /// `levels[l]` is the root of the pending complete subtree of 2^l leaves, if any.
    levels: Vec<Option<Hash>>,
}

impl Frontier {
    /// An empty tree.
    pub fn new() -> Frontier {
        Frontier::default()
    }

    /// Number of leaves.
    pub fn size(&self) -> u64 {
        self.size
    }

    /// Appends a leaf hash; calls `completed(level, index, hash)` for every complete
    /// subtree this creates (the leaf itself at level 0, then any merged parents).
    pub fn push(&mut self, leaf: Hash, mut completed: impl FnMut(u8, u64, &Hash)) {
        let mut index = self.size;
        let mut carry = leaf;
        let mut level = 0usize;
        completed(0, index, &carry);
        loop {
            if self.levels.len() == level {
                self.levels.push(None);
            }
            match self.levels[level].take() {
                Some(left) => {
                    carry = node_hash(&left, &carry);
                    level += 1;
                    index /= 2;
                    completed(level as u8, index, &carry);
                }
                None => {
                    self.levels[level] = Some(carry);
                    break;
                }
            }
        }
        self.size += 1;
    }

    /// The tree root.
    pub fn root(&self) -> Hash {
        let mut acc: Option<Hash> = None;
        for h in self.levels.iter().flatten() {
            acc = Some(match acc {
                None => *h,
                Some(right) => node_hash(h, &right),
            });
        }
        acc.unwrap_or_else(empty_root)
    }

    /// Rebuilds the frontier of a tree of `size` leaves from stored complete subtrees.
    pub fn from_nodes<E>(size: u64, mut node: impl FnMut(u8, u64) -> Result<Hash, E>) -> Result<Frontier, E> {
        let mut levels = Vec::new();
        for level in 0..64u8 {
            if size >> level == 0 {
                break;
            }
            if (size >> level) & 1 == 1 {
                // The complete subtree at this level on the right edge.
                let index = (size >> level) - 1;
                levels.push(Some(node(level, index)?));
            } else {
                levels.push(None);
            }
        }
        Ok(Frontier { size, levels })
    }
}

fn largest_pow2_below(n: u64) -> u64 {
    debug_assert!(n > 1);
    1 << (63 - (n - 1).leading_zeros())
}

/// Computes proofs from stored complete subtrees.
pub struct Prover<F> {
    node: F,
}

impl<E, F: FnMut(u8, u64) -> Result<Hash, E>> Prover<F> {
    /// A prover reading complete subtree hashes with `node(level, index)`.
    pub fn new(node: F) -> Prover<F> {
        Prover { node }
    }

    /// MTH of leaves `[lo, hi)`, `hi > lo`.
    pub fn subtree(&mut self, lo: u64, hi: u64) -> Result<Hash, E> {
        let n = hi - lo;
        if n.is_power_of_two() && lo.is_multiple_of(n) {
            return (self.node)(n.trailing_zeros() as u8, lo / n);
        }
        let k = largest_pow2_below(n);
        let left = self.subtree(lo, lo + k)?;
        let right = self.subtree(lo + k, hi)?;
        Ok(node_hash(&left, &right))
    }

    /// RFC 6962 inclusion proof of leaf `index` in the tree of `size` leaves.
    pub fn inclusion(&mut self, index: u64, size: u64) -> Result<Vec<Hash>, E> {
        assert!(index < size, "leaf {index} outside a tree of {size}");
        let mut proof = Vec::new();
        self.path(index, 0, size, &mut proof)?;
        Ok(proof)
    }

    fn path(&mut self, m: u64, lo: u64, hi: u64, out: &mut Vec<Hash>) -> Result<(), E> {
        let n = hi - lo;
        if n == 1 {
            return Ok(());
        }
        let k = largest_pow2_below(n);
        if m < k {
            self.path(m, lo, lo + k, out)?;
            out.push(self.subtree(lo + k, hi)?);
        } else {
            self.path(m - k, lo + k, hi, out)?;
            out.push(self.subtree(lo, lo + k)?);
        }
        Ok(())
    }

    /// RFC 6962 consistency proof between trees of `old_size` and `new_size` leaves.
    pub fn consistency(&mut self, old_size: u64, new_size: u64) -> Result<Vec<Hash>, E> {
        assert!(old_size <= new_size, "old size {old_size} above new size {new_size}");
        let mut proof = Vec::new();
        if old_size == 0 || old_size == new_size {
            return Ok(proof);
        }
        self.subproof(old_size, 0, new_size, true, &mut proof)?;
        Ok(proof)
    }

    fn subproof(&mut self, m: u64, lo: u64, hi: u64, b: bool, out: &mut Vec<Hash>) -> Result<(), E> {
        let n = hi - lo;
        if m == n {
            if !b {
                out.push(self.subtree(lo, hi)?);
            }
            return Ok(());
        }
        let k = largest_pow2_below(n);
        if m <= k {
            self.subproof(m, lo, lo + k, b, out)?;
            out.push(self.subtree(lo + k, hi)?);
        } else {
            self.subproof(m - k, lo + k, hi, false, out)?;
            out.push(self.subtree(lo, lo + k)?);
        }
        Ok(())
    }
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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;

    use super::*;

    /// Reference MTH straight from RFC 6962's definition.
    fn mth(leaves: &[Hash]) -> Hash {
        match leaves.len() {
            0 => empty_root(),
            1 => leaves[0],
            n => {
                let k = largest_pow2_below(n as u64) as usize;
                node_hash(&mth(&leaves[..k]), &mth(&leaves[k..]))
            }
        }
    }

    #[test]
    fn frontier_proofs_and_checks_agree_with_the_definition() {
        let mut frontier = Frontier::new();
        let mut nodes: HashMap<(u8, u64), Hash> = HashMap::new();
        let mut leaves = Vec::new();
        let mut roots = vec![empty_root()];
        for i in 0..70u64 {
            let leaf = leaf_hash(&Sha256::digest(i.to_be_bytes()).into());
            leaves.push(leaf);
            frontier.push(leaf, |l, idx, h| {
                nodes.insert((l, idx), *h);
            });
            assert_eq!(frontier.root(), mth(&leaves), "size {}", i + 1);
            roots.push(frontier.root());
            let rebuilt = Frontier::from_nodes::<Infallible>(i + 1, |l, idx| Ok(nodes[&(l, idx)])).unwrap();
            assert_eq!(rebuilt, frontier);
        }
        let mut prover = Prover::new(|l, idx| Ok::<_, Infallible>(nodes[&(l, idx)]));
        for size in 1..=70u64 {
            for index in 0..size {
                let proof = prover.inclusion(index, size).unwrap();
                assert!(verify_inclusion(&leaves[index as usize], index, size, &proof, &roots[size as usize]));
                assert!(!verify_inclusion(&leaves[index as usize], index, size, &proof, &roots[size as usize - 1]));
            }
            for old in 0..=size {
                let proof = prover.consistency(old, size).unwrap();
                assert!(
                    verify_consistency(old, size, &roots[old as usize], &roots[size as usize], &proof),
                    "{old} -> {size}"
                );
                if old > 0 && old < size {
                    let mut bad = roots[old as usize];
                    bad[0] ^= 1;
                    assert!(!verify_consistency(old, size, &bad, &roots[size as usize], &proof));
                }
            }
        }
    }
}
