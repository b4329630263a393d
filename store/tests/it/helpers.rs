//! Shared test helpers: authors that sign commands with automatic Lamport and nonce.

use theta_schemas::components::{Component, Mesh};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::{Command, CommandKind, ComponentId, Role, SessionId, Shape};
use theta_store::{Receipt, Store, StoreConfig};

pub use theta_testkit::Author;

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
