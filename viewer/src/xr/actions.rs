//! OpenXR actions for the headset controls: one action set (aim pose, trigger, grip,
//! thumbstick, primary and secondary buttons, per hand) with suggested bindings for the common
//! controller profiles, read each frame into [`crate::vr_input::Input`].

use glam::{Quat, Vec2, Vec3};
use openxr as xr;

use super::XrError;
use crate::vr_input::{Hand, Input, Pose};

/// The headset controls' actions on one session.
pub struct XrActions {
    set: xr::ActionSet,
    aim: xr::Action<xr::Posef>,
    trigger: xr::Action<f32>,
    grip: xr::Action<f32>,
    stick: xr::Action<xr::Vector2f>,
    primary: xr::Action<bool>,
    secondary: xr::Action<bool>,
    hands: [xr::Path; 2],
    spaces: [xr::Space; 2],
    /// Interaction profiles whose bindings the runtime accepted.
    pub profiles: Vec<&'static str>,
}

impl std::fmt::Debug for XrActions {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XrActions").field("profiles", &self.profiles).finish_non_exhaustive()
    }
}

fn call(what: &str, e: xr::sys::Result) -> XrError {
    XrError::Call(format!("{what}: {e}"))
}

/// (profile, [(action, path suffix)]) for each profile; paths under /user/hand/{left,right}/input/.
const PROFILES: [(&str, &[(&str, &str)]); 5] = [
    (
        "/interaction_profiles/khr/simple_controller",
        &[("aim", "aim/pose"), ("trigger", "select/click"), ("secondary", "menu/click")],
    ),
    (
        "/interaction_profiles/oculus/touch_controller",
        &[
            ("aim", "aim/pose"),
            ("trigger", "trigger/value"),
            ("grip", "squeeze/value"),
            ("stick", "thumbstick"),
            ("primary", "a/click|x/click"),
            ("secondary", "b/click|y/click"),
        ],
    ),
    (
        "/interaction_profiles/valve/index_controller",
        &[
            ("aim", "aim/pose"),
            ("trigger", "trigger/value"),
            ("grip", "squeeze/value"),
            ("stick", "thumbstick"),
            ("primary", "a/click"),
            ("secondary", "b/click"),
        ],
    ),
    (
        "/interaction_profiles/htc/vive_controller",
        &[
            ("aim", "aim/pose"),
            ("trigger", "trigger/value"),
            ("grip", "squeeze/click"),
            ("stick", "trackpad"),
            ("secondary", "menu/click"),
        ],
    ),
    (
        "/interaction_profiles/microsoft/motion_controller",
        &[
            ("aim", "aim/pose"),
            ("trigger", "trigger/value"),
            ("grip", "squeeze/click"),
            ("stick", "thumbstick"),
            ("secondary", "menu/click"),
        ],
    ),
];

