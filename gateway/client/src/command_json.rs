//! Commands from JSON (docs/PROTOCOL.md, "CLI command JSON"): what `theta append` and scripts
//! send, turned into a [`Command`] with its entity, scope component and base version.

use serde_json::Value as Json;
use theta_schemas::components::{Material, Transform};
use theta_schemas::{AuthorKey, Command, ComponentId, ConflictStrategy, Role, Shape};

/// Why a JSON command description is refused (the message names the field and what is wrong).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{0}")]
pub struct CommandJsonError(pub String);

impl CommandJsonError {
    fn new(message: String) -> CommandJsonError {
        CommandJsonError(message)
    }
}

type Result<T> = std::result::Result<T, CommandJsonError>;

/// `context` / `with_context` for options and results, as the parsers below use them.
trait Ctx<T> {
    fn with_context(self, f: impl FnOnce() -> String) -> Result<T>;
    fn context(self, message: &str) -> Result<T>;
}

impl<T> Ctx<T> for Option<T> {
    fn with_context(self, f: impl FnOnce() -> String) -> Result<T> {
        self.ok_or_else(|| CommandJsonError(f()))
    }
    fn context(self, message: &str) -> Result<T> {
        self.ok_or_else(|| CommandJsonError(message.to_string()))
    }
}

impl<T, E: std::fmt::Display> Ctx<T> for std::result::Result<T, E> {
    fn with_context(self, f: impl FnOnce() -> String) -> Result<T> {
        self.map_err(|e| CommandJsonError(format!("{}: {e}", f())))
    }
    fn context(self, message: &str) -> Result<T> {
        self.map_err(|e| CommandJsonError(format!("{message}: {e}")))
    }
}

/// `x` as an `f32`, refused when it is not a number or lies beyond `f32`'s range (commands hold
/// finite numbers only; the store would refuse the signed envelope).
fn f32_of(x: &Json, field: &str) -> Result<f32> {
    let v = x.as_f64().with_context(|| format!("{field} must hold numbers"))? as f32;
    if !v.is_finite() {
        return Err(CommandJsonError::new(format!("{field}: {x} is beyond the range of a 32-bit float")));
    }
    Ok(v)
}

fn f32s<const N: usize>(j: &Json, field: &str, default: [f32; N]) -> Result<[f32; N]> {
    match j.get(field) {
        None => Ok(default),
        Some(v) => {
            let a = v.as_array().with_context(|| format!("{field} must be an array of {N} numbers"))?;
            if a.len() != N {
                return Err(CommandJsonError::new(format!("{field} must have {N} numbers")));
            }
            let mut out = [0f32; N];
            for (o, x) in out.iter_mut().zip(a) {
                *o = f32_of(x, field)?;
            }
            Ok(out)
        }
    }
}

fn u32s(j: &Json, field: &str) -> Result<Vec<u32>> {
    j.get(field)
        .and_then(Json::as_array)
        .with_context(|| format!("{field} must be an array of integers"))?
        .iter()
        .map(|x| x.as_u64().map(|v| v as u32).with_context(|| format!("{field} must hold integers")))
        .collect()
}

fn string(j: &Json, field: &str) -> Result<String> {
    Ok(j.get(field).and_then(Json::as_str).with_context(|| format!("{field} must be a string"))?.to_string())
}

fn component_named(name: &str) -> Result<ComponentId> {
    theta_schemas::registry()
        .iter()
        .find(|d| d.name == name || d.name.trim_start_matches("theta.") == name)
        .map(|d| d.id)
        .with_context(|| format!("unknown component {name:?}"))
}

