//! The OpenXR backend against a real runtime: Monado with its null compositor and simulated
//! headset, built by `scripts/build-monado` (run by `scripts/test`, which passes the runtime's
//! manifest in `THETA_MONADO_JSON`).
#![cfg(feature = "vr-openxr")]

use theta_viewer::xr::start;

/// Monado runs in-process and allows one OpenXR instance at a time: the tests take turns.
static ONE_INSTANCE: std::sync::Mutex<()> = std::sync::Mutex::new(());

/// Where the OpenXR core validation layer writes what it finds.
fn validation_log() -> std::path::PathBuf {
    std::env::temp_dir().join(format!("theta-xr-validation-{}.txt", std::process::id()))
}

/// Points the loader at Monado (null compositor, no window, no GPU needed), with the OpenXR
/// core validation layer (Debian's openxr-layer-corevalidation; instance creation fails if it is
/// missing) writing to [`validation_log`].
fn monado() {
    let manifest = std::env::var("THETA_MONADO_JSON").expect(
        "THETA_MONADO_JSON must name Monado's runtime manifest: run `scripts/build-monado` (scripts/test does) and set it to the path it prints",
    );
    assert!(std::path::Path::new(&manifest).exists(), "{manifest} does not exist");
    // Setting the environment is process-wide; this test binary runs nothing else that reads it.
    #[allow(unsafe_code)]
    unsafe {
        std::env::set_var("XR_RUNTIME_JSON", &manifest);
        std::env::set_var("XRT_COMPOSITOR_NULL", "1");
        std::env::set_var("XR_ENABLE_API_LAYERS", "XR_APILAYER_LUNARG_core_validation");
        std::env::set_var("XR_CORE_VALIDATION_EXPORT_TYPE", "text");
        std::env::set_var("XR_CORE_VALIDATION_FILE_NAME", validation_log());
    }
}

#[test]
fn the_runtime_offers_vulkan_and_a_stereo_headset() {
    let _turn = ONE_INSTANCE.lock().unwrap_or_else(|e| e.into_inner());
    monado();
    let system = start().unwrap_or_else(|e| panic!("OpenXR against Monado: {e}"));
    assert_eq!(system.views.len(), 2, "two eyes");
    for v in &system.views {
        assert!(v.recommended_image_rect_width > 0 && v.recommended_image_rect_height > 0, "{v:?}");
    }
}

