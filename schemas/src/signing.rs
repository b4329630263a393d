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
//! accepted on one path is accepted on all of them. Cofactored verification is the only rule
//! that batch verification can reproduce exactly; cofactorless ("strict") single verification
//! next to a batch check accepts different sets (see docs/PROTOCOL.md, "Signing").

use ed25519_dalek::{Signer, SigningKey};
use ed25519_zebra::{VerificationKey, VerificationKeyBytes};

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
    key: VerificationKey,
}

impl PublicKey {
    /// The key's 32 bytes, as given.
    pub fn to_bytes(&self) -> [u8; 32] {
        self.bytes
    }
}

/// Decodes a public key under the key rule.
pub fn public_key(bytes: &[u8; 32]) -> Result<PublicKey, SignatureError> {
    let point = curve25519_dalek::edwards::CompressedEdwardsY(*bytes).decompress().ok_or(SignatureError::InvalidKey)?;
    if point.compress().to_bytes() != *bytes {
        return Err(SignatureError::InvalidKey);
    }
    if point.is_small_order() {
        return Err(SignatureError::WeakKey);
    }
    let key = VerificationKey::try_from(*bytes).map_err(|_| SignatureError::InvalidKey)?;
    Ok(PublicKey { bytes: *bytes, key })
}

/// Decodes an author key under the key rule.
pub fn verifying_key(author: &AuthorKey) -> Result<PublicKey, SignatureError> {
    public_key(&author.0)
}

/// Verifies one signature over `message` (the rule above).
pub fn verify(key: &PublicKey, message: &[u8], signature: &[u8; 64]) -> Result<(), SignatureError> {
    let sig = ed25519_zebra::Signature::from_bytes(signature);
    key.key.verify(&sig, message).map_err(|_| SignatureError::BadSignature)
}

/// Batch-verifies signatures: true when every one is valid under the rule (a false `true` has
/// probability below 2^-128). On `false`, verify them one by one to find the bad ones.
pub fn verify_batch<'a>(items: impl IntoIterator<Item = (&'a PublicKey, &'a [u8], &'a [u8; 64])>) -> bool {
    let mut batch = ed25519_zebra::batch::Verifier::new();
    for (key, message, signature) in items {
        let sig = ed25519_zebra::Signature::from_bytes(signature);
        batch.queue((VerificationKeyBytes::from(key.bytes), sig, message));
    }
    batch.verify(rand::thread_rng()).is_ok()
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
    verify(key, &command_message(body), signature)
}

/// The author key of a signing key.
pub fn author_key(key: &SigningKey) -> AuthorKey {
    AuthorKey(key.verifying_key().to_bytes())
}
