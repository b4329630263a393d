//! Test support shared by Theta's test suites (a dev-dependency only): scripted authors that
//! sign commands with their own key, Lamport clock and nonces.

use ed25519_dalek::SigningKey;
use theta_schemas::signing::author_key;
use theta_schemas::{AuthorKey, Command, CommandBody, ComponentId, Envelope, SessionId};

/// A deterministic key from one seed byte.
pub fn key(seed: u8) -> SigningKey {
    SigningKey::from_bytes(&[seed; 32])
}

/// An author with its own key, Lamport clock and nonce counter. Authors made from different
/// seeds never share a nonce.
pub struct Author {
    /// The signing key.
    pub key: SigningKey,
    /// The Lamport time of the last command made (the next is one more).
    pub lamport: u64,
    /// The nonce of the last command made (the next is one more).
    pub nonce: u64,
}

impl Author {
    /// The author of key [`key`]`(seed)`, at Lamport 0, nonces from `seed << 32`.
    pub fn new(seed: u8) -> Author {
        Author { key: key(seed), lamport: 0, nonce: u64::from(seed) << 32 }
    }

    /// The public key.
    pub fn id(&self) -> AuthorKey {
        author_key(&self.key)
    }

    /// The next body for `command` on (`entity`, `component`) with `base_version`.
    pub fn body(
        &mut self,
        session: SessionId,
        entity: u64,
        component: ComponentId,
        base_version: u64,
        command: Command,
    ) -> CommandBody {
        self.lamport += 1;
        self.nonce += 1;
        CommandBody {
            session,
            author: self.id(),
            lamport: self.lamport,
            nonce: self.nonce,
            wall_clock_ms: 0,
            entity,
            component,
            base_version,
            command,
        }
    }

    /// Signs a body and encodes the envelope.
    pub fn seal(&self, body: &CommandBody) -> Vec<u8> {
        Envelope::sign(body, &self.key).encode()
    }

    /// The next signed envelope.
    pub fn cmd(
        &mut self,
        session: SessionId,
        entity: u64,
        component: ComponentId,
        base_version: u64,
        command: Command,
    ) -> Vec<u8> {
        let body = self.body(session, entity, component, base_version, command);
        self.seal(&body)
    }
}
