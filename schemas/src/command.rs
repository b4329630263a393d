//! Commands: what an author signs ([`CommandBody`]) and every command kind ([`Command`]).

use std::fmt;

use flatbuffers::{FlatBufferBuilder, UnionWIPOffset, WIPOffset};

use crate::components::{Material, Transform};
use crate::decode::{DecodeError, Limits, finite, fixed, string};
use crate::fb;
use crate::ids::ComponentId;

/// Theta's stable entity id, chosen by the creating author (0 means "no entity").
pub type EntityId = u64;

/// A 16-byte session id, shown as 32 lowercase hex digits.
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct SessionId(pub [u8; 16]);

impl SessionId {
    /// Parses 32 hex digits.
    pub fn from_hex(s: &str) -> Result<SessionId, hex::FromHexError> {
        let mut out = [0u8; 16];
        hex::decode_to_slice(s, &mut out)?;
        Ok(SessionId(out))
    }
}

impl fmt::Display for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for SessionId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "SessionId({self})")
    }
}

/// An author's 32-byte Ed25519 public key, as carried in commands (not yet validated as a
/// curve point; the store does that when it first sees the key).
#[derive(Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct AuthorKey(pub [u8; 32]);

impl fmt::Display for AuthorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&hex::encode(self.0))
    }
}

impl fmt::Debug for AuthorKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "AuthorKey({})", &hex::encode(&self.0[..8]))
    }
}

