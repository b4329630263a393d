//! Shared test helpers: authors that sign commands with automatic Lamport and nonce.

use ed25519_dalek::SigningKey;
use theta_schemas::components::{Component, Mesh};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::signing::author_key;
use theta_schemas::{AuthorKey, Command, CommandBody, CommandKind, ComponentId, Envelope, Role, SessionId, Shape};
use theta_store::{Receipt, Store, StoreConfig};

/// An author with its own key, Lamport clock and nonce counter.
pub struct Author {
    pub key: SigningKey,
    pub lamport: u64,
    pub nonce: u64,
}

impl Author {
    pub fn new(seed: u8) -> Author {
        Author { key: SigningKey::from_bytes(&[seed; 32]), lamport: 0, nonce: u64::from(seed) << 32 }
    }

    pub fn id(&self) -> AuthorKey {
        author_key(&self.key)
    }

    /// The next body for `command` on (`entity`, `component`) with `base_version`.
    pub fn body(
        &mut self,
        session: SessionId,
        entity: u64,
        component: ComponentId,
        base: u64,
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
            base_version: base,
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
        base: u64,
        command: Command,
    ) -> Vec<u8> {
        let body = self.body(session, entity, component, base, command);
        self.seal(&body)
    }
}

pub fn session(n: u8) -> SessionId {
    SessionId([n; 16])
}

/// A config without rate limiting surprises for functional tests.
pub fn relaxed() -> StoreConfig {
    StoreConfig { rate_per_sec: 1e9, rate_burst: 1e9, ..StoreConfig::default() }
}

/// The canonical scope component of a kind (0 for session and entity kinds).
pub fn scope_of(kind: CommandKind) -> ComponentId {
    match theta_store::policy::scope_rule(kind) {
        theta_store::policy::ScopeRule::Component(c) => c,
        theta_store::policy::ScopeRule::AnyComponent => theta_schemas::components::Name::id(),
        _ => ComponentId::NONE,
    }
}

pub fn triangle() -> Mesh {
    Mesh {
        positions: vec![[0.0; 3], [1.0, 0.0, 0.0], [0.0, 1.0, 0.0], [1.0, 1.0, 0.0]],
        indices: vec![0, 1, 2, 1, 3, 2],
    }
}

/// Creates a session owned by `owner`.
pub fn create_session(store: &Store, owner: &mut Author, s: SessionId) -> Receipt {
    store.append(&owner.cmd(s, 0, ComponentId::NONE, 0, Command::CreateSession { name: "test".into() })).unwrap()
}

pub fn grant(store: &Store, owner: &mut Author, s: SessionId, who: &Author, role: Role) -> Receipt {
    store.append(&owner.cmd(s, 0, ComponentId::NONE, 0, Command::GrantRole { key: who.id(), role })).unwrap()
}

pub fn create_entity(store: &Store, a: &mut Author, s: SessionId, entity: u64, parent: u64) -> Receipt {
    store
        .append(&a.cmd(
            s,
            entity,
            ComponentId::NONE,
            0,
            Command::CreateEntity { shape: Shape::Cube, name: format!("e{entity}"), parent },
        ))
        .unwrap()
}

pub fn set_mesh(store: &Store, a: &mut Author, s: SessionId, entity: u64) -> Receipt {
    store.append(&a.cmd(s, entity, Mesh::id(), 0, Command::SetComponent { data: triangle().encode() })).unwrap()
}

/// Every entry of a session, checking seq continuity.
pub fn all_entries(store: &Store, s: &SessionId) -> Vec<theta_schemas::LogEntry> {
    let entries: Vec<_> = store.read_range(s, 1, u64::MAX).unwrap().map(Result::unwrap).collect();
    for (i, e) in entries.iter().enumerate() {
        assert_eq!(e.seq, i as u64 + 1, "gapless seqs");
    }
    entries
}
