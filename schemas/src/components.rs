//! World components: owned values, their canonical FlatBuffers bytes and the registry.
//!
//! The canonical bytes of a component are what this module's `encode` produces; state
//! hashes, snapshots and deltas are computed over them.

use flatbuffers::FlatBufferBuilder;

use crate::command::{AuthorKey, EntityId, Shape};
use crate::decode::{DecodeError, Limits, finite, fixed, string};
use crate::fb;
use crate::ids::{ComponentMeta, Descriptor};

/// A component value with a canonical encoding.
pub trait Component: ComponentMeta + Sized {
    /// Builds the canonical FlatBuffers bytes in `fbb` (which it resets first) and returns
    /// them; reusing one builder avoids an allocation per value.
    fn write<'b, 'f>(&self, fbb: &'b mut FlatBufferBuilder<'f>) -> &'b [u8];

    /// The canonical FlatBuffers bytes of the value.
    fn encode(&self) -> Vec<u8> {
        let mut fbb = FlatBufferBuilder::with_capacity(128);
        self.write(&mut fbb).to_vec()
    }

    /// Decodes and validates canonical bytes from outside.
    fn decode(buf: &[u8]) -> Result<Self, DecodeError>;
}

/// Local transform: translation (metres), rotation quaternion (x, y, z, w), scale.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Transform {
    /// Translation.
    pub translation: [f32; 3],
    /// Rotation quaternion (x, y, z, w).
    pub rotation: [f32; 4],
    /// Scale per axis.
    pub scale: [f32; 3],
}

impl Default for Transform {
    fn default() -> Self {
        Transform { translation: [0.0; 3], rotation: [0.0, 0.0, 0.0, 1.0], scale: [1.0; 3] }
    }
}

impl Transform {
    pub(crate) fn to_fb(self) -> (fb::Vec3, fb::Quat, fb::Vec3) {
        let [tx, ty, tz] = self.translation;
        let [rx, ry, rz, rw] = self.rotation;
        let [sx, sy, sz] = self.scale;
        (fb::Vec3::new(tx, ty, tz), fb::Quat::new(rx, ry, rz, rw), fb::Vec3::new(sx, sy, sz))
    }

    pub(crate) fn from_fb(
        t: Option<&fb::Vec3>,
        r: Option<&fb::Quat>,
        s: Option<&fb::Vec3>,
    ) -> Result<Transform, DecodeError> {
        let d = Transform::default();
        let out = Transform {
            translation: t.map_or(d.translation, |v| [v.x(), v.y(), v.z()]),
            rotation: r.map_or(d.rotation, |q| [q.x(), q.y(), q.z(), q.w()]),
            scale: s.map_or(d.scale, |v| [v.x(), v.y(), v.z()]),
        };
        finite(&out.translation, "Transform.translation")?;
        finite(&out.rotation, "Transform.rotation")?;
        finite(&out.scale, "Transform.scale")?;
        Ok(out)
    }
}

/// Translation steps per metre on a compact delta stream (2^10: about 1 mm).
pub const TRANSLATION_STEPS_PER_M: f32 = 1024.0;
/// Rotation steps per unit quaternion component on a compact delta stream.
pub const ROTATION_STEPS: f32 = 32767.0;
/// Largest translation step count sent quantized (2^24 steps, 16 km: every step count below it
/// is exact as an `f32`).
const MAX_TRANSLATION_STEPS: f32 = 16_777_216.0;

/// A transform as a compact delta stream carries it: translation in steps of 1/1024 m, rotation
/// components in steps of 1/32767, scale unchanged. A viewer on such a stream holds
/// [`QuantizedTransform::to_transform`] of what the server holds, and the state hashes it is
/// sent are computed over exactly that (see docs/PROTOCOL.md, "Compact deltas").
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct QuantizedTransform {
    /// Translation, steps of 1/1024 m.
    pub translation: [i32; 3],
    /// Rotation quaternion (x, y, z, w), steps of 1/32767.
    pub rotation: [i16; 4],
    /// Scale per axis, as is.
    pub scale: [f32; 3],
}

