//! The OpenXR backend (feature `vr-openxr`): loads the system OpenXR loader at run time,
//! creates the instance and finds the head-mounted system, maps each frame's per-eye view poses
//! and fields of view into the shared stereo path ([`Eye`]), and drives the session state
//! machine (idle → ready → focused → stopping → exiting).
//!
//! With no runtime installed (Debian ships only the loader, `libopenxr-loader1`), instance
//! creation fails with `ERROR_RUNTIME_UNAVAILABLE`; [`XrError`] then tells the user how to
//! install or select a runtime, and callers offer the window or headless backend instead.

pub mod actions;
pub mod session;
pub mod vulkan;

pub use session::{Frame, FrameTimes, XrViewer};

use glam::{Quat, Vec3};

use crate::camera::{Eye, Fov};

/// Why the OpenXR backend cannot start.
#[derive(Debug, thiserror::Error)]
pub enum XrError {
    /// The OpenXR loader library is not installed.
    #[error(
        "the OpenXR loader (libopenxr_loader.so) could not be loaded: {0}. Install it (Debian: `apt-get install libopenxr-loader1`), or use the window or --headless instead"
    )]
    LoaderMissing(String),
    /// The loader found no active runtime.
    #[error(
        "no OpenXR runtime is installed or active (ERROR_RUNTIME_UNAVAILABLE). Install a runtime (Monado, SteamVR, WiVRn, ...) and make it the active one, or point XR_RUNTIME_JSON at its manifest, e.g. `XR_RUNTIME_JSON=/usr/share/openxr/1/openxr_monado.json`. Meanwhile use the window or --headless (add --stereo for the headset's two-eye path)"
    )]
    RuntimeUnavailable,
    /// The runtime lacks Vulkan interop, which the wgpu renderer needs.
    #[error("the OpenXR runtime does not offer XR_KHR_vulkan_enable2, which the renderer needs")]
    NoVulkan,
    /// No headset is connected.
    #[error("the OpenXR runtime reports no head-mounted display: {0}")]
    NoHeadset(String),
    /// The runtime lost the session (`XR_SESSION_STATE_LOSS_PENDING`): the headset was
    /// unplugged or the runtime's display went away.
    #[error(
        "the OpenXR runtime lost the session (the headset was disconnected or its display went away); reconnect it and run theta view --xr again"
    )]
    SessionLost,
    /// Another OpenXR call failed.
    #[error("OpenXR: {0}")]
    Call(String),
}

/// The pieces the renderer needs from a started OpenXR system.
pub struct XrSystem {
    /// The instance.
    pub instance: openxr::Instance,
    /// The head-mounted system.
    pub system: openxr::SystemId,
    /// Recommended per-eye image sizes.
    pub views: Vec<openxr::ViewConfigurationView>,
}

impl std::fmt::Debug for XrSystem {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XrSystem").field("views", &self.views.len()).finish_non_exhaustive()
    }
}

/// Loads the loader, creates the instance with Vulkan interop, and finds the headset.
pub fn start() -> Result<XrSystem, XrError> {
    let entry = vulkan::openxr_entry()?;
    let available = entry.enumerate_extensions().map_err(classify)?;
    if !available.khr_vulkan_enable2 {
        return Err(XrError::NoVulkan);
    }
    let mut wanted = openxr::ExtensionSet::default();
    wanted.khr_vulkan_enable2 = true;
    let app = openxr::ApplicationInfo {
        application_name: "theta viewer",
        application_version: 1,
        engine_name: "theta",
        engine_version: 1,
        api_version: openxr::Version::new(1, 0, 0),
    };
    let instance = entry.create_instance(&app, &wanted, &[]).map_err(classify)?;
    let system =
        instance.system(openxr::FormFactor::HEAD_MOUNTED_DISPLAY).map_err(|e| XrError::NoHeadset(e.to_string()))?;
    let views = instance
        .enumerate_view_configuration_views(system, openxr::ViewConfigurationType::PRIMARY_STEREO)
        .map_err(classify)?;
    Ok(XrSystem { instance, system, views })
}

fn classify(e: openxr::sys::Result) -> XrError {
    if e == openxr::sys::Result::ERROR_RUNTIME_UNAVAILABLE {
        XrError::RuntimeUnavailable
    } else {
        XrError::Call(e.to_string())
    }
}

/// One OpenXR view (pose and field of view, as `xrLocateViews` gives each frame) as an [`Eye`]
/// for the shared stereo renderer.
pub fn eye(view: &openxr::View) -> Eye {
    let o = view.pose.orientation;
    let p = view.pose.position;
    Eye {
        position: Vec3::new(p.x, p.y, p.z),
        orientation: Quat::from_xyzw(o.x, o.y, o.z, o.w).normalize(),
        fov: Fov {
            left: view.fov.angle_left,
            right: view.fov.angle_right,
            up: view.fov.angle_up,
            down: view.fov.angle_down,
        },
    }
}

/// Where the session stands, from the runtime's state events.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Phase {
    /// Created, not yet running.
    Idle,
    /// Running: frames are submitted (not yet in focus).
    Running,
    /// Running with input focus.
    Focused,
    /// Ended; waiting for the runtime to let go.
    Stopped,
    /// The viewer must exit.
    Exit,
}

/// What the frame loop must do after a state change.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Action {
    /// Nothing.
    None,
    /// Call `xrBeginSession` and start the frame loop.
    Begin,
    /// Stop submitting frames and call `xrEndSession`.
    End,
    /// Leave: destroy the session and the instance.
    Exit,
}

impl Phase {
    /// The next phase and action for a session state event.
    pub fn on(self, state: openxr::SessionState) -> (Phase, Action) {
        use openxr::SessionState as S;
        match state {
            S::READY if self == Phase::Idle => (Phase::Running, Action::Begin),
            S::SYNCHRONIZED | S::VISIBLE if self != Phase::Idle => (Phase::Running, Action::None),
            S::FOCUSED if self != Phase::Idle => (Phase::Focused, Action::None),
            S::STOPPING if matches!(self, Phase::Running | Phase::Focused) => (Phase::Stopped, Action::End),
            S::EXITING | S::LOSS_PENDING => (Phase::Exit, Action::Exit),
            S::IDLE if self == Phase::Stopped => (Phase::Idle, Action::None),
            _ => (self, Action::None),
        }
    }

    /// Whether frames are rendered and submitted in this phase.
    pub fn renders(self) -> bool {
        matches!(self, Phase::Running | Phase::Focused)
    }
}
