//! The rules that do not depend on state: who may do what, and how each scope reconciles.
//!
//! The permission matrix, the scope rules and the default strategies are documented in
//! docs/PROTOCOL.md; the store enforces them at append time and the projector folds by them.

use crate::command::{CommandKind, ConflictStrategy, Role};
use crate::components::{Material, Mesh, Name, Parent, Selection, ToolState, Transform};
use crate::ids::{ComponentId, ComponentMeta};

/// Whether `role` may issue `kind`. `CreateSession` is never allowed inside an existing
/// session; it is checked separately (any key may create a new session and becomes its owner).
pub fn allowed(role: Role, kind: CommandKind) -> bool {
    use CommandKind as K;
    match kind {
        K::CreateSession => false,
        K::GrantRole | K::RevokeRole | K::SetConflictPolicy => role == Role::Owner,
        K::Select | K::Deselect => role >= Role::Viewer,
        K::CreateEntity
        | K::DeleteEntity
        | K::SetComponent
        | K::RemoveComponent
        | K::SetTransform
        | K::ChangeTool
        | K::MoveVertices
        | K::AddFaces
        | K::RemoveFaces
        | K::Rename
        | K::Reparent
        | K::SetMaterial => role >= Role::Editor,
    }
}

/// What a command kind's scope must look like.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ScopeRule {
    /// Entity 0, component 0.
    Session,
    /// Entity ≠ 0, component 0: the entity as a whole.
    Entity,
    /// Entity ≠ 0, component = this id.
    Component(ComponentId),
    /// Entity ≠ 0, any registered component other than Parent and Selection.
    AnyComponent,
}

/// The scope rule of a kind.
pub fn scope_rule(kind: CommandKind) -> ScopeRule {
    use CommandKind as K;
    match kind {
        K::CreateSession | K::GrantRole | K::RevokeRole | K::SetConflictPolicy => ScopeRule::Session,
        K::CreateEntity | K::DeleteEntity => ScopeRule::Entity,
        K::SetComponent | K::RemoveComponent => ScopeRule::AnyComponent,
        K::SetTransform => ScopeRule::Component(Transform::id()),
        K::Select | K::Deselect => ScopeRule::Component(Selection::id()),
        K::ChangeTool => ScopeRule::Component(ToolState::id()),
        K::MoveVertices | K::AddFaces | K::RemoveFaces => ScopeRule::Component(Mesh::id()),
        K::Rename => ScopeRule::Component(Name::id()),
        K::Reparent => ScopeRule::Component(Parent::id()),
        K::SetMaterial => ScopeRule::Component(Material::id()),
    }
}

/// The strategy a kind gets when no set-conflict-policy entry covers its component.
pub fn default_strategy(kind: CommandKind) -> ConflictStrategy {
    use CommandKind as K;
    match kind {
        K::Select | K::Deselect | K::AddFaces => ConflictStrategy::Merge,
        K::DeleteEntity | K::Reparent | K::RemoveFaces => ConflictStrategy::Reject,
        _ => ConflictStrategy::LastWriteWins,
    }
}
