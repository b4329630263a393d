//! Signatures at the edges of the signing rule, for tests of every verification path.
//!
//! Test support (it signs only with the caller's own secret key). Each [`Edge`] makes a key and a signature of
//! one class that verifiers are known to disagree on (Chalkias, Garillot and Nikolaenko, "Taming
//! the many EdDSAs", 2020): `R` or `A` with a small-order component, small-order `R` or `A`,
//! non-canonical `S`. [`reference_verdict`] computes the rule's verdict independently of the
//! production path, straight from the curve arithmetic.

use curve25519_dalek::constants::{ED25519_BASEPOINT_POINT, EIGHT_TORSION};
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::IsIdentity;
use ed25519_dalek::SigningKey;
use sha2::{Digest, Sha512};

/// One class of signature.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Edge {
    /// An ordinary RFC 8032 signature.
    Honest,
    /// `R' = rB + T` with `T` the `i`-th 8-torsion point (1..8), `S = r + k'a`: holds
    /// cofactored, fails the cofactorless equation (the signature of the reported attack).
    TorsionR(usize),
    /// `R = T` (small order), `S = k·a`.
    SmallOrderR(usize),
    /// Key `A' = aB + T` (mixed order), signed honestly with `a`.
    MixedKey(usize),
    /// Key `A = T` (small order: a weak key), `R = T`, `S = 0`.
    SmallOrderKey(usize),
    /// An honest signature with `S + ℓ` in place of `S`.
    NonCanonicalS,
    /// An honest signature with one bit of `S` flipped.
    FlippedBit,
}

impl Edge {
    /// Every class, with every torsion point where the class takes one.
    pub fn all() -> Vec<Edge> {
        let mut v = vec![Edge::Honest, Edge::NonCanonicalS, Edge::FlippedBit];
        for i in 1..8 {
            v.extend([Edge::TorsionR(i), Edge::SmallOrderR(i), Edge::MixedKey(i)]);
        }
        v.extend((0..8).map(Edge::SmallOrderKey));
        v
    }
}

fn torsion(i: usize) -> EdwardsPoint {
    EIGHT_TORSION[i % 8]
}

/// The public key an author using `secret` presents for `edge`.
pub fn edge_key(secret: &SigningKey, edge: Edge) -> [u8; 32] {
    let a = secret.to_scalar();
    match edge {
        Edge::MixedKey(i) => (ED25519_BASEPOINT_POINT * a + torsion(i)).compress().to_bytes(),
        Edge::SmallOrderKey(i) => torsion(i).compress().to_bytes(),
        _ => secret.verifying_key().to_bytes(),
    }
}

fn challenge(r: &[u8; 32], key: &[u8; 32], message: &[u8]) -> Scalar {
    let mut h = Sha512::new();
    h.update(r);
    h.update(key);
    h.update(message);
    Scalar::from_bytes_mod_order_wide(&h.finalize().into())
}

fn nonce(secret: &SigningKey, message: &[u8]) -> Scalar {
    let mut h = Sha512::new();
    h.update(b"theta edge nonce");
    h.update(secret.to_bytes());
    h.update(message);
    Scalar::from_bytes_mod_order_wide(&h.finalize().into())
}

fn signature(r: &EdwardsPoint, s: &Scalar) -> [u8; 64] {
    let mut sig = [0u8; 64];
    sig[..32].copy_from_slice(r.compress().as_bytes());
    sig[32..].copy_from_slice(s.as_bytes());
    sig
}

/// Signs `message` as `edge` says, under the key [`edge_key`] gives.
pub fn sign_edge(secret: &SigningKey, message: &[u8], edge: Edge) -> [u8; 64] {
    let a = secret.to_scalar();
    let key = edge_key(secret, edge);
    let r = nonce(secret, message);
    let big_r = ED25519_BASEPOINT_POINT * r;
    match edge {
        Edge::Honest | Edge::MixedKey(_) => {
            let k = challenge(&big_r.compress().to_bytes(), &key, message);
            signature(&big_r, &(r + k * a))
        }
        Edge::TorsionR(i) => {
            let big_r = big_r + torsion(i);
            let k = challenge(&big_r.compress().to_bytes(), &key, message);
            signature(&big_r, &(r + k * a))
        }
        Edge::SmallOrderR(i) => {
            let big_r = torsion(i);
            let k = challenge(&big_r.compress().to_bytes(), &key, message);
            signature(&big_r, &(k * a))
        }
        Edge::SmallOrderKey(i) => signature(&torsion(i), &Scalar::ZERO),
        Edge::NonCanonicalS => {
            let mut sig = sign_edge(secret, message, Edge::Honest);
            add_group_order(&mut sig[32..]);
            sig
        }
        Edge::FlippedBit => {
            let mut sig = sign_edge(secret, message, Edge::Honest);
            sig[40] ^= 0x10;
            sig
        }
    }
}

/// Adds ℓ to a little-endian scalar (a canonical `S` stays below 2^253, so this cannot overflow).
fn add_group_order(s: &mut [u8]) {
    const L: [u8; 32] = [
        0xed, 0xd3, 0xf5, 0x5c, 0x1a, 0x63, 0x12, 0x58, 0xd6, 0x9c, 0xf7, 0xa2, 0xde, 0xf9, 0xde, 0x14, 0, 0, 0, 0, 0,
        0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0x10,
    ];
    let mut carry = 0u16;
    for (b, l) in s.iter_mut().zip(L) {
        let v = *b as u16 + l as u16 + carry;
        *b = v as u8;
        carry = v >> 8;
    }
}

/// The rule's verdict computed from the curve arithmetic alone: key canonical and not of small
/// order, `R` decompresses, `S` canonical, `[8]([S]B − R − [k]A)` is the identity.
pub fn reference_verdict(key: &[u8; 32], message: &[u8], sig: &[u8; 64]) -> bool {
    let Some(a) = CompressedEdwardsY(*key).decompress() else { return false };
    if a.compress().to_bytes() != *key || a.is_small_order() {
        return false;
    }
    let r_bytes: [u8; 32] = sig[..32].try_into().expect("32 bytes");
    let Some(r) = CompressedEdwardsY(r_bytes).decompress() else { return false };
    let Some(s) = Option::<Scalar>::from(Scalar::from_canonical_bytes(sig[32..].try_into().expect("32 bytes"))) else {
        return false;
    };
    let k = challenge(&r_bytes, key, message);
    (ED25519_BASEPOINT_POINT * s - r - a * k).mul_by_cofactor().is_identity()
}