/// Maps between an owned enum and its FlatBuffers counterpart, rejecting unknown values.
macro_rules! fb_enum {
    ($(#[$meta:meta])* $name:ident : $fb:ident { $($(#[$vmeta:meta])* $variant:ident),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
        pub enum $name { $($(#[$vmeta])* $variant),+ }

        impl $name {
            /// Every value, in wire order.
            pub const ALL: &'static [$name] = &[$($name::$variant),+];

            /// The stable name of the value.
            pub fn name(self) -> &'static str {
                match self { $($name::$variant => stringify!($variant)),+ }
            }

            pub(crate) fn to_fb(self) -> fb::$fb {
                match self { $($name::$variant => fb::$fb::$variant),+ }
            }

            pub(crate) fn from_fb(v: fb::$fb) -> Result<Self, DecodeError> {
                match v {
                    $(fb::$fb::$variant => Ok($name::$variant),)+
                    other => Err(DecodeError::UnknownEnum { enum_name: stringify!($name), value: other.0 }),
                }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.name())
            }
        }
    };
}

fb_enum! {
    /// The role a public key holds in a session; ordered by privilege.
    Role: Role {
        /// No role: every command is denied.
        None,
        /// May watch the session.
        Viewer,
        /// May watch and audit the session.
        Auditor,
        /// May edit the scene.
        Editor,
        /// May edit, and manage roles and conflict policy.
        Owner,
    }
}

fb_enum! {
    /// How concurrent commands on one scope are reconciled.
    ConflictStrategy: ConflictStrategy {
        /// The value with the highest (Lamport, author key) wins.
        LastWriteWins,
        /// Commands fold commutatively (set union and the like).
        Merge,
        /// A command is accepted only if its base version equals the scope's version.
        Reject,
    }
}

fb_enum! {
    /// Built-in primitive shapes.
    Shape: PrimitiveShape {
        /// Unit cube.
        Cube,
        /// Unit-diameter sphere.
        Sphere,
        /// Unit cylinder along Y.
        Cylinder,
        /// Unit plane in XZ.
        Plane,
        /// Unit cone along Y.
        Cone,
    }
}

/// Every command kind. Its payload travels in the body's `command` union.
#[derive(Debug, Clone, PartialEq)]
pub enum Command {
    /// Starts the session; its author becomes the owner.
    CreateSession {
        /// Human-readable session name.
        name: String,
    },
    /// Gives `key` a role.
    GrantRole {
        /// The grantee.
        key: AuthorKey,
        /// The role granted.
        role: Role,
    },
    /// Takes any role away from `key`.
    RevokeRole {
        /// The key losing its role.
        key: AuthorKey,
    },
    /// Sets the conflict strategy of every scope with `component`.
    SetConflictPolicy {
        /// The component whose scopes are configured.
        component: ComponentId,
        /// The new strategy.
        strategy: ConflictStrategy,
    },
    /// Creates the scope's entity.
    CreateEntity {
        /// Shape to render.
        shape: Shape,
        /// Initial name.
        name: String,
        /// Initial parent (0: root).
        parent: EntityId,
    },
    /// Deletes the scope's entity.
    DeleteEntity,
    /// Sets the scope's component to canonical bytes.
    SetComponent {
        /// Canonical FlatBuffers bytes of the component table.
        data: Vec<u8>,
    },
    /// Removes the scope's component.
    RemoveComponent,
    /// Sets the entity's local transform.
    SetTransform(Transform),
    /// Adds the author to the entity's selection.
    Select,
    /// Removes the author from the entity's selection.
    Deselect,
    /// Sets the author's active tool on the scope's entity.
    ChangeTool {
        /// Tool name.
        tool: String,
    },
    /// Moves mesh vertices.
    MoveVertices {
        /// Vertex indices.
        indices: Vec<u32>,
        /// New positions, one per index.
        positions: Vec<[f32; 3]>,
    },
    /// Appends triangles.
    AddFaces {
        /// Vertex indices, 3 per triangle.
        indices: Vec<u32>,
    },
    /// Removes triangles by face index.
    RemoveFaces {
        /// Face indices.
        faces: Vec<u32>,
    },
    /// Renames the entity.
    Rename {
        /// New name.
        name: String,
    },
    /// Moves the entity under a new parent.
    Reparent {
        /// New parent (0: root).
        parent: EntityId,
    },
    /// Sets the entity's material.
    SetMaterial(Material),
}

/// The kind of a [`Command`], without payload; the union tag on the wire.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
#[repr(u8)]
pub enum CommandKind {
    /// [`Command::CreateSession`].
    CreateSession = 1,
    /// [`Command::GrantRole`].
    GrantRole = 2,
    /// [`Command::RevokeRole`].
    RevokeRole = 3,
    /// [`Command::SetConflictPolicy`].
    SetConflictPolicy = 4,
    /// [`Command::CreateEntity`].
    CreateEntity = 5,
    /// [`Command::DeleteEntity`].
    DeleteEntity = 6,
    /// [`Command::SetComponent`].
    SetComponent = 7,
    /// [`Command::RemoveComponent`].
    RemoveComponent = 8,
    /// [`Command::SetTransform`].
    SetTransform = 9,
    /// [`Command::Select`].
    Select = 10,
    /// [`Command::Deselect`].
    Deselect = 11,
    /// [`Command::ChangeTool`].
    ChangeTool = 12,
    /// [`Command::MoveVertices`].
    MoveVertices = 13,
    /// [`Command::AddFaces`].
    AddFaces = 14,
    /// [`Command::RemoveFaces`].
    RemoveFaces = 15,
    /// [`Command::Rename`].
    Rename = 16,
    /// [`Command::Reparent`].
    Reparent = 17,
    /// [`Command::SetMaterial`].
    SetMaterial = 18,
}

impl CommandKind {
    /// Every kind, in tag order.
    pub const ALL: [CommandKind; 18] = [
        CommandKind::CreateSession,
        CommandKind::GrantRole,
        CommandKind::RevokeRole,
        CommandKind::SetConflictPolicy,
        CommandKind::CreateEntity,
        CommandKind::DeleteEntity,
        CommandKind::SetComponent,
        CommandKind::RemoveComponent,
        CommandKind::SetTransform,
        CommandKind::Select,
        CommandKind::Deselect,
        CommandKind::ChangeTool,
        CommandKind::MoveVertices,
        CommandKind::AddFaces,
        CommandKind::RemoveFaces,
        CommandKind::Rename,
        CommandKind::Reparent,
        CommandKind::SetMaterial,
    ];

    /// The union tag on the wire.
    pub fn tag(self) -> u8 {
        self as u8
    }

    /// The kind with this union tag, if any.
    pub fn from_tag(tag: u8) -> Option<CommandKind> {
        CommandKind::ALL.get(usize::from(tag).checked_sub(1)?).copied()
    }

    /// The stable name (the FlatBuffers table name).
    pub fn name(self) -> &'static str {
        fb::Command(self as u8).variant_name().expect("every kind is in the catalog")
    }

    /// Parses a stable name, ignoring ASCII case and `_`/`-` (`set_transform`, `SetTransform`).
    pub fn parse(s: &str) -> Option<CommandKind> {
        let norm = |x: &str| x.chars().filter(|c| *c != '_' && *c != '-').collect::<String>().to_ascii_lowercase();
        let want = norm(s);
        CommandKind::ALL.into_iter().find(|k| norm(k.name()) == want)
    }
}

impl fmt::Display for CommandKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

impl Command {
    /// This command's kind.
    pub fn kind(&self) -> CommandKind {
        match self {
            Command::CreateSession { .. } => CommandKind::CreateSession,
            Command::GrantRole { .. } => CommandKind::GrantRole,
            Command::RevokeRole { .. } => CommandKind::RevokeRole,
            Command::SetConflictPolicy { .. } => CommandKind::SetConflictPolicy,
            Command::CreateEntity { .. } => CommandKind::CreateEntity,
            Command::DeleteEntity => CommandKind::DeleteEntity,
            Command::SetComponent { .. } => CommandKind::SetComponent,
            Command::RemoveComponent => CommandKind::RemoveComponent,
            Command::SetTransform(_) => CommandKind::SetTransform,
            Command::Select => CommandKind::Select,
            Command::Deselect => CommandKind::Deselect,
            Command::ChangeTool { .. } => CommandKind::ChangeTool,
            Command::MoveVertices { .. } => CommandKind::MoveVertices,
            Command::AddFaces { .. } => CommandKind::AddFaces,
            Command::RemoveFaces { .. } => CommandKind::RemoveFaces,
            Command::Rename { .. } => CommandKind::Rename,
            Command::Reparent { .. } => CommandKind::Reparent,
            Command::SetMaterial(_) => CommandKind::SetMaterial,
        }
    }

    fn encode<'a>(&self, fbb: &mut FlatBufferBuilder<'a>) -> WIPOffset<UnionWIPOffset> {
        match self {
            Command::CreateSession { name } => {
                let name = Some(fbb.create_string(name));
                fb::CreateSession::create(fbb, &fb::CreateSessionArgs { name }).as_union_value()
            }
            Command::GrantRole { key, role } => {
                let key = Some(fbb.create_vector(&key.0));
                fb::GrantRole::create(fbb, &fb::GrantRoleArgs { key, role: role.to_fb() }).as_union_value()
            }
            Command::RevokeRole { key } => {
                let key = Some(fbb.create_vector(&key.0));
                fb::RevokeRole::create(fbb, &fb::RevokeRoleArgs { key }).as_union_value()
            }
            Command::SetConflictPolicy { component, strategy } => fb::SetConflictPolicy::create(
                fbb,
                &fb::SetConflictPolicyArgs { component: component.0, strategy: strategy.to_fb() },
            )
            .as_union_value(),
            Command::CreateEntity { shape, name, parent } => {
                let name = Some(fbb.create_string(name));
                fb::CreateEntity::create(fbb, &fb::CreateEntityArgs { shape: shape.to_fb(), name, parent: *parent })
                    .as_union_value()
            }
            Command::DeleteEntity => fb::DeleteEntity::create(fbb, &fb::DeleteEntityArgs {}).as_union_value(),
            Command::SetComponent { data } => {
                let data = Some(fbb.create_vector(data));
                fb::SetComponent::create(fbb, &fb::SetComponentArgs { data }).as_union_value()
            }
            Command::RemoveComponent => fb::RemoveComponent::create(fbb, &fb::RemoveComponentArgs {}).as_union_value(),
            Command::SetTransform(t) => {
                let (translation, rotation, scale) = t.to_fb();
                fb::SetTransform::create(
                    fbb,
                    &fb::SetTransformArgs {
                        translation: Some(&translation),
                        rotation: Some(&rotation),
                        scale: Some(&scale),
                    },
                )
                .as_union_value()
            }
            Command::Select => fb::Select::create(fbb, &fb::SelectArgs {}).as_union_value(),
            Command::Deselect => fb::Deselect::create(fbb, &fb::DeselectArgs {}).as_union_value(),
            Command::ChangeTool { tool } => {
                let tool = Some(fbb.create_string(tool));
                fb::ChangeTool::create(fbb, &fb::ChangeToolArgs { tool }).as_union_value()
            }
            Command::MoveVertices { indices, positions } => {
                let indices = Some(fbb.create_vector(indices));
                let ps: Vec<fb::Vec3> = positions.iter().map(|p| fb::Vec3::new(p[0], p[1], p[2])).collect();
                let positions = Some(fbb.create_vector(&ps));
                fb::MoveVertices::create(fbb, &fb::MoveVerticesArgs { indices, positions }).as_union_value()
            }
            Command::AddFaces { indices } => {
                let indices = Some(fbb.create_vector(indices));
                fb::AddFaces::create(fbb, &fb::AddFacesArgs { indices }).as_union_value()
            }
            Command::RemoveFaces { faces } => {
                let faces = Some(fbb.create_vector(faces));
                fb::RemoveFaces::create(fbb, &fb::RemoveFacesArgs { faces }).as_union_value()
            }
            Command::Rename { name } => {
                let name = Some(fbb.create_string(name));
                fb::Rename::create(fbb, &fb::RenameArgs { name }).as_union_value()
            }
            Command::Reparent { parent } => {
                fb::Reparent::create(fbb, &fb::ReparentArgs { parent: *parent }).as_union_value()
            }
            Command::SetMaterial(m) => {
                let base_color = m.base_color_fb();
                fb::SetMaterial::create(
                    fbb,
                    &fb::SetMaterialArgs {
                        base_color: Some(&base_color),
                        metallic: m.metallic,
                        roughness: m.roughness,
                    },
                )
                .as_union_value()
            }
        }
    }

    fn decode(b: &fb::CommandBody<'_>) -> Result<Command, DecodeError> {
        const T: &str = "CommandBody";
        let tag = b.command_type();
        let missing = || DecodeError::MissingField { table: T, field: "command" };
        let kind = CommandKind::from_tag(tag.0).ok_or(DecodeError::UnknownVariant { union: "Command", tag: tag.0 })?;
        Ok(match kind {
            CommandKind::CreateSession => {
                let c = b.command_as_create_session().ok_or_else(missing)?;
                Command::CreateSession { name: string(c.name(), "CreateSession", "name")? }
            }
            CommandKind::GrantRole => {
                let c = b.command_as_grant_role().ok_or_else(missing)?;
                Command::GrantRole {
                    key: AuthorKey(fixed(c.key(), "GrantRole", "key")?),
                    role: Role::from_fb(c.role())?,
                }
            }
            CommandKind::RevokeRole => {
                let c = b.command_as_revoke_role().ok_or_else(missing)?;
                Command::RevokeRole { key: AuthorKey(fixed(c.key(), "RevokeRole", "key")?) }
            }
            CommandKind::SetConflictPolicy => {
                let c = b.command_as_set_conflict_policy().ok_or_else(missing)?;
                Command::SetConflictPolicy {
                    component: ComponentId(c.component()),
                    strategy: ConflictStrategy::from_fb(c.strategy())?,
                }
            }
            CommandKind::CreateEntity => {
                let c = b.command_as_create_entity().ok_or_else(missing)?;
                Command::CreateEntity {
                    shape: Shape::from_fb(c.shape())?,
                    name: c.name().unwrap_or_default().to_owned(),
                    parent: c.parent(),
                }
            }
            CommandKind::DeleteEntity => {
                b.command_as_delete_entity().ok_or_else(missing)?;
                Command::DeleteEntity
            }
            CommandKind::SetComponent => {
                let c = b.command_as_set_component().ok_or_else(missing)?;
                let data = c.data().ok_or(DecodeError::MissingField { table: "SetComponent", field: "data" })?;
                Command::SetComponent { data: data.bytes().to_vec() }
            }
            CommandKind::RemoveComponent => {
                b.command_as_remove_component().ok_or_else(missing)?;
                Command::RemoveComponent
            }
            CommandKind::SetTransform => {
                let c = b.command_as_set_transform().ok_or_else(missing)?;
                Command::SetTransform(Transform::from_fb(c.translation(), c.rotation(), c.scale())?)
            }
            CommandKind::Select => {
                b.command_as_select().ok_or_else(missing)?;
                Command::Select
            }
            CommandKind::Deselect => {
                b.command_as_deselect().ok_or_else(missing)?;
                Command::Deselect
            }
            CommandKind::ChangeTool => {
                let c = b.command_as_change_tool().ok_or_else(missing)?;
                Command::ChangeTool { tool: string(c.tool(), "ChangeTool", "tool")? }
            }
            CommandKind::MoveVertices => {
                let c = b.command_as_move_vertices().ok_or_else(missing)?;
                let indices: Vec<u32> = c.indices().map(|v| v.iter().collect()).unwrap_or_default();
                let positions: Vec<[f32; 3]> =
                    c.positions().map(|v| v.iter().map(|p| [p.x(), p.y(), p.z()]).collect()).unwrap_or_default();
                if indices.len() != positions.len() {
                    return Err(DecodeError::InvalidValue {
                        field: "MoveVertices.positions",
                        reason: "must have one position per index",
                    });
                }
                finite(positions.as_flattened(), "MoveVertices.positions")?;
                Command::MoveVertices { indices, positions }
            }
            CommandKind::AddFaces => {
                let c = b.command_as_add_faces().ok_or_else(missing)?;
                let indices: Vec<u32> = c.indices().map(|v| v.iter().collect()).unwrap_or_default();
                if !indices.len().is_multiple_of(3) {
                    return Err(DecodeError::InvalidValue {
                        field: "AddFaces.indices",
                        reason: "must hold 3 indices per triangle",
                    });
                }
                Command::AddFaces { indices }
            }
            CommandKind::RemoveFaces => {
                let c = b.command_as_remove_faces().ok_or_else(missing)?;
                Command::RemoveFaces { faces: c.faces().map(|v| v.iter().collect()).unwrap_or_default() }
            }
            CommandKind::Rename => {
                let c = b.command_as_rename().ok_or_else(missing)?;
                Command::Rename { name: string(c.name(), "Rename", "name")? }
            }
            CommandKind::Reparent => {
                let c = b.command_as_reparent().ok_or_else(missing)?;
                Command::Reparent { parent: c.parent() }
            }
            CommandKind::SetMaterial => {
                let c = b.command_as_set_material().ok_or_else(missing)?;
                Command::SetMaterial(Material::from_fb(c.base_color(), c.metallic(), c.roughness())?)
            }
        })
    }
}