impl QuantizedTransform {
    /// The quantized form of `t`, or `None` when `t` has a translation beyond ±16 km or a
    /// rotation component outside [-1, 1] (such a transform is sent exactly).
    pub fn quantize(t: &Transform) -> Option<QuantizedTransform> {
        let mut translation = [0i32; 3];
        for (q, v) in translation.iter_mut().zip(t.translation) {
            let steps = (v * TRANSLATION_STEPS_PER_M).round();
            if steps.is_nan() || steps.abs() >= MAX_TRANSLATION_STEPS {
                return None;
            }
            *q = steps as i32;
        }
        let mut rotation = [0i16; 4];
        for (q, v) in rotation.iter_mut().zip(t.rotation) {
            if !(-1.0..=1.0).contains(&v) {
                return None;
            }
            *q = (v * ROTATION_STEPS).round() as i16;
        }
        Some(QuantizedTransform { translation, rotation, scale: t.scale })
    }

    /// The transform a viewer holds for this quantized one.
    pub fn to_transform(&self) -> Transform {
        Transform {
            translation: self.translation.map(|q| q as f32 / TRANSLATION_STEPS_PER_M),
            rotation: self.rotation.map(|q| q as f32 / ROTATION_STEPS),
            scale: self.scale,
        }
    }

    /// The difference from `base` as a compact stream sends it: translation and rotation steps
    /// subtracted (wrapping), scale as is.
    pub fn minus(&self, base: &QuantizedTransform) -> QuantizedTransform {
        QuantizedTransform {
            translation: std::array::from_fn(|i| self.translation[i].wrapping_sub(base.translation[i])),
            rotation: std::array::from_fn(|i| self.rotation[i].wrapping_sub(base.rotation[i])),
            scale: self.scale,
        }
    }

    /// Undoes [`QuantizedTransform::minus`]: `self` is a difference from `base`.
    pub fn plus(&self, base: &QuantizedTransform) -> QuantizedTransform {
        QuantizedTransform {
            translation: std::array::from_fn(|i| self.translation[i].wrapping_add(base.translation[i])),
            rotation: std::array::from_fn(|i| self.rotation[i].wrapping_add(base.rotation[i])),
            scale: self.scale,
        }
    }

    /// What a compact stream's viewer holds for `t`: `t` quantized and back, or `t` itself when
    /// it cannot be quantized.
    pub fn round_trip(t: &Transform) -> Transform {
        QuantizedTransform::quantize(t).map_or(*t, |q| q.to_transform())
    }
}

/// Entity name.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Name(pub String);

/// Parent entity in the hierarchy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Parent(pub EntityId);

/// Triangle mesh.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Mesh {
    /// Vertex positions.
    pub positions: Vec<[f32; 3]>,
    /// Triangle list, 3 indices per face.
    pub indices: Vec<u32>,
}

/// PBR material.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Material {
    /// Linear RGBA base colour.
    pub base_color: [f32; 4],
    /// Metallic factor, 0..=1.
    pub metallic: f32,
    /// Roughness factor, 0..=1.
    pub roughness: f32,
}

impl Default for Material {
    fn default() -> Self {
        Material { base_color: [0.8, 0.8, 0.8, 1.0], metallic: 0.0, roughness: 0.5 }
    }
}

impl Material {
    pub(crate) fn base_color_fb(&self) -> fb::Rgba {
        let [r, g, b, a] = self.base_color;
        fb::Rgba::new(r, g, b, a)
    }

