//! Headset input mapped to viewer actions, without I/O: the XR frame loop feeds each frame's
//! action states (poses, trigger, grip, thumbsticks, buttons, from OpenXR actions) and reads back
//! what the viewer must do. Time comes in as an argument; nothing here touches OpenXR, so the
//! mapping is tested with scripted states.
//!
//! | input | effect |
//! | --- | --- |
//! | right ray on the timeline + trigger held | scrub: seek to the seq under the ray |
//! | right thumbstick left/right (flick) | step one entry back/forward |
//! | A (right) | play/pause |
//! | B (right) | jump back to live |
//! | right thumbstick up/down (flick) | playback faster/slower |
//! | left thumbstick left/right (flick) | snap turn by 30° |
//! | left thumbstick forward, then release | teleport to where the left ray meets the floor |
//! | one grip held | drag the world with that hand |
//! | both grips held | grab the world: move, and scale by the hands' distance |

use glam::{Quat, Vec2, Vec3};

/// A pose in the stage space (metres).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Pose {
    /// Position.
    pub position: Vec3,
    /// Orientation (a controller points along its −Z).
    pub orientation: Quat,
}

impl Pose {
    /// Where the pose points.
    pub fn forward(&self) -> Vec3 {
        self.orientation * Vec3::NEG_Z
    }
}

/// One controller's state in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Hand {
    /// The aim pose, when tracked.
    pub aim: Option<Pose>,
    /// Trigger, 0..1.
    pub trigger: f32,
    /// Grip held.
    pub grip: bool,
    /// Thumbstick, −1..1 each axis (+y forward).
    pub thumbstick: Vec2,
    /// Primary button (A / X).
    pub primary: bool,
    /// Secondary button (B / Y).
    pub secondary: bool,
}

/// Both hands in a frame.
#[derive(Debug, Clone, Copy, PartialEq, Default)]
pub struct Input {
    /// Left controller.
    pub left: Hand,
    /// Right controller.
    pub right: Hand,
}

/// How the session's world sits in the stage: stage = translation + rotate(yaw) · scale · world.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Rig {
    /// Where the world's origin is in the stage, metres.
    pub translation: Vec3,
    /// Rotation about the vertical axis, radians.
    pub yaw: f32,
    /// World scale (2: everything looks twice as large).
    pub scale: f32,
}

impl Default for Rig {
    fn default() -> Self {
        Rig { translation: Vec3::ZERO, yaw: 0.0, scale: 1.0 }
    }
}

impl Rig {
    /// A stage point in world coordinates.
    pub fn to_world(&self, stage: Vec3) -> Vec3 {
        Quat::from_rotation_y(-self.yaw) * (stage - self.translation) / self.scale
    }

    /// A world point in stage coordinates.
    pub fn to_stage(&self, world: Vec3) -> Vec3 {
        self.translation + Quat::from_rotation_y(self.yaw) * (world * self.scale)
    }

    /// A stage orientation in world coordinates.
    pub fn orientation_to_world(&self, stage: Quat) -> Quat {
        Quat::from_rotation_y(-self.yaw) * stage
    }
}

/// The world-space timeline panel: a rectangle facing the user, its left edge the first seq and
/// its right edge the head.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Timeline {
    /// Centre, stage metres.
    pub center: Vec3,
    /// Width and height, metres.
    pub size: Vec2,
    /// First and last seq the panel spans.
    pub seqs: (u64, u64),
    /// The seq shown (where the marker is).
    pub current: u64,
}

impl Timeline {
    /// The seq under a ray, if it hits the panel (the panel faces +Z in the stage).
    pub fn hit(&self, ray: &Pose) -> Option<u64> {
        let dir = ray.forward();
        if dir.z.abs() < 1e-6 {
            return None;
        }
        let t = (self.center.z - ray.position.z) / dir.z;
        if t <= 0.0 {
            return None;
        }
        let p = ray.position + dir * t - self.center;
        let half = self.size / 2.0;
        if p.x.abs() > half.x || p.y.abs() > half.y {
            return None;
        }
        let u = (p.x + half.x) / self.size.x;
        let (first, last) = self.seqs;
        Some(first + ((last.saturating_sub(first)) as f32 * u).round() as u64)
    }
}

