//! What the renderer draws, extracted from a mirror world: one instance per primitive entity
//! (world transform, material colour, selection highlight) and one draw per mesh entity.
//!
//! Extraction walks entities in id order, so the same world always gives the same scene.

use glam::{Mat4, Quat, Vec3};
use theta_projector::spatial::world_of;
use theta_projector::{Projection, Value};
use theta_schemas::components::{Material, Mesh, Name, Primitive, Selection};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::{AuthorKey, EntityId, Shape};

/// Primitive shapes in draw order (index = `shape_index`).
pub const SHAPES: [Shape; 5] = [Shape::Cube, Shape::Sphere, Shape::Cylinder, Shape::Plane, Shape::Cone];

/// The index of a shape in [`SHAPES`].
pub fn shape_index(s: Shape) -> usize {
    SHAPES.iter().position(|x| *x == s).unwrap_or(0)
}

/// Per-instance data as the shader reads it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Instance {
    /// Model matrix, column-major.
    pub model: [[f32; 4]; 4],
    /// Linear RGBA.
    pub color: [f32; 4],
    /// Highlight colour (alpha 0: none).
    pub highlight: [f32; 4],
}

/// One mesh entity to draw.
#[derive(Debug, Clone, PartialEq)]
pub struct MeshItem {
    /// The entity (buffers are cached per entity).
    pub entity: EntityId,
    /// The mesh.
    pub mesh: Mesh,
    /// Its instance data.
    pub instance: Instance,
}

/// Text floating in the world (a name badge, a headset panel): drawn as a quad facing the eye,
/// over the scene, its bottom edge centred on `anchor`.
#[derive(Debug, Clone, PartialEq)]
pub struct Label {
    /// One or more lines (`\n`); lines are cut at [`LABEL_COLUMNS`] characters.
    pub text: String,
    /// Where the label's bottom centre is, world metres.
    pub anchor: Vec3,
    /// Height of one text line, world metres.
    pub line_height: f32,
    /// The accent stripe's colour (an author's colour), linear RGBA.
    pub accent: [f32; 4],
}

/// Longest label line drawn, characters.
pub const LABEL_COLUMNS: usize = 48;

/// A frame's content.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scene {
    /// Instances per shape, indexed like [`SHAPES`].
    pub instances: [Vec<Instance>; 5],
    /// Mesh entities.
    pub meshes: Vec<MeshItem>,
    /// Text labels, drawn in order.
    pub labels: Vec<Label>,
}

impl Scene {
    /// Entities drawn.
    pub fn len(&self) -> usize {
        self.instances.iter().map(Vec::len).sum::<usize>() + self.meshes.len()
    }

    /// Whether nothing is drawn.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The default material colour (light grey).
pub const DEFAULT_COLOR: [f32; 4] = [0.7, 0.7, 0.72, 1.0];

/// A stable, saturated colour for an author (selection highlights): hue from the key's bytes.
pub fn author_color(key: &AuthorKey) -> [f32; 4] {
    let h = (u16::from_le_bytes([key.0[0], key.0[1]]) as f32 / 65_536.0) * 6.0;
    let x = 1.0 - ((h % 2.0) - 1.0).abs();
    let (r, g, b) = match h as u32 {
        0 => (1.0, x, 0.0),
        1 => (x, 1.0, 0.0),
        2 => (0.0, 1.0, x),
        3 => (0.0, x, 1.0),
        4 => (x, 0.0, 1.0),
        _ => (1.0, 0.0, x),
    };
    [r, g, b, 1.0]
}

/// The model matrix of an entity's world transform.
pub fn model_matrix(p: &Projection, e: EntityId) -> Mat4 {
    let t = world_of(p, e);
    Mat4::from_scale_rotation_translation(
        Vec3::from(t.scale),
        Quat::from_array(t.rotation).normalize(),
        Vec3::from(t.translation),
    )
}

/// Extracts the scene from a world.
pub fn extract(p: &Projection) -> Scene {
    let mut scene = Scene::default();
    for e in p.entities() {
        let color = match p.get(e, Material::id()) {
            Some(Value::Material(m)) => m.base_color,
            _ => DEFAULT_COLOR,
        };
        let highlight = match p.get(e, Selection::id()) {
            Some(Value::Selection(s)) => s.authors.first().map_or([0.0; 4], author_color),
            _ => [0.0; 4],
        };
        let instance = Instance { model: model_matrix(p, e).to_cols_array_2d(), color, highlight };
        if let Some(Value::Mesh(mesh)) = p.get(e, Mesh::id()) {
            scene.meshes.push(MeshItem { entity: e, mesh, instance });
        } else if let Some(Value::Primitive(Primitive { shape })) = p.get(e, Primitive::id()) {
            scene.instances[shape_index(shape)].push(instance);
        }
    }
    scene
}

/// The first eight hex digits of an author's key: how badges and the timeline name authors.
pub fn author_tag(key: &AuthorKey) -> String {
    hex::encode(&key.0[..4])
}

/// Name badges: one label over each selected entity ("selected by …", in the first selecting
/// author's colour) and over each of the `recent` entities edited last ("edited by …"), in
/// entity id order. Labels hang above the entity's world position by half its largest scale.
pub fn badges(p: &Projection, recent: usize) -> Vec<Label> {
    let mut edited: Vec<(u64, AuthorKey, EntityId)> =
        p.entities().filter_map(|e| p.last_edit(e).map(|(lamport, author)| (lamport, author, e))).collect();
    let cut = edited.len().saturating_sub(recent);
    if cut > 0 {
        edited.select_nth_unstable(cut - 1);
    }
    let mut chosen: std::collections::BTreeMap<EntityId, Option<AuthorKey>> =
        edited[cut..].iter().map(|(_, a, e)| (*e, Some(*a))).collect();
    for e in p.entities() {
        if let Some(Value::Selection(s)) = p.get(e, Selection::id())
            && !s.authors.is_empty()
        {
            chosen.entry(e).or_insert(None);
        }
    }
    chosen
        .into_iter()
        .map(|(e, edited_by)| {
            let name = match p.get(e, Name::id()) {
                Some(Value::Name(n)) if !n.0.is_empty() => n.0,
                _ => format!("entity {e}"),
            };
            let selectors = match p.get(e, Selection::id()) {
                Some(Value::Selection(s)) => s.authors,
                _ => Vec::new(),
            };
            let mut text = name;
            if !selectors.is_empty() {
                let tags: Vec<String> = selectors.iter().map(author_tag).collect();
                text += &format!("\nselected by {}", tags.join(", "));
            }
            if let Some(a) = edited_by {
                text += &format!("\nedited by {}", author_tag(&a));
            }
            let accent = selectors.first().or(edited_by.as_ref()).map_or(DEFAULT_COLOR, author_color);
            let t = world_of(p, e);
            let lift = 0.5 * t.scale.iter().fold(0.0f32, |m, s| m.max(s.abs())) + 0.05;
            Label { text, anchor: Vec3::from(t.translation) + Vec3::new(0.0, lift, 0.0), line_height: 0.06, accent }
        })
        .collect()
}
