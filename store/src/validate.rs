//! Stateless validation of a decoded command: scope shape and payload contents.

use theta_schemas::components::{Component, Material, Mesh, Name, Parent, Primitive, Selection, ToolState, Transform};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::signing::verifying_key;
use theta_schemas::{Command, CommandBody, ComponentId, SessionId};

use crate::error::AppendError;
use theta_schemas::policy::{ScopeRule, scope_rule};

fn invalid(body: &CommandBody, reason: impl Into<String>) -> AppendError {
    AppendError::Invalid { kind: body.command.kind(), reason: reason.into() }
}

/// Whether a component id is one of the registered components.
pub fn is_registered(id: ComponentId) -> bool {
    theta_schemas::registry().iter().any(|d| d.id == id)
}

/// Checks everything about a command that needs no session state.
pub fn validate(body: &CommandBody) -> Result<(), AppendError> {
    if body.session == SessionId::default() {
        return Err(invalid(body, "the all-zero session id is reserved"));
    }
    match scope_rule(body.command.kind()) {
        ScopeRule::Session => {
            if body.entity != 0 || body.component != ComponentId::NONE {
                return Err(invalid(body, "session commands must have entity 0 and component 0"));
            }
        }
        ScopeRule::Entity => {
            if body.entity == 0 || body.component != ComponentId::NONE {
                return Err(invalid(body, "entity commands need an entity id and component 0"));
            }
        }
        ScopeRule::Component(c) => {
            if body.entity == 0 || body.component != c {
                return Err(invalid(body, format!("scope must be a nonzero entity and component {c}")));
            }
        }
        ScopeRule::AnyComponent => {
            if body.entity == 0 || !is_registered(body.component) {
                return Err(invalid(body, "scope must be a nonzero entity and a registered component"));
            }
            if body.component == Parent::id() || body.component == Selection::id() {
                return Err(invalid(body, "Parent and Selection change only through Reparent and Select/Deselect"));
            }
        }
    }
    match &body.command {
        Command::GrantRole { key, role } => {
            verifying_key(key).map_err(|e| invalid(body, format!("grantee key: {e}")))?;
            if *role == theta_schemas::Role::None {
                return Err(invalid(body, "granting role None: use RevokeRole"));
            }
        }
        Command::SetConflictPolicy { component, .. }
            if *component != ComponentId::NONE && !is_registered(*component) =>
        {
            return Err(invalid(body, format!("unknown component {component}")));
        }
        Command::SetComponent { data } => {
            let c = body.component;
            let ok = if c == Transform::id() {
                Transform::decode(data).map(drop)
            } else if c == Name::id() {
                Name::decode(data).map(drop)
            } else if c == Mesh::id() {
                Mesh::decode(data).map(drop)
            } else if c == Material::id() {
                Material::decode(data).map(drop)
            } else if c == ToolState::id() {
                ToolState::decode(data).and_then(|t| {
                    if t.author == body.author {
                        Ok(())
                    } else {
                        Err(theta_schemas::DecodeError::InvalidValue {
                            field: "ToolState.author",
                            reason: "must be the command's author",
                        })
                    }
                })
            } else if c == Primitive::id() {
                Primitive::decode(data).map(drop)
            } else {
                unreachable!("scope rule admits only registered components")
            };
            ok.map_err(|e| invalid(body, format!("component bytes: {e}")))?;
        }
        _ => {}
    }
    Ok(())
}