/// A command from its JSON description (docs/PROTOCOL.md, "CLI command JSON").
pub fn command_from_json(j: &Json) -> Result<(u64, ComponentId, u64, Command)> {
    let kind = string(j, "kind")?;
    let kind = theta_schemas::CommandKind::parse(&kind).with_context(|| {
        let kinds: Vec<&str> = theta_schemas::CommandKind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown kind {kind:?}; the kinds are {}", kinds.join(", "))
    })?;
    let entity = j.get("entity").and_then(Json::as_u64).unwrap_or(0);
    let base = j.get("base_version").and_then(Json::as_u64).unwrap_or(0);
    let scope = |kind| match theta_schemas::policy::scope_rule(kind) {
        theta_schemas::policy::ScopeRule::Component(c) => c,
        _ => ComponentId::NONE,
    };
    let key = |field: &str| -> Result<AuthorKey> {
        let mut k = [0u8; 32];
        hex::decode_to_slice(string(j, field)?, &mut k).with_context(|| format!("{field} must be 64 hex digits"))?;
        Ok(AuthorKey(k))
    };
    use theta_schemas::CommandKind as K;
    let command = match kind {
        K::CreateSession => return Err(CommandJsonError::new("use `theta session create`".to_string())),
        K::GrantRole => {
            let role = string(j, "role")?;
            let role = Role::ALL
                .iter()
                .copied()
                .find(|r| r.name().eq_ignore_ascii_case(&role))
                .with_context(|| format!("unknown role {role:?}"))?;
            Command::GrantRole { key: key("key")?, role }
        }
        K::RevokeRole => Command::RevokeRole { key: key("key")? },
        K::SetConflictPolicy => {
            let strategy = string(j, "strategy")?.to_ascii_lowercase().replace(['-', '_'], "");
            let strategy = match strategy.as_str() {
                "lastwritewins" | "lww" => ConflictStrategy::LastWriteWins,
                "merge" => ConflictStrategy::Merge,
                "reject" => ConflictStrategy::Reject,
                other => return Err(CommandJsonError::new(format!("unknown strategy {other:?}"))),
            };
            Command::SetConflictPolicy { component: component_named(&string(j, "component")?)?, strategy }
        }
        K::CreateEntity => {
            let shape = j.get("shape").and_then(Json::as_str).unwrap_or("cube");
            let shape = Shape::ALL
                .iter()
                .copied()
                .find(|s| s.name().eq_ignore_ascii_case(shape))
                .with_context(|| format!("unknown shape {shape:?}"))?;
            Command::CreateEntity {
                shape,
                name: j.get("name").and_then(Json::as_str).unwrap_or("").to_string(),
                parent: j.get("parent").and_then(Json::as_u64).unwrap_or(0),
            }
        }
        K::DeleteEntity => Command::DeleteEntity,
        K::SetTransform => {
            let d = Transform::default();
            Command::SetTransform(Transform {
                translation: f32s(j, "translation", d.translation)?,
                rotation: f32s(j, "rotation", d.rotation)?,
                scale: f32s(j, "scale", d.scale)?,
            })
        }
        K::Select => Command::Select,
        K::Deselect => Command::Deselect,
        K::ChangeTool => Command::ChangeTool { tool: string(j, "tool")? },
        K::MoveVertices => {
            let indices = u32s(j, "indices")?;
            let positions = j
                .get("positions")
                .and_then(Json::as_array)
                .context("positions must be an array of [x, y, z]")?
                .iter()
                .map(|p| f32s::<3>(&serde_json::json!({ "p": p }), "p", [0.0; 3]))
                .collect::<Result<Vec<_>>>()?;
            if indices.len() != positions.len() {
                return Err(CommandJsonError::new("MoveVertices needs one position per index".into()));
            }
            Command::MoveVertices { indices, positions }
        }
        K::AddFaces => {
            let indices = u32s(j, "indices")?;
            if !indices.len().is_multiple_of(3) {
                return Err(CommandJsonError::new("AddFaces indices must hold 3 indices per triangle".into()));
            }
            Command::AddFaces { indices }
        }
        K::RemoveFaces => Command::RemoveFaces { faces: u32s(j, "faces")? },
        K::Rename => Command::Rename { name: string(j, "name")? },
        K::Reparent => Command::Reparent { parent: j.get("parent").and_then(Json::as_u64).unwrap_or(0) },
        K::SetMaterial => {
            let d = Material::default();
            Command::SetMaterial(Material {
                base_color: f32s(j, "base_color", d.base_color)?,
                metallic: j.get("metallic").map_or(Ok(d.metallic), |v| f32_of(v, "metallic"))?,
                roughness: j.get("roughness").map_or(Ok(d.roughness), |v| f32_of(v, "roughness"))?,
            })
        }
        K::RemoveComponent => {
            let c = component_named(&string(j, "component")?)?;
            return Ok((entity, c, base, Command::RemoveComponent));
        }
        K::SetComponent => {
            return Err(CommandJsonError::new(
                "SetComponent is not available from JSON; use the specific command (SetTransform, Rename, SetMaterial, ...)"
                    .to_string(),
            ));
        }
    };
    Ok((entity, scope(kind), base, command))
}
