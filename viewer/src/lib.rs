//! The Theta viewer: renders a session's projection with wgpu, headless to images, in stereo
//! for headsets, and through OpenXR (feature `vr-openxr`).
//!
//! The renderer's input is a mirror world (`theta_projector::Projection`) turned into a
//! [`scene::Scene`]; live mirrors come from `theta_client`, historical ones from the gateway's
//! gRPC replay. The renderer itself never touches the network.

pub mod camera;
pub mod geometry;
pub mod hud;
mod labels;
pub mod render;
pub mod scene;
pub mod vr_input;
pub mod window;
#[cfg(feature = "vr-openxr")]
pub mod xr;

pub use camera::{Eye, Fov, Orbit};
pub use render::{Image, RenderError, Renderer};
pub use scene::{Label, Scene, badges, extract};

/// Distance between the eyes used for stereo without a headset, metres.
pub const DEFAULT_IPD: f32 = 0.064;
