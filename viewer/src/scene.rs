//! What the renderer draws, extracted from a mirror world: one instance per primitive entity
//! (world transform, material colour, selection highlight) and one draw per mesh entity.
//!
//! Extraction walks entities in id order, so the same world always gives the same scene.

use glam::{Mat4, Quat, Vec3};
use theta_projector::spatial::world_of;
use theta_projector::{Projection, Value};
use theta_schemas::components::{Material, Mesh, Primitive, Selection};
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

/// A frame's content.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Scene {
    /// Instances per shape, indexed like [`SHAPES`].
    pub instances: [Vec<Instance>; 5],
    /// Mesh entities.
    pub meshes: Vec<MeshItem>,
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