/// A few coloured primitives in front of the origin.
fn scene() -> theta_viewer::Scene {
    use theta_schemas::components::{Material, Transform};
    use theta_schemas::ids::ComponentMeta;
    use theta_schemas::{AuthorKey, Command, CommandBody, ComponentId, SessionId, Shape};
    let s = SessionId([9; 16]);
    let mut p = theta_projector::Projection::new(s);
    let mut commands = vec![(0, ComponentId::NONE, Command::CreateSession { name: "xr".into() })];
    let shapes = [Shape::Cube, Shape::Sphere, Shape::Cylinder];
    let colors = [[0.9, 0.2, 0.2, 1.0], [0.2, 0.8, 0.3, 1.0], [0.2, 0.4, 0.9, 1.0]];
    for (i, shape) in shapes.into_iter().enumerate() {
        let e = i as u64 + 1;
        commands.push((e, ComponentId::NONE, Command::CreateEntity { shape, name: format!("e{e}"), parent: 0 }));
        let t = Transform { translation: [i as f32 * 1.2 - 1.2, 1.5, -3.0], ..Transform::default() };
        commands.push((e, Transform::id(), Command::SetTransform(t)));
        let m = Material { base_color: colors[i], metallic: 0.0, roughness: 0.5 };
        commands.push((e, Material::id(), Command::SetMaterial(m)));
    }
    for (i, (entity, component, command)) in commands.into_iter().enumerate() {
        let body = CommandBody {
            session: s,
            author: AuthorKey([1; 32]),
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
    theta_viewer::extract(&p)
}

#[test]
fn frames_reach_the_runtime_and_each_eye_matches_the_headless_render() {
    use theta_viewer::xr::{Frame, Phase, XrViewer};
    let _turn = ONE_INSTANCE.lock().unwrap_or_else(|e| e.into_inner());
    monado();
    let scene = scene();
    let mut viewer = XrViewer::new(start().unwrap()).unwrap_or_else(|e| panic!("XR viewer on Monado: {e}"));
    let (w, h) = viewer.eye_size();
    // Both eyes per draw (multiview) on the runtime's device (lavapipe has it).
    assert!(viewer.renderer().has_multiview(), "no multiview on {}", viewer.renderer().adapter_name());
    // The controller bindings were accepted, the generic profile at least.
    assert!(viewer.profiles().contains(&"/interaction_profiles/khr/simple_controller"), "{:?}", viewer.profiles());
    let mut focused = false;
    let mut captured = None;
    let mut with_timeline = None;
    let started = std::time::Instant::now();
    while viewer.frames_ended < 60 {
        assert!(started.elapsed() < std::time::Duration::from_secs(120), "60 frames took over 2 minutes: {viewer:?}");
        let capture = viewer.frames_ended == 30 || viewer.frames_ended == 45;
        // From frame 40 on, a history timeline (seq 5 of 10) and its status panel float in
        // front of the user.
        if viewer.frames_ended == 40 {
            viewer.set_timeline(Some((5, 10)));
            viewer.panel = Some("seq 5/10  12:00:00.000 UTC  SetTransform by 01010101".into());
        }
        match viewer.frame(&scene, capture).unwrap_or_else(|e| panic!("frame {}: {e}", viewer.frames_ended)) {
            Frame::Rendered { eyes, images: Some(images), commands } => {
                assert!(commands.is_empty(), "no controller was touched: {commands:?}");
                if viewer.timeline.is_some() {
                    with_timeline = Some(images);
                } else {
                    captured = Some((eyes, images));
                }
            }
            Frame::Exit => panic!("the session ended early"),
            _ => {}
        }
        focused |= viewer.phase() == Phase::Focused;
    }
    assert!(focused, "the session never reached FOCUSED");
    let (eyes, images) = captured.expect("frame 30 was rendered and read back");
    // Each eye equals the headless renderer's image of the same scene from the same pose.
    let mut headless = theta_viewer::Renderer::headless().unwrap();
    for (i, (eye, image)) in eyes.iter().zip(&images).enumerate() {
        let want = headless.render(&scene, std::slice::from_ref(eye), w, h, None).unwrap();
        let diff = image.diff_fraction(&want, 24);
        assert!(diff < 0.01, "eye {i}: {:.2}% of pixels differ from the headless render", diff * 100.0);
        // Not a blank image: the scene's red cube is in view of at least one eye.
        assert!(image.rgba.chunks(4).any(|p| p[0] > 150 && p[1] < 90), "eye {i} shows no red");
    }
    // The timeline's orange playhead is drawn in the headset.
    let timeline = with_timeline.expect("frame 45 was rendered with the timeline");
    let orange = |img: &theta_viewer::Image| {
        img.rgba.chunks(4).filter(|p| p[0] > 200 && (90..190).contains(&p[1]) && p[2] < 90).count()
    };
    assert!(orange(&timeline[0]) > 0 || orange(&timeline[1]) > 0, "no playhead in either eye");
    assert_eq!(orange(&images[0]) + orange(&images[1]), 0, "a playhead without a timeline");
    // So is the status panel: its dark backing (darker than anything in the scene or the sky).
    let dark = |img: &theta_viewer::Image| img.rgba.chunks(4).filter(|p| p[..3].iter().all(|c| *c < 60)).count();
    if let Ok(dir) = std::env::var("THETA_XR_SHOTS") {
        timeline[0].save_png(&std::path::Path::new(&dir).join("xr-left-timeline.png")).unwrap();
    }
    for eye in 0..2 {
        let (with, without) = (dark(&timeline[eye]), dark(&images[eye]));
        assert!(with > without + 150, "eye {eye}: no status panel ({with} dark pixels, {without} without it)");
    }
    // Asked to end, the session stops cleanly.
    viewer.request_exit().unwrap();
    let mut exited = false;
    for _ in 0..500 {
        if let Frame::Exit = viewer.frame(&scene, false).unwrap() {
            exited = true;
            break;
        }
    }
    assert!(exited, "the session did not end after xrRequestExitSession: {viewer:?}");
    drop(viewer);
    // The core validation layer found nothing wrong (it writes its file only when it reports).
    let report = std::fs::read_to_string(validation_log()).unwrap_or_default();
    assert!(!report.to_ascii_lowercase().contains("error"), "OpenXR core validation:\n{report}");
}