/// What the viewer must do, from one frame of input.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    /// Open the session at this seq (scrub).
    Seek(u64),
    /// Apply or undo entries (negative: back).
    Step(i64),
    /// Toggle play/pause.
    TogglePause,
    /// Playback faster (+1) or slower (−1).
    Speed(i32),
    /// Back to the live session.
    Live,
}

/// Snap-turn angle, radians.
pub const SNAP_TURN: f32 = std::f32::consts::PI / 6.0;
/// A stick counts as flicked beyond this and released below [`STICK_RELEASE`].
pub const STICK_PRESS: f32 = 0.7;
/// See [`STICK_PRESS`].
pub const STICK_RELEASE: f32 = 0.3;
/// Trigger threshold.
pub const TRIGGER_PRESS: f32 = 0.5;
/// Smallest and largest world scale.
pub const SCALE_RANGE: (f32, f32) = (0.01, 100.0);

/// The controls' state between frames.
#[derive(Debug, Clone, Default)]
pub struct Controls {
    /// Where the world sits.
    pub rig: Rig,
    /// The seq last sent as a scrub (no repeats while the ray stays on it).
    scrubbed: Option<u64>,
    sticks_armed: [bool; 2],
    buttons: [bool; 2],
    teleport_aim: Option<Vec3>,
    grab: Option<Grab>,
}

#[derive(Debug, Clone, Copy)]
struct Grab {
    /// World points under the hands when the grab started.
    world: [Vec3; 2],
    /// Which hands hold (left, right).
    hands: [bool; 2],
}

fn flick(armed: &mut bool, value: f32) -> i32 {
    if *armed && value.abs() > STICK_PRESS {
        *armed = false;
        value.signum() as i32
    } else {
        if value.abs() < STICK_RELEASE {
            *armed = true;
        }
        0
    }
}

impl Controls {
    /// Controls with the world at `rig`.
    pub fn new(rig: Rig) -> Controls {
        Controls { rig, sticks_armed: [true; 2], ..Default::default() }
    }

    /// The teleport target being aimed at (to draw a marker), stage metres.
    pub fn teleport_aim(&self) -> Option<Vec3> {
        self.teleport_aim
    }

    /// Feeds one frame of input; `head` is the head pose (teleport moves it), `timeline` where
    /// the panel is. Returns the viewer commands of this frame, in order.
    pub fn update(&mut self, input: &Input, head: &Pose, timeline: Option<&Timeline>) -> Vec<Command> {
        let mut out = Vec::new();
        self.scrub(input, timeline, &mut out);
        self.buttons(input, &mut out);
        self.sticks(input, head, &mut out);
        self.grab(input);
        out
    }

    fn scrub(&mut self, input: &Input, timeline: Option<&Timeline>, out: &mut Vec<Command>) {
        let r = &input.right;
        let hit = match (r.aim, timeline) {
            (Some(aim), Some(t)) if r.trigger > TRIGGER_PRESS => t.hit(&aim),
            _ => None,
        };
        match hit {
            Some(seq) if self.scrubbed != Some(seq) => {
                self.scrubbed = Some(seq);
                out.push(Command::Seek(seq));
            }
            Some(_) => {}
            None => self.scrubbed = None,
        }
    }

    fn buttons(&mut self, input: &Input, out: &mut Vec<Command>) {
        let now = [input.right.primary, input.right.secondary];
        if now[0] && !self.buttons[0] {
            out.push(Command::TogglePause);
        }
        if now[1] && !self.buttons[1] {
            out.push(Command::Live);
        }
        self.buttons = now;
    }

