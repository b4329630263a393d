//! Golden images: small scenes rendered headless (lavapipe on machines without a GPU) and
//! compared with reference PNGs in `tests/golden/` within a tolerance. A renderer that draws
//! the wrong shapes, places, colours, light or depth fails them.
//!
//! `THETA_UPDATE_GOLDEN=1` rewrites the references (review the PNGs before committing).

use std::path::PathBuf;

use glam::Vec3;
use theta_projector::Projection;
use theta_schemas::components::{Material, Mesh, Transform};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::{AuthorKey, Command, CommandBody, ComponentId, SessionId, Shape};
use theta_viewer::{Eye, Fov, Image, Orbit, Renderer, extract};

const S: SessionId = SessionId([7; 16]);
const W: u32 = 320;
const H: u32 = 240;

/// A projection built by folding `commands` (entity, component, command) in order.
fn world(commands: Vec<(u64, ComponentId, Command)>) -> Projection {
    let mut p = Projection::new(S);
    let author = AuthorKey([1; 32]);
    let mut all = vec![(0, ComponentId::NONE, Command::CreateSession { name: "golden".into() })];
    all.extend(commands);
    for (i, (entity, component, command)) in all.into_iter().enumerate() {
        let body = CommandBody {
            session: S,
            author,
            lamport: i as u64 + 1,
            nonce: i as u64 + 1,
            wall_clock_ms: 0,
            entity,
            component,
            base_version: 0,
            command,
        };
        p.apply_command(i as u64 + 1, &body).unwrap();
    }
    p
}

fn create(e: u64, shape: Shape) -> (u64, ComponentId, Command) {
    (e, ComponentId::NONE, Command::CreateEntity { shape, name: format!("e{e}"), parent: 0 })
}

fn at(e: u64, x: f32, y: f32, z: f32) -> (u64, ComponentId, Command) {
    (e, Transform::id(), Command::SetTransform(Transform { translation: [x, y, z], ..Transform::default() }))
}

fn color(e: u64, rgb: [f32; 3]) -> (u64, ComponentId, Command) {
    (
        e,
        Material::id(),
        Command::SetMaterial(Material { base_color: [rgb[0], rgb[1], rgb[2], 1.0], metallic: 0.0, roughness: 0.5 }),
    )
}

/// Five primitives in a row, coloured; one selected; a mesh tetrahedron; one child entity.
fn showcase() -> Projection {
    let shapes = [Shape::Cube, Shape::Sphere, Shape::Cylinder, Shape::Cone, Shape::Plane];
    let colors = [[0.9, 0.2, 0.2], [0.2, 0.8, 0.3], [0.2, 0.4, 0.9], [0.9, 0.8, 0.2], [0.8, 0.3, 0.8]];
    let mut c = Vec::new();
    for (i, s) in shapes.iter().enumerate() {
        let e = i as u64 + 1;
        c.push(create(e, *s));
        c.push(at(e, i as f32 * 1.6 - 3.2, 0.5, 0.0));
        c.push(color(e, colors[i]));
    }
    c.push((2, theta_schemas::components::Selection::id(), Command::Select));
    c.push(create(10, Shape::Cube));
    let tetra = Mesh {
        positions: vec![[0.0, 0.0, 0.0], [1.0, 0.0, 0.0], [0.0, 0.0, 1.0], [0.0, 1.0, 0.0]],
        indices: vec![0, 1, 2, 0, 3, 1, 1, 3, 2, 2, 3, 0],
    };
    c.push((10, Mesh::id(), Command::SetComponent { data: theta_schemas::components::Component::encode(&tetra) }));
    c.push(at(10, -1.0, 0.0, 2.0));
    c.into_iter()
        .chain([
            create(11, Shape::Sphere),
            (11, ComponentId::NONE, Command::Reparent { parent: 1 }),
            at(11, 0.0, 1.0, 0.0),
        ])
        .collect::<Vec<_>>()
        .pipe(world)
}

