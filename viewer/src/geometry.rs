//! Vertex data: the built-in primitives (unit size, centred on the origin) and mesh
//! components (smooth normals from their faces).

use theta_schemas::Shape;

/// One vertex as the shader reads it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
pub struct Vertex {
    /// Position, model space.
    pub position: [f32; 3],
    /// Unit normal.
    pub normal: [f32; 3],
}

/// Indexed triangle geometry.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Geometry {
    /// Vertices.
    pub vertices: Vec<Vertex>,
    /// Triangle list.
    pub indices: Vec<u32>,
}

impl Geometry {
    fn quad(&mut self, corners: [[f32; 3]; 4], normal: [f32; 3]) {
        let base = self.vertices.len() as u32;
        self.vertices.extend(corners.iter().map(|&position| Vertex { position, normal }));
        self.indices.extend_from_slice(&[base, base + 1, base + 2, base, base + 2, base + 3]);
    }
}

/// Segments around round shapes at each level of detail (0: near ... 2: farthest).
pub const SEGMENTS: [u32; 3] = [24, 8, 5];

/// The geometry of a primitive shape at full detail.
pub fn primitive(shape: Shape) -> Geometry {
    primitive_lod(shape, 0)
}

/// The geometry of a primitive shape at a level of detail (0: near ... 2: farthest).
pub fn primitive_lod(shape: Shape, lod: usize) -> Geometry {
    let n = SEGMENTS[lod.min(SEGMENTS.len() - 1)];
    match shape {
        Shape::Cube => cube(),
        Shape::Sphere => sphere(n, (n / 2).max(2)),
        Shape::Cylinder => lathe(n, &[(0.5, -0.5), (0.5, 0.5)], true, true),
        Shape::Cone => lathe(n, &[(0.5, -0.5), (0.0, 0.5)], true, false),
        Shape::Plane => {
            let mut g = Geometry::default();
            g.quad([[-0.5, 0.0, 0.5], [0.5, 0.0, 0.5], [0.5, 0.0, -0.5], [-0.5, 0.0, -0.5]], [0.0, 1.0, 0.0]);
            g
        }
    }
}

fn cube() -> Geometry {
    let mut g = Geometry::default();
    let h = 0.5;
    // +X, -X, +Y, -Y, +Z, -Z faces, counter-clockwise seen from outside.
    g.quad([[h, -h, h], [h, -h, -h], [h, h, -h], [h, h, h]], [1.0, 0.0, 0.0]);
    g.quad([[-h, -h, -h], [-h, -h, h], [-h, h, h], [-h, h, -h]], [-1.0, 0.0, 0.0]);
    g.quad([[-h, h, h], [h, h, h], [h, h, -h], [-h, h, -h]], [0.0, 1.0, 0.0]);
    g.quad([[-h, -h, -h], [h, -h, -h], [h, -h, h], [-h, -h, h]], [0.0, -1.0, 0.0]);
    g.quad([[-h, -h, h], [h, -h, h], [h, h, h], [-h, h, h]], [0.0, 0.0, 1.0]);
    g.quad([[h, -h, -h], [-h, -h, -h], [-h, h, -h], [h, h, -h]], [0.0, 0.0, -1.0]);
    g
}

fn sphere(slices: u32, stacks: u32) -> Geometry {
    let mut g = Geometry::default();
    for i in 0..=stacks {
        let v = i as f32 / stacks as f32 * std::f32::consts::PI;
        for j in 0..=slices {
            let u = j as f32 / slices as f32 * std::f32::consts::TAU;
            let n = [v.sin() * u.cos(), v.cos(), -v.sin() * u.sin()];
            g.vertices.push(Vertex { position: n.map(|c| c * 0.5), normal: n });
        }
    }
    let row = slices + 1;
    for i in 0..stacks {
        for j in 0..slices {
            let (a, b) = (i * row + j, (i + 1) * row + j);
            g.indices.extend_from_slice(&[a, b, a + 1, a + 1, b, b + 1]);
        }
    }
    g
}

/// A surface of revolution around Y through `(radius, y)` profile points, with caps.
fn lathe(segments: u32, profile: &[(f32, f32)], bottom: bool, top: bool) -> Geometry {
    let mut g = Geometry::default();
    let (r0, y0) = profile[0];
    let (r1, y1) = profile[1];
    let slope = (r0 - r1) / (y1 - y0);
    for j in 0..=segments {
        let u = j as f32 / segments as f32 * std::f32::consts::TAU;
        let (c, s) = (u.cos(), -u.sin());
        let len = (1.0 + slope * slope).sqrt();
        let normal = [c / len, slope / len, s / len];
        g.vertices.push(Vertex { position: [r0 * c, y0, r0 * s], normal });
        g.vertices.push(Vertex { position: [r1 * c, y1, r1 * s], normal });
    }
    for j in 0..segments {
        let a = j * 2;
        g.indices.extend_from_slice(&[a, a + 2, a + 1, a + 1, a + 2, a + 3]);
    }
    for (cap, y, r, up) in [(bottom, y0, r0, -1.0f32), (top, y1, r1, 1.0)] {
        if !cap || r == 0.0 {
            continue;
        }
        let centre = g.vertices.len() as u32;
        g.vertices.push(Vertex { position: [0.0, y, 0.0], normal: [0.0, up, 0.0] });
        for j in 0..=segments {
            let u = j as f32 / segments as f32 * std::f32::consts::TAU;
            g.vertices.push(Vertex { position: [r * u.cos(), y, -r * u.sin()], normal: [0.0, up, 0.0] });
        }
        for j in 0..segments {
            let (a, b) = (centre + 1 + j, centre + 2 + j);
            if up > 0.0 {
                g.indices.extend_from_slice(&[centre, a, b]);
            } else {
                g.indices.extend_from_slice(&[centre, b, a]);
            }
        }
    }
    g
}

/// A mesh component's geometry, with smooth normals averaged from its faces.
pub fn mesh(positions: &[[f32; 3]], indices: &[u32]) -> Geometry {
    let mut normals = vec![[0.0f32; 3]; positions.len()];
    for f in indices.chunks_exact(3) {
        let [a, b, c] = [f[0], f[1], f[2]].map(|i| glam::Vec3::from(positions[i as usize]));
        let n = (b - a).cross(c - a);
        for i in f {
            let m = &mut normals[*i as usize];
            *m = (glam::Vec3::from(*m) + n).to_array();
        }
    }
    Geometry {
        vertices: positions
            .iter()
            .zip(normals)
            .map(|(p, n)| Vertex { position: *p, normal: glam::Vec3::from(n).normalize_or(glam::Vec3::Y).to_array() })
            .collect(),
        indices: indices.to_vec(),
    }
}