    fn sticks(&mut self, input: &Input, head: &Pose, out: &mut Vec<Command>) {
        // Right stick: x steps, y changes the speed (one axis at a time, the larger).
        let rs = input.right.thumbstick;
        if self.scrubbed.is_none() {
            let (axis, is_x) = if rs.x.abs() >= rs.y.abs() { (rs.x, true) } else { (rs.y, false) };
            match flick(&mut self.sticks_armed[1], axis) {
                0 => {}
                d if is_x => out.push(Command::Step(i64::from(d))),
                d => out.push(Command::Speed(d)),
            }
        }
        // Left stick: x snap-turns about the head; pushing forward aims a teleport, releasing
        // it teleports.
        let ls = input.left.thumbstick;
        if ls.y > STICK_PRESS {
            self.teleport_aim = input.left.aim.and_then(floor_hit);
        } else if ls.y < STICK_RELEASE {
            if let Some(target) = self.teleport_aim.take() {
                // Move the world so that the point under the target comes under the head.
                let delta = Vec3::new(head.position.x - target.x, 0.0, head.position.z - target.z);
                self.rig.translation += delta;
            }
            let turn = flick(&mut self.sticks_armed[0], ls.x);
            if turn != 0 {
                let pivot = Vec3::new(head.position.x, 0.0, head.position.z);
                let r = Quat::from_rotation_y(-(turn as f32) * SNAP_TURN);
                self.rig.translation = pivot + r * (self.rig.translation - pivot);
                self.rig.yaw -= turn as f32 * SNAP_TURN;
            }
        }
    }

    fn grab(&mut self, input: &Input) {
        let hands = [input.left.grip && input.left.aim.is_some(), input.right.grip && input.right.aim.is_some()];
        let pos = |h: &Hand| h.aim.map_or(Vec3::ZERO, |a| a.position);
        let stage = [pos(&input.left), pos(&input.right)];
        if !hands[0] && !hands[1] {
            self.grab = None;
            return;
        }
        let grab = match self.grab {
            Some(g) if g.hands == hands => g,
            _ => {
                // A new grab (or a hand joined or left): remember the world points under the hands.
                let g = Grab { world: [self.rig.to_world(stage[0]), self.rig.to_world(stage[1])], hands };
                self.grab = Some(g);
                return;
            }
        };
        if hands[0] && hands[1] {
            // Both hands: scale by the hands' distance, then keep the held points under them.
            let world_d = grab.world[0].distance(grab.world[1]);
            let stage_d = stage[0].distance(stage[1]);
            if world_d > 1e-4 && stage_d > 1e-4 {
                self.rig.scale = (stage_d / world_d).clamp(SCALE_RANGE.0, SCALE_RANGE.1);
            }
            let mid_world = (grab.world[0] + grab.world[1]) / 2.0;
            let mid_stage = (stage[0] + stage[1]) / 2.0;
            self.rig.translation += mid_stage - self.rig.to_stage(mid_world);
        } else {
            let i = if hands[0] { 0 } else { 1 };
            self.rig.translation += stage[i] - self.rig.to_stage(grab.world[i]);
        }
    }
}

/// What the headset shows on top of the session: the timeline, the status panel, the right
/// controller's ray and the teleport target, all placed in the stage (they stay put while the
/// world moves) and drawn as primitives and labels converted to world coordinates through the
/// rig.
#[derive(Debug, Clone, Copy, Default)]
pub struct Overlay<'a> {
    /// The history timeline, when shown.
    pub timeline: Option<&'a Timeline>,
    /// The status panel's text (what is shown, the current edit, the controls).
    pub panel: Option<&'a str>,
    /// The right controller's aim, when tracked.
    pub ray: Option<Pose>,
    /// The teleport target being aimed at.
    pub teleport: Option<Vec3>,
}

