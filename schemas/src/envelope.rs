//! The signed envelope: the body bytes exactly as signed, and the signature.

use ed25519_dalek::SigningKey;
use flatbuffers::FlatBufferBuilder;

use crate::command::CommandBody;
use crate::decode::{DecodeError, Limits, fixed};
use crate::fb;
use crate::signing::{self, SignatureError};

/// A signed command as sent. The body stays as bytes: the signature covers them exactly.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Envelope {
    /// A finished `CommandBody` buffer (identifier `THCB`).
    pub body: Vec<u8>,
    /// Ed25519 signature over [`signing::command_message`] of `body`.
    pub signature: [u8; 64],
}

impl Envelope {
    /// Encodes `body` and signs it with `key`.
    ///
    /// The caller is responsible for `body.author` matching `key`; a mismatch produces an
    /// envelope that fails verification.
    pub fn sign(body: &CommandBody, key: &SigningKey) -> Envelope {
        let body = body.encode();
        let signature = signing::sign_command(key, &body);
        Envelope { body, signature }
    }

    /// Encodes the envelope (identifier `THEV`).
    pub fn encode(&self) -> Vec<u8> {
        let mut fbb = FlatBufferBuilder::with_capacity(self.body.len() + 128);
        let body = Some(fbb.create_vector(&self.body));
        let signature = Some(fbb.create_vector(&self.signature));
        let root = fb::Envelope::create(&mut fbb, &fb::EnvelopeArgs { body, signature });
        fb::finish_envelope_buffer(&mut fbb, root);
        fbb.finished_data().to_vec()
    }

    /// Decodes an envelope from outside bytes (the body is not decoded; see [`Envelope::open`]).
    pub fn decode(buf: &[u8]) -> Result<Envelope, DecodeError> {
        const T: &str = "Envelope";
        let e = Limits::COMMAND.root::<fb::Envelope>(buf, T, Some(fb::ENVELOPE_IDENTIFIER))?;
        let body = e.body().ok_or(DecodeError::MissingField { table: T, field: "body" })?;
        Ok(Envelope { body: body.bytes().to_vec(), signature: fixed(e.signature(), T, "signature")? })
    }

    /// Decodes an envelope and its body.
    pub fn open(buf: &[u8]) -> Result<(Envelope, CommandBody), DecodeError> {
        let envelope = Envelope::decode(buf)?;
        let body = CommandBody::decode(&envelope.body)?;
        Ok((envelope, body))
    }

    /// Verifies the signature under the body's author key (strict, weak keys rejected).
    pub fn verify(&self, body: &CommandBody) -> Result<(), SignatureError> {
        let key = signing::verifying_key(&body.author)?;
        signing::verify_command(&key, &self.body, &self.signature)
    }
}
