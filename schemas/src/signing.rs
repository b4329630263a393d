//! The signing rule: which bytes are signed, and strict verification.
//!
//! An author signs `COMMAND_DOMAIN || body`, where `body` is the exact byte string carried
//! in [`Envelope::body`](crate::Envelope) (a finished `CommandBody` buffer). The domain
//! prefix keeps a command signature from ever being valid for any other Theta message.
//! Verification is ed25519-dalek's `verify_strict` (rejects non-canonical and small-order
//! `R`), and keys of small order ("weak keys") are rejected outright.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};

use crate::command::AuthorKey;

/// Domain-separation prefix of command signatures: `theta/command/v1` and a zero byte.
pub const COMMAND_DOMAIN: &[u8] = b"theta/command/v1\0";

/// Why a signature was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum SignatureError {
    /// The 32 bytes are not a valid Ed25519 point encoding.
    #[error("public key is not a valid Ed25519 point")]
    InvalidKey,
    /// The key has small order: anyone could forge signatures that verify under it.
    #[error("public key is weak (small order)")]
    WeakKey,
    /// The signature does not verify under the key.
    #[error("signature does not verify")]
    BadSignature,
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

/// Decodes a public key, rejecting invalid points and weak keys.
pub fn verifying_key(author: &AuthorKey) -> Result<VerifyingKey, SignatureError> {
    let key = VerifyingKey::from_bytes(&author.0).map_err(|_| SignatureError::InvalidKey)?;
    if key.is_weak() {
        return Err(SignatureError::WeakKey);
    }
    Ok(key)
}

/// Strictly verifies a command signature under an already decoded key.
pub fn verify_command(key: &VerifyingKey, body: &[u8], signature: &[u8; 64]) -> Result<(), SignatureError> {
    let sig = Signature::from_bytes(signature);
    key.verify_strict(&command_message(body), &sig).map_err(|_| SignatureError::BadSignature)
}

/// The author key of a signing key.
pub fn author_key(key: &SigningKey) -> AuthorKey {
    AuthorKey(key.verifying_key().to_bytes())
}
