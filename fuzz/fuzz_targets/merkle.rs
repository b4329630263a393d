//! The RFC 9162 inclusion and consistency proof checkers on arbitrary sizes, indexes and
//! paths: false, never a panic or a loop; and a proof of a real tree always checks.
#![no_main]

use libfuzzer_sys::fuzz_target;
use theta_schemas::merkle::{leaf_hash, node_hash, verify_consistency, verify_inclusion};

fn root(leaves: &[[u8; 32]]) -> [u8; 32] {
    match leaves.len() {
        1 => leaves[0],
        n => {
            let k = n.next_power_of_two() / 2;
            node_hash(&root(&leaves[..k]), &root(&leaves[k..]))
        }
    }
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 16 {
        return;
    }
    let a = u64::from_le_bytes(data[..8].try_into().unwrap());
    let b = u64::from_le_bytes(data[8..16].try_into().unwrap());
    let path: Vec<[u8; 32]> = data[16..].chunks_exact(32).map(|c| c.try_into().unwrap()).take(70).collect();
    let first = path.first().copied().unwrap_or([0; 32]);
    let _ = verify_inclusion(&first, a, b, &path, &first);
    let _ = verify_consistency(a, b, &first, &first, &path);
    // A real tree of up to 64 leaves: every leaf's audit path checks.
    let n = (a % 64) as usize + 1;
    let leaves: Vec<[u8; 32]> = (0..n).map(|i| leaf_hash(&[i as u8; 32])).collect();
    let r = root(&leaves);
    let i = (b % n as u64) as usize;
    let mut proof = Vec::new();
    let (mut lo, mut hi, mut idx) = (0usize, n, i);
    let mut stack = Vec::new();
    while hi - lo > 1 {
        let k = (hi - lo).next_power_of_two() / 2;
        if idx < k {
            stack.push(root(&leaves[lo + k..hi]));
            hi = lo + k;
        } else {
            stack.push(root(&leaves[lo..lo + k]));
            lo += k;
            idx -= k;
        }
    }
    while let Some(h) = stack.pop() {
        proof.push(h);
    }
    assert!(verify_inclusion(&leaves[i], i as u64, n as u64, &proof, &r), "leaf {i} of {n}");
});