    pub(crate) fn from_fb(c: Option<&fb::Rgba>, metallic: f32, roughness: f32) -> Result<Material, DecodeError> {
        let base_color = c.map_or(Material::default().base_color, |c| [c.r(), c.g(), c.b(), c.a()]);
        finite(&base_color, "Material.base_color")?;
        finite(&[metallic, roughness], "Material.metallic/roughness")?;
        Ok(Material { base_color, metallic, roughness })
    }
}

/// Authors that have the entity selected, sorted and without duplicates.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Selection {
    /// Sorted author keys.
    pub authors: Vec<AuthorKey>,
}

/// One author's active tool.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct ToolState {
    /// The author.
    pub author: AuthorKey,
    /// Tool name.
    pub tool: String,
}

/// Built-in primitive shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Primitive {
    /// The shape.
    pub shape: Shape,
}

crate::component!(Transform, "theta.Transform", 1);
crate::component!(Name, "theta.Name", 1);
crate::component!(Parent, "theta.Parent", 1);
crate::component!(Mesh, "theta.Mesh", 1);
crate::component!(Material, "theta.Material", 1);
crate::component!(Selection, "theta.Selection", 1);
crate::component!(ToolState, "theta.ToolState", 1);
crate::component!(Primitive, "theta.Primitive", 1);

/// The built-in components, in manifest order.
pub fn registry() -> Vec<Descriptor> {
    vec![
        Transform::descriptor(),
        Name::descriptor(),
        Parent::descriptor(),
        Mesh::descriptor(),
        Material::descriptor(),
        Selection::descriptor(),
        ToolState::descriptor(),
        Primitive::descriptor(),
    ]
}

fn finish<'b, T>(fbb: &'b mut FlatBufferBuilder<'_>, root: flatbuffers::WIPOffset<T>) -> &'b [u8] {
    fbb.finish_minimal(root);
    fbb.finished_data()
}

fn root<'b, T>(buf: &'b [u8], table: &'static str) -> Result<T::Inner, DecodeError>
where
    T: flatbuffers::Follow<'b> + flatbuffers::Verifiable + 'b,
{
    Limits::COMPONENT.root::<T>(buf, table, None)
}

impl Component for Transform {
    fn write<'b, 'f>(&self, fbb: &'b mut FlatBufferBuilder<'f>) -> &'b [u8] {
        fbb.reset();
        let (t, r, s) = self.to_fb();
        let root = fb::Transform::create(
            fbb,
            &fb::TransformArgs { translation: Some(&t), rotation: Some(&r), scale: Some(&s) },
        );
        finish(fbb, root)
    }
    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let t = root::<fb::Transform>(buf, "Transform")?;
        Transform::from_fb(t.translation(), t.rotation(), t.scale())
    }
}

impl Component for Name {
    fn write<'b, 'f>(&self, fbb: &'b mut FlatBufferBuilder<'f>) -> &'b [u8] {
        fbb.reset();
        let value = Some(fbb.create_string(&self.0));
        let root = fb::Name::create(fbb, &fb::NameArgs { value });
        finish(fbb, root)
    }
    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let t = root::<fb::Name>(buf, "Name")?;
        Ok(Name(string(t.value(), "Name", "value")?))
    }
}

impl Component for Parent {
    fn write<'b, 'f>(&self, fbb: &'b mut FlatBufferBuilder<'f>) -> &'b [u8] {
        fbb.reset();
        let root = fb::Parent::create(fbb, &fb::ParentArgs { entity: self.0 });
        finish(fbb, root)
    }
    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        Ok(Parent(root::<fb::Parent>(buf, "Parent")?.entity()))
    }
}