/// Where the status panel's bottom centre is in the stage (above the timeline), metres.
pub const PANEL_ANCHOR: Vec3 = Vec3::new(0.0, 1.1, -1.2);
/// Height of a status panel line, metres (about 1.7° seen from the stage origin).
pub const PANEL_LINE: f32 = 0.035;

/// Length of the drawn controller ray, metres.
pub const RAY_LENGTH: f32 = 3.0;

impl Overlay<'_> {
    /// Nothing to draw.
    pub fn is_empty(&self) -> bool {
        self.timeline.is_none() && self.panel.is_none() && self.ray.is_none() && self.teleport.is_none()
    }

    /// The overlay as a scene of its own, in world coordinates for `rig` (drawn with the
    /// session's scene).
    pub fn draw(&self, rig: &Rig) -> crate::Scene {
        use crate::scene::{Instance, Label, shape_index};
        use glam::Mat4;
        let mut out = crate::Scene::default();
        let place = |center: Vec3, rotation: Quat, size: Vec3, color: [f32; 4]| Instance {
            model: Mat4::from_scale_rotation_translation(
                size / rig.scale,
                rig.orientation_to_world(rotation),
                rig.to_world(center),
            )
            .to_cols_array_2d(),
            color,
            highlight: [0.0; 4],
        };
        let cube = shape_index(theta_schemas::Shape::Cube);
        if let Some(t) = self.timeline {
            out.instances[cube].push(place(t.center, Quat::IDENTITY, Vec3::new(t.size.x, 0.02, 0.02), BAR));
            let (first, last) = t.seqs;
            let u =
                if last > first { (t.current.clamp(first, last) - first) as f32 / (last - first) as f32 } else { 1.0 };
            let at = t.center + Vec3::new((u - 0.5) * t.size.x, 0.0, 0.0);
            out.instances[cube].push(place(at, Quat::IDENTITY, Vec3::new(0.02, t.size.y, 0.03), PLAYHEAD));
        }
        if let Some(text) = self.panel {
            out.labels.push(Label {
                text: text.to_string(),
                anchor: rig.to_world(PANEL_ANCHOR),
                line_height: PANEL_LINE / rig.scale,
                accent: PLAYHEAD,
            });
        }
        if let Some(ray) = self.ray {
            let center = ray.position + ray.forward() * (RAY_LENGTH / 2.0);
            out.instances[cube].push(place(center, ray.orientation, Vec3::new(0.004, 0.004, RAY_LENGTH), RAY));
        }
        if let Some(target) = self.teleport {
            let disc = shape_index(theta_schemas::Shape::Cylinder);
            out.instances[disc].push(place(target, Quat::IDENTITY, Vec3::new(0.5, 0.01, 0.5), TELEPORT));
        }
        out
    }
}

/// Colours of the overlay (linear RGBA).
const BAR: [f32; 4] = [0.8, 0.8, 0.85, 1.0];
const PLAYHEAD: [f32; 4] = [1.0, 0.55, 0.1, 1.0];
const RAY: [f32; 4] = [0.3, 0.8, 1.0, 1.0];
const TELEPORT: [f32; 4] = [0.2, 1.0, 0.4, 1.0];

