//! Cameras: a mono view, and the stereo pair a headset gives (eye poses with asymmetric fields
//! of view), in the same form the OpenXR path fills in each frame.

use glam::{Mat4, Quat, Vec3};

/// An asymmetric field of view, angles in radians (left and down negative), as OpenXR reports.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Fov {
    /// Left edge angle.
    pub left: f32,
    /// Right edge angle.
    pub right: f32,
    /// Top edge angle.
    pub up: f32,
    /// Bottom edge angle.
    pub down: f32,
}

impl Fov {
    /// A symmetric field of view with vertical angle `fov_y` and the given aspect ratio.
    pub fn symmetric(fov_y: f32, aspect: f32) -> Fov {
        let ty = (fov_y / 2.0).tan();
        let tx = ty * aspect;
        Fov { left: -tx.atan(), right: tx.atan(), up: ty.atan(), down: -ty.atan() }
    }

    /// The projection matrix (right-handed, depth 0..1, reversed-free) for these angles.
    pub fn projection(&self, near: f32, far: f32) -> Mat4 {
        let (l, r) = (self.left.tan() * near, self.right.tan() * near);
        let (b, t) = (self.down.tan() * near, self.up.tan() * near);
        let (w, h, d) = (r - l, t - b, far - near);
        Mat4::from_cols_array(&[
            2.0 * near / w,
            0.0,
            0.0,
            0.0,
            0.0,
            2.0 * near / h,
            0.0,
            0.0,
            (r + l) / w,
            (t + b) / h,
            -far / d,
            -1.0,
            0.0,
            0.0,
            -far * near / d,
            0.0,
        ])
    }
}

/// One eye (or the mono camera): a pose and a field of view.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Eye {
    /// Position, world metres.
    pub position: Vec3,
    /// Orientation.
    pub orientation: Quat,
    /// Field of view.
    pub fov: Fov,
}

/// Near and far planes, metres.
pub const NEAR: f32 = 0.05;
/// Far plane.
pub const FAR: f32 = 500.0;

impl Eye {
    /// An eye at `position` looking at `target` (Y up).
    pub fn looking_at(position: Vec3, target: Vec3, fov: Fov) -> Eye {
        let view = Mat4::look_at_rh(position, target, Vec3::Y);
        let (_, rotation, _) = view.inverse().to_scale_rotation_translation();
        Eye { position, orientation: rotation, fov }
    }

    /// View-projection matrix.
    pub fn view_projection(&self) -> Mat4 {
        let view = Mat4::from_rotation_translation(self.orientation, self.position).inverse();
        self.fov.projection(NEAR, FAR) * view
    }

    /// The stereo pair for a head at this pose: eyes `ipd` apart along the head's X axis, each
    /// with its field of view widened outward the way headset lenses are.
    pub fn stereo(&self, ipd: f32) -> [Eye; 2] {
        let right = self.orientation * Vec3::X;
        let skew = 0.08;
        let mut l = Eye { position: self.position - right * ipd / 2.0, ..*self };
        let mut r = Eye { position: self.position + right * ipd / 2.0, ..*self };
        l.fov.left -= skew;
        l.fov.right -= skew;
        r.fov.left += skew;
        r.fov.right += skew;
        [l, r]
    }
}

/// A camera orbiting `target` at `distance`, `yaw`/`pitch` radians (the window's mouse camera
/// and the headless default).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Orbit {
    /// Point looked at.
    pub target: Vec3,
    /// Distance, metres.
    pub distance: f32,
    /// Rotation about Y.
    pub yaw: f32,
    /// Elevation.
    pub pitch: f32,
    /// Vertical field of view, radians.
    pub fov_y: f32,
}

impl Default for Orbit {
    fn default() -> Self {
        Orbit { target: Vec3::new(0.0, 0.5, 0.0), distance: 14.0, yaw: 0.6, pitch: 0.45, fov_y: 1.0 }
    }
}

impl Orbit {
    /// The eye for an image of the given aspect ratio.
    pub fn eye(&self, aspect: f32) -> Eye {
        let dir = Vec3::new(self.yaw.sin() * self.pitch.cos(), self.pitch.sin(), self.yaw.cos() * self.pitch.cos());
        Eye::looking_at(self.target + dir * self.distance, self.target, Fov::symmetric(self.fov_y, aspect))
    }
}
