//! The RFC 6962 Merkle tree over a session's entries, as the store builds it: the frontier of an
//! append-only tree and proofs read from stored subtree hashes. The hashes and the proof
//! checkers are protocol, in [`theta_schemas::merkle`] (re-exported here).
//!
//! The store keeps the hash of every complete, aligned subtree (`level`, `index`: leaves
//! `index·2^level .. (index+1)·2^level`), so any proof needs O(log n) reads.

pub use theta_schemas::merkle::{
    ENTRY_DOMAIN, Hash, empty_root, entry_hash, leaf_hash, node_hash, verify_consistency, verify_inclusion,
};

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

#[cfg(test)]
mod tests {
    use std::collections::HashMap;
    use std::convert::Infallible;

    use sha2::{Digest, Sha256};

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
