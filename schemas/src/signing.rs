//! The signing rule: which bytes are signed, and the one verification rule of every path.
//!
//! An author signs `COMMAND_DOMAIN || body`, where `body` is the exact byte string carried
//! in [`Envelope::body`](crate::Envelope) (a finished `CommandBody` buffer). The domain
//! prefix keeps a command signature from ever being valid for any other Theta message.
//!
//! **One rule.** A signature is valid when the key passes the key rule and the signature
//! satisfies ZIP-215: `S` canonical (< ℓ), `R` and `A` any encodings that decompress, and the
//! cofactored equation `[8][S]B = [8]R + [8][k]A` with `k = SHA-512(R ‖ A ‖ M)`. The key rule:
//! `A` is the canonical encoding of a curve point that is not of small order ("weak key").
//! Single verification ([`verify`]), batch verification ([`verify_batch`]), the audit's
//! re-verification, the handshake and the signed tree head all use this rule, so a signature
//! accepted on one path is accepted on all of them. The tests check it against an independent
//! ZIP-215 implementation (`ed25519-zebra`) and the speccheck vectors. Cofactored verification is the only rule
//! that batch verification can reproduce exactly; cofactorless ("strict") single verification
//! next to a batch check accepts different sets (see docs/PROTOCOL.md, "Signing").

use curve25519_dalek::constants::ED25519_BASEPOINT_POINT;
use curve25519_dalek::edwards::{CompressedEdwardsY, EdwardsPoint};
use curve25519_dalek::scalar::Scalar;
use curve25519_dalek::traits::{IsIdentity, VartimeMultiscalarMul};
use ed25519_dalek::{Signer, SigningKey};
use sha2::{Digest, Sha512};

use crate::command::AuthorKey;

pub mod edge;

/// Domain-separation prefix of command signatures: `theta/command/v1` and a zero byte.
pub const COMMAND_DOMAIN: &[u8] = b"theta/command/v1\0";

/// Why a signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The 32 bytes are not a canonical Ed25519 point encoding.
    #[error("public key is not a canonical Ed25519 point encoding")]
    InvalidKey,
    /// The key has small order: anyone could forge signatures that verify under it.
    #[error("public key is weak (small order)")]
    WeakKey,
    /// The signature does not verify under the key.
    #[error("signature does not verify")]
    BadSignature,
}

/// A public key that passed the key rule: canonical encoding, not of small order.
#[derive(Debug, Clone, Copy)]
pub struct PublicKey {
    bytes: [u8; 32],
    point: EdwardsPoint,
}

impl PublicKey {
    /// The key's 32 bytes.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.bytes
    }
}

/// Decodes a public key under the key rule.
pub fn public_key(bytes: &[u8; 32]) -> Result<PublicKey, SignatureError> {
    let point = CompressedEdwardsY(*bytes).decompress().ok_or(SignatureError::InvalidKey)?;
    if point.compress().to_bytes() != *bytes {
        return Err(SignatureError::InvalidKey);
    }
    if point.is_small_order() {
        return Err(SignatureError::WeakKey);
    }
    Ok(PublicKey { bytes: *bytes, point })
}

/// Decodes an author key under the key rule.
pub fn verifying_key(author: &AuthorKey) -> Result<PublicKey, SignatureError> {
    public_key(&author.0)
}

/// The parts of a signature that decode: `R` (any encoding that decompresses), canonical `S`,
/// and `k = SHA-512(R || A || message) mod ℓ`.
fn parts(key: &PublicKey, message: &[u8], signature: &[u8; 64]) -> Option<(EdwardsPoint, Scalar, Scalar)> {
    parts_of(key, &[message], signature)
}

/// [`parts`] of a message given in pieces (hashed in order, as if concatenated).
fn parts_of(key: &PublicKey, message: &[&[u8]], signature: &[u8; 64]) -> Option<(EdwardsPoint, Scalar, Scalar)> {
    let r_bytes: [u8; 32] = signature[..32].try_into().expect("32 bytes");
    let s_bytes: [u8; 32] = signature[32..].try_into().expect("32 bytes");
    let r = CompressedEdwardsY(r_bytes).decompress()?;
    let s = Option::<Scalar>::from(Scalar::from_canonical_bytes(s_bytes))?;
    let mut h = Sha512::new();
    h.update(r_bytes);
    h.update(key.bytes);
    for piece in message {
        h.update(piece);
    }
    let k = Scalar::from_bytes_mod_order_wide(&h.finalize().into());
    Some((r, s, k))
}