impl XrActions {
    /// Creates the actions, suggests bindings for every known profile (a profile the runtime
    /// refuses is skipped), and attaches them to `session`.
    pub fn new<G: xr::Graphics>(instance: &xr::Instance, session: &xr::Session<G>) -> Result<XrActions, XrError> {
        let path = |p: &str| instance.string_to_path(p).map_err(|e| call(&format!("xrStringToPath {p}"), e));
        let hands = [path("/user/hand/left")?, path("/user/hand/right")?];
        let set = instance.create_action_set("theta", "Theta viewer", 0).map_err(|e| call("xrCreateActionSet", e))?;
        let aim = set.create_action::<xr::Posef>("aim", "Aim", &hands).map_err(|e| call("xrCreateAction aim", e))?;
        let trigger = set.create_action::<f32>("trigger", "Trigger", &hands).map_err(|e| call("xrCreateAction", e))?;
        let grip = set.create_action::<f32>("grip", "Grip", &hands).map_err(|e| call("xrCreateAction", e))?;
        let stick =
            set.create_action::<xr::Vector2f>("stick", "Thumbstick", &hands).map_err(|e| call("xrCreateAction", e))?;
        let primary =
            set.create_action::<bool>("primary", "Play/pause", &hands).map_err(|e| call("xrCreateAction", e))?;
        let secondary =
            set.create_action::<bool>("secondary", "Back to live", &hands).map_err(|e| call("xrCreateAction", e))?;
        let mut profiles = Vec::new();
        for (profile, entries) in PROFILES {
            let mut paths = Vec::new();
            for (action, suffixes) in entries {
                for (i, hand) in ["left", "right"].iter().enumerate() {
                    // "a/click|x/click": the right hand's name first, then the left's.
                    let options: Vec<&str> = suffixes.split('|').collect();
                    let suffix = options.get(if i == 0 { options.len() - 1 } else { 0 }).copied().unwrap_or(suffixes);
                    paths.push((*action, path(&format!("/user/hand/{hand}/input/{suffix}"))?));
                }
            }
            let bindings: Vec<xr::Binding<'_>> = paths
                .iter()
                .map(|(action, p)| match *action {
                    "aim" => xr::Binding::new(&aim, *p),
                    "trigger" => xr::Binding::new(&trigger, *p),
                    "grip" => xr::Binding::new(&grip, *p),
                    "stick" => xr::Binding::new(&stick, *p),
                    "primary" => xr::Binding::new(&primary, *p),
                    _ => xr::Binding::new(&secondary, *p),
                })
                .collect();
            if instance.suggest_interaction_profile_bindings(path(profile)?, &bindings).is_ok() {
                profiles.push(profile);
            }
        }
        session.attach_action_sets(&[&set]).map_err(|e| call("xrAttachSessionActionSets", e))?;
        let space = |hand: xr::Path| {
            aim.create_space(session.clone(), hand, xr::Posef::IDENTITY).map_err(|e| call("xrCreateActionSpace", e))
        };
        let spaces = [space(hands[0])?, space(hands[1])?];
        Ok(XrActions { set, aim, trigger, grip, stick, primary, secondary, hands, spaces, profiles })
    }

    /// Syncs the actions and reads both hands at `time` in `base` (the stage).
    pub fn read<G>(&self, session: &xr::Session<G>, base: &xr::Space, time: xr::Time) -> Result<Input, XrError> {
        session.sync_actions(&[(&self.set).into()]).map_err(|e| call("xrSyncActions", e))?;
        let mut hands = [Hand::default(); 2];
        for (i, hand) in hands.iter_mut().enumerate() {
            let sub = self.hands[i];
            let loc = self.spaces[i].locate(base, time).map_err(|e| call("xrLocateSpace", e))?;
            let tracked = loc.location_flags.contains(xr::SpaceLocationFlags::POSITION_VALID)
                && loc.location_flags.contains(xr::SpaceLocationFlags::ORIENTATION_VALID);
            let active = self.aim.is_active(session, sub).unwrap_or(false);
            if tracked && active {
                let (p, o) = (loc.pose.position, loc.pose.orientation);
                hand.aim = Some(Pose {
                    position: Vec3::new(p.x, p.y, p.z),
                    orientation: Quat::from_xyzw(o.x, o.y, o.z, o.w).normalize(),
                });
            }
            let f =
                |a: &xr::Action<f32>| a.state(session, sub).map(|s| if s.is_active { s.current_state } else { 0.0 });
            let b = |a: &xr::Action<bool>| a.state(session, sub).map(|s| s.is_active && s.current_state);
            hand.trigger = f(&self.trigger).map_err(|e| call("xrGetActionStateFloat", e))?;
            hand.grip = f(&self.grip).map_err(|e| call("xrGetActionStateFloat", e))? > 0.5;
            let s = self.stick.state(session, sub).map_err(|e| call("xrGetActionStateVector2f", e))?;
            hand.thumbstick = if s.is_active { Vec2::new(s.current_state.x, s.current_state.y) } else { Vec2::ZERO };
            hand.primary = b(&self.primary).map_err(|e| call("xrGetActionStateBoolean", e))?;
            hand.secondary = b(&self.secondary).map_err(|e| call("xrGetActionStateBoolean", e))?;
        }
        Ok(Input { left: hands[0], right: hands[1] })
    }
}
