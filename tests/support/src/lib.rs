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

/// One signed, encoded envelope with every field chosen by the caller (for tests that script
/// Lamport times and nonces themselves; [`Author`] counts them for you). `base_version` is 0
/// and the wall clock unset.
pub fn envelope(
    key: &SigningKey,
    session: SessionId,
    lamport: u64,
    nonce: u64,
    entity: u64,
    component: ComponentId,
    command: Command,
) -> Vec<u8> {
    let body = CommandBody {
        session,
        author: author_key(key),
        lamport,
        nonce,
        wall_clock_ms: 0,
        entity,
        component,
        base_version: 0,
        command,
    };
    Envelope::sign(&body, key).encode()
}

/// The live benches' workload: editors each moving their own cubes in circles about their
/// homes on a square field (`gateway/benches/live.rs` over real connections,
/// `gateway/live/benches/fanout.rs` into the fan-out alone).
pub mod cubes {
    use theta_schemas::components::Transform;

    /// Editors.
    pub const EDITORS: u64 = 32;
    /// Cubes each editor moves (entities `editor * PER_EDITOR + 1 ..= (editor + 1) * PER_EDITOR`).
    pub const PER_EDITOR: u64 = 8;
    /// Side of the square field, metres.
    pub const FIELD: f32 = 160.0;

    /// Where cube `entity` rests: the cubes on a grid over the field.
    pub fn home(entity: u64) -> [f32; 3] {
        let side = ((EDITORS * PER_EDITOR) as f64).sqrt().ceil() as u64;
        let step = FIELD / side as f32;
        [(entity % side) as f32 * step - FIELD / 2.0, 1.0, (entity / side) as f32 * step - FIELD / 2.0]
    }

    /// Editor `editor`'s (from 0) `n`-th update: the cube it moves and its new transform.
    pub fn update(editor: u64, n: u64) -> (u64, Transform) {
        let entity = editor * PER_EDITOR + 1 + n % PER_EDITOR;
        let [x, y, z] = home(entity);
        let a = n as f32 * 0.05;
        let t = Transform {
            translation: [x + a.cos(), y, z + a.sin()],
            rotation: [0.0, (a / 2.0).sin(), 0.0, (a / 2.0).cos()],
            scale: [1.0; 3],
        };
        (entity, t)
    }
}