/// Verifies one signature over `message`: ZIP-215's cofactored equation
/// `[8]([S]B − R − [k]A) = 0`.
pub fn verify(key: &PublicKey, message: &[u8], signature: &[u8; 64]) -> Result<(), SignatureError> {
    let (r, s, k) = parts(key, message, signature).ok_or(SignatureError::BadSignature)?;
    equation(key, r, s, k)
}

/// The cofactored equation `[8]([S]B − R − [k]A) = 0`.
fn equation(key: &PublicKey, r: EdwardsPoint, s: Scalar, k: Scalar) -> Result<(), SignatureError> {
    let check = EdwardsPoint::vartime_double_scalar_mul_basepoint(&-k, &key.point, &s) - r;
    if check.mul_by_cofactor().is_identity() { Ok(()) } else { Err(SignatureError::BadSignature) }
}

/// Batch-verifies signatures: true when every one is valid under the rule (a false `true` has
/// probability below 2^-128). The check is `[8](Σ zᵢRᵢ + Σ zᵢkᵢAᵢ − (Σ zᵢSᵢ)B) = 0` with random
/// 128-bit `zᵢ`: the cofactored equation of each, so the verdict equals [`verify`]'s for every
/// member. On `false`, verify them one by one to find the bad ones.
pub fn verify_batch<'a>(items: impl IntoIterator<Item = (&'a PublicKey, &'a [u8], &'a [u8; 64])>) -> bool {
    batch_of(items.into_iter().map(|(k, m, s)| (k, [m, &[][..]], s)))
}

/// [`verify_batch`] of command signatures, given the command bodies (the signed message is
/// `COMMAND_DOMAIN || body`, hashed without building it).
pub fn verify_batch_commands<'a>(items: impl IntoIterator<Item = (&'a PublicKey, &'a [u8], &'a [u8; 64])>) -> bool {
    batch_of(items.into_iter().map(|(k, body, s)| (k, [COMMAND_DOMAIN, body], s)))
}

fn batch_of<'a>(items: impl Iterator<Item = (&'a PublicKey, [&'a [u8]; 2], &'a [u8; 64])>) -> bool {
    use rand::Rng as _;
    let items = items.into_iter();
    let mut rng = rand::thread_rng();
    let mut scalars = Vec::with_capacity(items.size_hint().0 + 1);
    let mut points = Vec::with_capacity(items.size_hint().0 + 1);
    // Signatures by the same key share its point: Σ zᵢkᵢA over them is one term (Σ zᵢkᵢ)A,
    // the same sum with fewer points (a store's batch holds many commands per author).
    let mut keys: std::collections::HashMap<[u8; 32], usize> = std::collections::HashMap::new();
    let mut key_terms: Vec<(Scalar, EdwardsPoint)> = Vec::new();
    let mut base = Scalar::ZERO;
    for (key, message, signature) in items {
        let Some((r, s, k)) = parts_of(key, &message, signature) else { return false };
        let z = Scalar::from(rng.r#gen::<u128>());
        base += z * s;
        scalars.push(z);
        points.push(r);
        let at = *keys.entry(key.bytes).or_insert_with(|| {
            key_terms.push((Scalar::ZERO, key.point));
            key_terms.len() - 1
        });
        key_terms[at].0 += z * k;
    }
    for (scalar, point) in key_terms {
        scalars.push(scalar);
        points.push(point);
    }
    scalars.push(-base);
    points.push(ED25519_BASEPOINT_POINT);
    EdwardsPoint::vartime_multiscalar_mul(scalars, points).mul_by_cofactor().is_identity()
}

/// The exact message signed for a command body: `COMMAND_DOMAIN || body`.
pub fn command_message(body: &[u8]) -> Vec<u8> {
    let mut msg = Vec::with_capacity(COMMAND_DOMAIN.len() + body.len());
    msg.extend_from_slice(COMMAND_DOMAIN);
    msg.extend_from_slice(body);
    msg
}

/// Signs a command body's bytes.
pub fn sign_command(key: &SigningKey, body: &[u8]) -> [u8; 64] {
    key.sign(&command_message(body)).to_bytes()
}

/// Verifies a command signature under an already decoded key.
pub fn verify_command(key: &PublicKey, body: &[u8], signature: &[u8; 64]) -> Result<(), SignatureError> {
    let (r, s, k) = parts_of(key, &[COMMAND_DOMAIN, body], signature).ok_or(SignatureError::BadSignature)?;
    equation(key, r, s, k)
}

/// The author key of a signing key.
pub fn author_key(key: &SigningKey) -> AuthorKey {
    AuthorKey(key.verifying_key().to_bytes())
}
