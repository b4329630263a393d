//! The scene the viewer's benches draw.

use glam::{Mat4, Quat, Vec3};
use theta_viewer::scene::{DEFAULT_COLOR, Instance, Scene};

/// `n` objects on a square grid, spread over the five primitive shapes.
pub fn scene(n: usize) -> Scene {
    let side = (n as f64).sqrt().ceil() as usize;
    let spacing = 1.5;
    let mut s = Scene::default();
    for i in 0..n {
        let (x, z) = ((i % side) as f32, (i / side) as f32);
        let offset = side as f32 * spacing / 2.0;
        let model = Mat4::from_scale_rotation_translation(
            Vec3::splat(0.8),
            Quat::from_rotation_y(i as f32 * 0.37),
            Vec3::new(x * spacing - offset, 0.5, z * spacing - offset),
        );
        let hue = (i % 7) as f32 / 7.0;
        let color = [0.4 + 0.6 * hue, 0.8 - 0.5 * hue, DEFAULT_COLOR[2], 1.0];
        let highlight = if i % 97 == 0 { [1.0, 0.5, 0.0, 1.0] } else { [0.0; 4] };
        s.instances[i % 5].push(Instance { model: model.to_cols_array_2d(), color, highlight });
    }
    s
}

/// Moves 1 % of the objects of `s` (a live scene), differently for each frame number `f`.
pub fn move_some(s: &mut Scene, f: usize) {
    let n: usize = s.instances.iter().map(Vec::len).sum();
    for k in 0..n / 100 {
        let i = (k * 7_919 + f * 131) % n;
        let list = &mut s.instances[i % 5];
        let j = (i / 5).min(list.len() - 1);
        list[j].model[3][1] = 0.5 + 0.2 * ((f + k) as f32 * 0.3).sin();
    }
}