/// Everything an author signs: the scope, the clocks, the nonce and the command.
#[derive(Debug, Clone, PartialEq)]
pub struct CommandBody {
    /// Session the command belongs to.
    pub session: SessionId,
    /// Author's Ed25519 public key; the envelope's signature must verify under it.
    pub author: AuthorKey,
    /// Author's Lamport timestamp (strictly increasing per author and session).
    pub lamport: u64,
    /// Replay nonce: an (author, nonce) pair is accepted once per session.
    pub nonce: u64,
    /// Author's wall clock, Unix milliseconds (informational; never used for ordering).
    pub wall_clock_ms: u64,
    /// Scope entity (0: the session itself).
    pub entity: EntityId,
    /// Scope component ([`ComponentId::NONE`] for whole-entity and session commands).
    pub component: ComponentId,
    /// Expected scope version, checked for reject-strategy scopes.
    pub base_version: u64,
    /// The command.
    pub command: Command,
}

impl CommandBody {
    /// Encodes the body as a finished FlatBuffers buffer with identifier `THCB`.
    pub fn encode(&self) -> Vec<u8> {
        let mut fbb = FlatBufferBuilder::with_capacity(256);
        let command = self.command.encode(&mut fbb);
        let session = Some(fbb.create_vector(&self.session.0));
        let author = Some(fbb.create_vector(&self.author.0));
        let body = fb::CommandBody::create(
            &mut fbb,
            &fb::CommandBodyArgs {
                session,
                author,
                lamport: self.lamport,
                nonce: self.nonce,
                wall_clock_ms: self.wall_clock_ms,
                entity: self.entity,
                component: self.component.0,
                base_version: self.base_version,
                command_type: fb::Command(self.command.kind().tag()),
                command: Some(command),
            },
        );
        fb::finish_command_body_buffer(&mut fbb, body);
        fbb.finished_data().to_vec()
    }

    /// Decodes and validates a body from outside bytes.
    pub fn decode(buf: &[u8]) -> Result<CommandBody, DecodeError> {
        const T: &str = "CommandBody";
        let b = Limits::COMMAND.root::<fb::CommandBody>(buf, T, Some(fb::COMMAND_BODY_IDENTIFIER))?;
        Ok(CommandBody {
            session: SessionId(fixed(b.session(), T, "session")?),
            author: AuthorKey(fixed(b.author(), T, "author")?),
            lamport: b.lamport(),
            nonce: b.nonce(),
            wall_clock_ms: b.wall_clock_ms(),
            entity: b.entity(),
            component: ComponentId(b.component()),
            base_version: b.base_version(),
            command: Command::decode(&b)?,
        })
    }
}