impl Component for Mesh {
    fn write<'b, 'f>(&self, fbb: &'b mut FlatBufferBuilder<'f>) -> &'b [u8] {
        fbb.reset();
        let ps: Vec<fb::Vec3> = self.positions.iter().map(|p| fb::Vec3::new(p[0], p[1], p[2])).collect();
        let positions = Some(fbb.create_vector(&ps));
        let indices = Some(fbb.create_vector(&self.indices));
        let root = fb::Mesh::create(fbb, &fb::MeshArgs { positions, indices });
        finish(fbb, root)
    }
    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let t = root::<fb::Mesh>(buf, "Mesh")?;
        let positions: Vec<[f32; 3]> =
            t.positions().map(|v| v.iter().map(|p| [p.x(), p.y(), p.z()]).collect()).unwrap_or_default();
        let indices: Vec<u32> = t.indices().map(|v| v.iter().collect()).unwrap_or_default();
        finite(positions.as_flattened(), "Mesh.positions")?;
        if !indices.len().is_multiple_of(3) {
            return Err(DecodeError::InvalidValue {
                field: "Mesh.indices",
                reason: "must hold 3 indices per triangle",
            });
        }
        if indices.iter().any(|&i| i as usize >= positions.len()) {
            return Err(DecodeError::InvalidValue { field: "Mesh.indices", reason: "index out of range" });
        }
        Ok(Mesh { positions, indices })
    }
}

impl Component for Material {
    fn write<'b, 'f>(&self, fbb: &'b mut FlatBufferBuilder<'f>) -> &'b [u8] {
        fbb.reset();
        let c = self.base_color_fb();
        let root = fb::Material::create(
            fbb,
            &fb::MaterialArgs { base_color: Some(&c), metallic: self.metallic, roughness: self.roughness },
        );
        finish(fbb, root)
    }
    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let t = root::<fb::Material>(buf, "Material")?;
        Material::from_fb(t.base_color(), t.metallic(), t.roughness())
    }
}

impl Component for Selection {
    fn write<'b, 'f>(&self, fbb: &'b mut FlatBufferBuilder<'f>) -> &'b [u8] {
        fbb.reset();
        let keys: Vec<_> = self
            .authors
            .iter()
            .map(|a| {
                let key = Some(fbb.create_vector(&a.0));
                fb::AuthorKey::create(fbb, &fb::AuthorKeyArgs { key })
            })
            .collect();
        let authors = Some(fbb.create_vector(&keys));
        let root = fb::Selection::create(fbb, &fb::SelectionArgs { authors });
        finish(fbb, root)
    }
    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let t = root::<fb::Selection>(buf, "Selection")?;
        let mut authors = Vec::new();
        for k in t.authors().iter().flatten() {
            authors.push(AuthorKey(fixed(k.key(), "AuthorKey", "key")?));
        }
        if !authors.is_sorted_by(|a, b| a < b) {
            return Err(DecodeError::InvalidValue {
                field: "Selection.authors",
                reason: "must be sorted and without duplicates",
            });
        }
        Ok(Selection { authors })
    }
}

impl Component for ToolState {
    fn write<'b, 'f>(&self, fbb: &'b mut FlatBufferBuilder<'f>) -> &'b [u8] {
        fbb.reset();
        let author = Some(fbb.create_vector(&self.author.0));
        let tool = Some(fbb.create_string(&self.tool));
        let root = fb::ToolState::create(fbb, &fb::ToolStateArgs { author, tool });
        finish(fbb, root)
    }
    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let t = root::<fb::ToolState>(buf, "ToolState")?;
        Ok(ToolState {
            author: AuthorKey(fixed(t.author(), "ToolState", "author")?),
            tool: string(t.tool(), "ToolState", "tool")?,
        })
    }
}

impl Component for Primitive {
    fn write<'b, 'f>(&self, fbb: &'b mut FlatBufferBuilder<'f>) -> &'b [u8] {
        fbb.reset();
        let root = fb::Primitive::create(fbb, &fb::PrimitiveArgs { shape: self.shape.to_fb() });
        finish(fbb, root)
    }
    fn decode(buf: &[u8]) -> Result<Self, DecodeError> {
        let t = root::<fb::Primitive>(buf, "Primitive")?;
        Ok(Primitive { shape: Shape::from_fb(t.shape())? })
    }
}