trait Pipe: Sized {
    fn pipe<T>(self, f: impl FnOnce(Self) -> T) -> T {
        f(self)
    }
}
impl<T> Pipe for T {}

fn camera() -> Eye {
    Orbit { target: Vec3::new(0.0, 0.5, 0.0), distance: 9.0, yaw: 0.5, pitch: 0.4, fov_y: 0.9 }.eye(W as f32 / H as f32)
}

fn golden(name: &str, image: &Image) {
    let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("tests/golden").join(format!("{name}.png"));
    if std::env::var_os("THETA_UPDATE_GOLDEN").is_some() {
        image.save_png(&path).unwrap();
        return;
    }
    let want =
        Image::load_png(&path).unwrap_or_else(|e| panic!("{}: {e} (THETA_UPDATE_GOLDEN=1 writes it)", path.display()));
    let diff = image.diff_fraction(&want, 24);
    if diff > 0.01 {
        let out = std::env::temp_dir().join(format!("theta-golden-{name}-actual.png"));
        image.save_png(&out).unwrap();
        panic!(
            "{name}: {:.2}% of pixels differ from {} (actual image: {})",
            diff * 100.0,
            path.display(),
            out.display()
        );
    }
}

fn renderer() -> Renderer {
    let r = Renderer::headless().expect("a graphics adapter (mesa-vulkan-drivers)");
    println!("adapter: {}", r.adapter_name());
    r
}

#[test]
fn golden_scenes() {
    let mut r = renderer();
    let eye = camera();
    let img = r.render(&extract(&showcase()), &[eye], W, H, None).unwrap();
    golden("showcase", &img);
    // An empty world: grid only.
    let img = r.render(&extract(&world(vec![])), &[eye], W, H, None).unwrap();
    golden("empty", &img);
    // With the HUD.
    let img = r.render(&extract(&showcase()), &[eye], W, H, Some("seq 42  fps 90\nRTT 0.3 ms")).unwrap();
    golden("hud", &img);
    // Moving one cube changes the image where it was and where it went, not elsewhere.
    let mut moved = showcase();
    let body = CommandBody {
        session: S,
        author: AuthorKey([1; 32]),
        lamport: 100,
        nonce: 100,
        wall_clock_ms: 0,
        entity: 1,
        component: Transform::id(),
        base_version: 0,
        command: Command::SetTransform(Transform { translation: [-3.2, 2.5, 0.0], ..Transform::default() }),
    };
    moved.apply_command(moved.seq() + 1, &body).unwrap();
    let a = r.render(&extract(&showcase()), &[eye], W, H, None).unwrap();
    let b = r.render(&extract(&moved), &[eye], W, H, None).unwrap();
    let d = a.diff_fraction(&b, 24);
    assert!(d > 0.003 && d < 0.2, "moving one cube changed {:.2}% of the image", d * 100.0);
}

#[test]
fn stereo_eyes_differ_by_the_eye_offset() {
    let mut r = renderer();
    let head = camera();
    let scene = extract(&showcase());
    let [left, right] = head.stereo(0.064);
    let pair = r.render(&scene, &[left, right], W, H, None).unwrap();
    assert_eq!((pair.width, pair.height), (2 * W, H));
    let (l, rr) = (pair.half(false), pair.half(true));
    // Each half equals that eye rendered alone (side by side = two mono renders).
    let l_alone = r.render(&scene, &[left], W, H, None).unwrap();
    let r_alone = r.render(&scene, &[right], W, H, None).unwrap();
    assert!(l.diff_fraction(&l_alone, 2) < 0.001 && rr.diff_fraction(&r_alone, 2) < 0.001);
    // The eyes see different images, and the difference is parallax, not a different scene:
    // shifting the right image by the disparity of the scene centre brings them much closer.
    let raw = l.diff_fraction(&rr, 24);
    assert!(raw > 0.01, "left and right differ ({:.2}%)", raw * 100.0);
    // Swapping which eye is left changes the result (the offsets are not symmetric no-ops).
    let swapped = r.render(&scene, &[right, left], W, H, None).unwrap();
    assert!(swapped.diff_fraction(&pair, 24) > 0.01);
    golden("stereo", &pair);
    // Multiview (both eyes in one draw into a two-layer texture) agrees with side by side.
    assert!(r.has_multiview(), "{} lacks multiview (lavapipe has it)", r.adapter_name());
    let mv = r.render_multiview(&scene, [left, right], W, H).expect("multiview").unwrap();
    let d = mv.diff_fraction(&pair, 8);
    if d >= 0.005 {
        mv.save_png(&std::env::temp_dir().join("theta-multiview.png")).unwrap();
    }
    assert!(d < 0.005, "multiview and side by side differ in {:.3}% of pixels", d * 100.0);
    // Zero IPD and symmetric fields of view: both eyes see the same image.
    let same = Eye { fov: Fov::symmetric(0.9, W as f32 / H as f32), ..head };
    let mono_pair = r.render(&scene, &[same, same], W, H, None).unwrap();
    let d = mono_pair.half(false).diff_fraction(&mono_pair.half(true), 2);
    assert!(d < 0.001, "identical eyes differ in {:.3}% of pixels", d * 100.0);
}

