//! The read credential: how a gRPC caller proves which key it holds.
//!
//! Every gRPC read carries, in the metadata entry [`CREDENTIAL_METADATA`] (`theta-auth`), a
//! credential made fresh for that call:
//!
//! ```text
//! v1.<key: 64 hex>.<issued_ms: decimal>.<nonce: 32 hex>.<signature: 128 hex>
//! ```
//!
//! The signature (the signing rule of [`crate::signing`]) covers
//!
//! ```text
//! "theta/read/v1" || 0x00 || method || 0x00 || session (16 bytes) || issued_ms (u64 BE) || nonce (16 bytes)
//! ```
//!
//! `method` is the gRPC path (`/theta.v1.ReplayService/ReadLog`), `session` the session the
//! request names (16 zero bytes when it names none). A server accepts a credential only within
//! its window around `issued_ms`, and only once: a captured credential is useless for another
//! method or session, a second time, or after its window.

use ed25519_dalek::{Signer, SigningKey};

use crate::command::{AuthorKey, SessionId};
use crate::signing::{self, SignatureError};

/// The gRPC metadata key that carries the credential.
pub const CREDENTIAL_METADATA: &str = "theta-auth";

/// Domain-separation prefix of read credentials.
pub const READ_DOMAIN: &[u8] = b"theta/read/v1\0";

/// A parsed credential (its signature not yet checked).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Credential {
    /// The caller's public key.
    pub key: AuthorKey,
    /// When the caller made it, Unix ms.
    pub issued_ms: u64,
    /// 16 random bytes, fresh for every call.
    pub nonce: [u8; 16],
    /// Signature over [`read_message`].
    pub signature: [u8; 64],
}

/// Why a credential string was not understood.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("malformed credential: {0} (expected v1.<key hex>.<issued_ms>.<nonce hex>.<signature hex>)")]
pub struct CredentialFormatError(pub &'static str);

/// The bytes a credential signs.
pub fn read_message(method: &str, session: Option<&SessionId>, issued_ms: u64, nonce: &[u8; 16]) -> Vec<u8> {
    let mut m = Vec::with_capacity(READ_DOMAIN.len() + method.len() + 1 + 16 + 8 + 16);
    m.extend_from_slice(READ_DOMAIN);
    m.extend_from_slice(method.as_bytes());
    m.push(0);
    m.extend_from_slice(&session.map_or([0; 16], |s| s.0));
    m.extend_from_slice(&issued_ms.to_be_bytes());
    m.extend_from_slice(nonce);
    m
}

impl Credential {
    /// Makes a credential for one call.
    pub fn sign(
        key: &SigningKey,
        method: &str,
        session: Option<&SessionId>,
        issued_ms: u64,
        nonce: [u8; 16],
    ) -> Credential {
        let signature = key.sign(&read_message(method, session, issued_ms, &nonce)).to_bytes();
        Credential { key: signing::author_key(key), issued_ms, nonce, signature }
    }

    /// The metadata value.
    pub fn encode(&self) -> String {
        format!(
            "v1.{}.{}.{}.{}",
            hex::encode(self.key.0),
            self.issued_ms,
            hex::encode(self.nonce),
            hex::encode(self.signature)
        )
    }

    /// Parses a metadata value.
    pub fn parse(s: &str) -> Result<Credential, CredentialFormatError> {
        let mut parts = s.trim().split('.');
        if parts.next() != Some("v1") {
            return Err(CredentialFormatError("unknown version"));
        }
        let mut field = |what: &'static str| parts.next().ok_or(CredentialFormatError(what));
        let key = fixed_hex::<32>(field("missing key")?).ok_or(CredentialFormatError("key is not 64 hex digits"))?;
        let issued = field("missing issued_ms")?;
        let issued_ms = issued
            .parse::<u64>()
            .ok()
            .filter(|_| issued.bytes().all(|b| b.is_ascii_digit()))
            .ok_or(CredentialFormatError("issued_ms is not a decimal number"))?;
        let nonce =
            fixed_hex::<16>(field("missing nonce")?).ok_or(CredentialFormatError("nonce is not 32 hex digits"))?;
        let signature = fixed_hex::<64>(field("missing signature")?)
            .ok_or(CredentialFormatError("signature is not 128 hex digits"))?;
        if parts.next().is_some() {
            return Err(CredentialFormatError("trailing fields"));
        }
        Ok(Credential { key: AuthorKey(key), issued_ms, nonce, signature })
    }

    /// Checks the signature for `method` and `session` (the signing rule, weak keys refused).
    pub fn verify(&self, method: &str, session: Option<&SessionId>) -> Result<(), SignatureError> {
        let key = signing::verifying_key(&self.key)?;
        signing::verify(&key, &read_message(method, session, self.issued_ms, &self.nonce), &self.signature)
    }
}

fn fixed_hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    let mut out = [0u8; N];
    hex::decode_to_slice(s, &mut out).ok()?;
    Some(out)
}