/// Where a ray meets the floor (y = 0) in front of it.
fn floor_hit(ray: Pose) -> Option<Vec3> {
    let d = ray.forward();
    if d.y >= -1e-4 {
        return None;
    }
    let t = -ray.position.y / d.y;
    Some(ray.position + d * t)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pointing(position: Vec3, at: Vec3) -> Pose {
        let dir = (at - position).normalize();
        Pose { position, orientation: Quat::from_rotation_arc(Vec3::NEG_Z, dir) }
    }

    fn head() -> Pose {
        Pose { position: Vec3::new(0.0, 1.6, 0.0), orientation: Quat::IDENTITY }
    }

    fn timeline() -> Timeline {
        Timeline { center: Vec3::new(0.0, 1.2, -1.0), size: Vec2::new(1.0, 0.2), seqs: (1, 101), current: 1 }
    }

    /// Runs `frames` of input through fresh controls; returns every command and the final rig.
    fn check(frames: &[Input]) -> (Vec<Command>, Controls) {
        let mut c = Controls::new(Rig::default());
        let mut all = Vec::new();
        for f in frames {
            all.extend(c.update(f, &head(), Some(&timeline())));
        }
        (all, c)
    }

    fn right(h: Hand) -> Input {
        Input { right: h, ..Default::default() }
    }

    fn left(h: Hand) -> Input {
        Input { left: h, ..Default::default() }
    }

    #[test]
    fn trigger_on_the_timeline_scrubs_to_the_seq_under_the_ray() {
        let from = Vec3::new(0.2, 1.1, 0.0);
        let at =
            |x: f32| Hand { aim: Some(pointing(from, Vec3::new(x, 1.2, -1.0))), trigger: 1.0, ..Default::default() };
        // Three quarters along: seq 76; held still: no repeat; then the left end: seq 1.
        let (cmds, _) = check(&[right(at(0.25)), right(at(0.25)), right(at(-0.5))]);
        assert_eq!(cmds, vec![Command::Seek(76), Command::Seek(1)]);
        // Without the trigger, or pointing off the panel, nothing.
        let off = Hand { trigger: 0.0, ..at(0.0) };
        let away = Hand { aim: Some(pointing(from, Vec3::new(3.0, 1.2, -1.0))), trigger: 1.0, ..Default::default() };
        assert_eq!(check(&[right(off), right(away)]).0, vec![]);
    }

    #[test]
    fn sticks_and_buttons_step_pause_speed_and_go_live() {
        let stick = |x: f32, y: f32| right(Hand { thumbstick: Vec2::new(x, y), ..Default::default() });
        let button = |primary: bool, secondary: bool| right(Hand { primary, secondary, ..Default::default() });
        let (cmds, _) = check(&[
            stick(0.9, 0.0),  // step forward
            stick(0.95, 0.0), // still held: nothing
            stick(0.0, 0.0),  // released
            stick(-0.9, 0.0), // step back
            stick(0.0, 0.0),
            stick(0.1, 0.9), // faster
            stick(0.0, 0.0),
            button(true, false), // pause
            button(true, false), // held: nothing
            button(false, true), // live
        ]);
        assert_eq!(
            cmds,
            vec![Command::Step(1), Command::Step(-1), Command::Speed(1), Command::TogglePause, Command::Live]
        );
    }

    #[test]
    fn teleport_moves_the_world_so_the_target_comes_under_the_head() {
        let aim = pointing(Vec3::new(0.0, 1.0, 0.0), Vec3::new(2.0, 0.0, -3.0));
        let push = left(Hand { aim: Some(aim), thumbstick: Vec2::new(0.0, 1.0), ..Default::default() });
        let release = left(Hand { aim: Some(aim), ..Default::default() });
        let (cmds, c) = check(&[push, push, release]);
        assert!(cmds.is_empty());
        // The world point that was at (2, 0, −3) in the stage is now under the head.
        let target_world = Vec3::new(2.0, 0.0, -3.0);
        let now = c.rig.to_stage(target_world);
        assert!((now - Vec3::new(0.0, 0.0, 0.0)).length() < 1e-4, "{now}");
    }

    #[test]
    fn snap_turn_rotates_the_world_about_the_head() {
        let turn = left(Hand { thumbstick: Vec2::new(1.0, 0.0), ..Default::default() });
        let rest = left(Hand::default());
        let (_, c) = check(&[turn, rest, turn]);
        assert!((c.rig.yaw + 2.0 * SNAP_TURN).abs() < 1e-5, "{}", c.rig.yaw);
        // The point under the head stays under the head.
        let under_head = c.rig.to_stage(Rig::default().to_world(Vec3::new(0.0, 0.0, 0.0)));
        assert!(under_head.length() < 1e-4, "{under_head}");
    }

    #[test]
    fn the_overlay_draws_the_timeline_ray_and_teleport_target_where_they_are_in_the_stage() {
        let t = timeline();
        let ray = pointing(Vec3::new(0.2, 1.1, 0.0), Vec3::new(0.2, 1.1, -1.0));
        let rig = Rig { translation: Vec3::new(1.0, 0.0, 0.0), yaw: 0.3, scale: 2.0 };
        assert!(Overlay::default().is_empty());
        let all = Overlay {
            timeline: Some(&t),
            panel: Some("seq 7/9"),
            ray: Some(ray),
            teleport: Some(Vec3::new(0.5, 0.0, -2.0)),
        };
        let drawn = all.draw(&rig);
        assert_eq!(drawn.len(), 4, "bar, playhead, ray, teleport disc");
        assert_eq!(drawn.labels.len(), 1, "the status panel");
        assert!((rig.to_stage(drawn.labels[0].anchor) - PANEL_ANCHOR).length() < 1e-4);
        assert!((drawn.labels[0].line_height * rig.scale - PANEL_LINE).abs() < 1e-6, "the same size in the stage");
        // Each instance's centre, taken back to the stage, is where it belongs.
        let stage_centre = |i: &crate::scene::Instance| rig.to_stage(Vec3::from_slice(&i.model[3][..3]));
        let cubes = &drawn.instances[crate::scene::shape_index(theta_schemas::Shape::Cube)];
        assert!((stage_centre(&cubes[0]) - t.center).length() < 1e-4);
        assert!(
            (stage_centre(&cubes[1]) - (t.center - Vec3::new(0.5, 0.0, 0.0))).length() < 1e-4,
            "seq 1: the left end"
        );
        assert!((stage_centre(&cubes[2]) - Vec3::new(0.2, 1.1, -RAY_LENGTH / 2.0)).length() < 1e-3);
        let discs = &drawn.instances[crate::scene::shape_index(theta_schemas::Shape::Cylinder)];
        assert!((stage_centre(&discs[0]) - Vec3::new(0.5, 0.0, -2.0)).length() < 1e-4);
    }

    #[test]
    fn both_grips_scale_the_world_and_one_grip_drags_it() {
        let hold = |l: Vec3, r: Vec3| Input {
            left: Hand {
                aim: Some(Pose { position: l, orientation: Quat::IDENTITY }),
                grip: true,
                ..Default::default()
            },
            right: Hand {
                aim: Some(Pose { position: r, orientation: Quat::IDENTITY }),
                grip: true,
                ..Default::default()
            },
        };
        // Hands 0.4 m apart, pulled to 0.8 m about the same midpoint: the world doubles.
        let (_, c) = check(&[
            hold(Vec3::new(-0.2, 1.0, -0.5), Vec3::new(0.2, 1.0, -0.5)),
            hold(Vec3::new(-0.4, 1.0, -0.5), Vec3::new(0.4, 1.0, -0.5)),
        ]);
        assert!((c.rig.scale - 2.0).abs() < 1e-4, "{}", c.rig.scale);
        // The point between the hands stays between them.
        let mid = c.rig.to_stage(Vec3::new(0.0, 1.0, -0.5));
        assert!((mid - Vec3::new(0.0, 1.0, -0.5)).length() < 1e-4, "{mid}");
        // One hand dragging 0.3 m to the right moves the world with it.
        let one = |x: f32| Input {
            right: Hand {
                aim: Some(Pose { position: Vec3::new(x, 1.0, -0.5), orientation: Quat::IDENTITY }),
                grip: true,
                ..Default::default()
            },
            ..Default::default()
        };
        let (_, c) = check(&[one(0.0), one(0.3)]);
        assert!((c.rig.translation - Vec3::new(0.3, 0.0, 0.0)).length() < 1e-5, "{}", c.rig.translation);
        assert_eq!(c.rig.scale, 1.0);
    }
}