#[test]
fn badges_name_the_author_over_selected_and_recently_edited_entities() {
    let p = showcase();
    let badges = theta_viewer::badges(&p, 2);
    let texts: Vec<&str> = badges.iter().map(|l| l.text.as_str()).collect();
    // Entity 2 is selected; 10 and 11 were edited last (11's transform is the newest entry).
    assert_eq!(texts, ["e2\nselected by 01010101", "e10\nedited by 01010101", "e11\nedited by 01010101"]);
    let color = theta_viewer::scene::author_color(&AuthorKey([1; 32]));
    assert!(badges.iter().all(|l| l.accent == color));
    // Each hangs above its entity: entity 2 sits at (-1.6, 0.5, 0), scale 1.
    assert!((badges[0].anchor - Vec3::new(-1.6, 1.05, 0.0)).length() < 1e-5, "{}", badges[0].anchor);

    let mut r = renderer();
    let eye = camera();
    let mut scene = extract(&p);
    let plain = r.render(&scene, &[eye], W, H, None).unwrap();
    // Large enough to test pixels at this distance (in a headset they are seen from ~1 m).
    scene.labels = badges.into_iter().map(|l| theta_viewer::Label { line_height: 0.3, ..l }).collect();
    let labelled = r.render(&scene, &[eye], W, H, None).unwrap();
    golden("badges", &labelled);
    // Just above each anchor (the bottom margin) the label's dark panel covers what was there.
    for l in &scene.labels {
        let clip = eye.view_projection() * (l.anchor + Vec3::new(0.0, 0.06, 0.0)).extend(1.0);
        let (x, y) =
            (((clip.x / clip.w + 1.0) / 2.0 * W as f32) as u32, ((1.0 - clip.y / clip.w) / 2.0 * H as f32) as u32);
        let i = ((y * W + x) * 4) as usize;
        let (px, under) = (&labelled.rgba[i..i + 3], &plain.rgba[i..i + 3]);
        // A translucent dark panel (blended in linear light): dark, and darker than the scene.
        assert!(
            px.iter().zip(under).all(|(c, u)| *c < 100 && (*c < *u || *u < 40)),
            "{px:?} over {under:?} at ({x}, {y}): not the label's panel"
        );
    }
    let d = plain.diff_fraction(&labelled, 24);
    assert!(d > 0.01 && d < 0.2, "the labels changed {:.2}% of the image", d * 100.0);
    // Multiview (both eyes per draw, the headset path where the device has it) draws the
    // labels as the pass per eye does.
    let [left, right] = eye.stereo(0.064);
    let pair = r.render(&scene, &[left, right], W, H, None).unwrap();
    let mv = r.render_multiview(&scene, [left, right], W, H).expect("multiview").unwrap();
    let d = mv.diff_fraction(&pair, 8);
    assert!(d < 0.005, "multiview and side by side differ in {:.3}% of pixels with labels", d * 100.0);
}
