//! `theta view --xr` against a real OpenXR runtime: Monado with its null compositor and
//! simulated headset (`scripts/build-monado`; `scripts/test` runs this with the `vr-openxr`
//! feature and the runtime's manifest in `THETA_MONADO_JSON`).
#![cfg(feature = "vr-openxr")]

use std::process::Command;

use crate::cli::{Kill, serve, theta_env};

/// Runs `theta view --xr` against the server at `grpc`, with Monado as the runtime.
fn view_xr(args: &[&str], grpc: &str) -> (bool, String, String) {
    let manifest = std::env::var("THETA_MONADO_JSON")
        .expect("THETA_MONADO_JSON must name Monado's runtime manifest (scripts/build-monado prints it)");
    let out = Command::new(env!("CARGO_BIN_EXE_theta"))
        .arg("view")
        .args(args)
        .env("THETA_SERVER", format!("http://{grpc}"))
        .env("XR_RUNTIME_JSON", manifest)
        .env("XRT_COMPOSITOR_NULL", "1")
        .output()
        .expect("run theta view --xr");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

fn frames_ended(out: &str) -> u64 {
    out.lines()
        .find_map(|l| l.strip_prefix("OpenXR session ended after ")?.split_whitespace().next()?.parse().ok())
        .unwrap_or_else(|| panic!("no frame count in:\n{out}"))
}

#[test]
fn view_xr_shows_a_session_live_and_from_history_in_the_headset() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (ok, _, err) = theta_env(&["keygen", "--out", &path("owner.key")], "127.0.0.1:1");
    assert!(ok, "{err}");
    let (child, grpc, quic, fp, _) = serve(&dir.path().join("data"), std::path::Path::new(&path("owner.key")));
    let _server = Kill(child);
    let run = |args: &[&str]| {
        let (ok, out, err) = theta_env(args, &grpc);
        assert!(ok, "theta {args:?} failed:\n{out}\n{err}");
        out
    };
    let session = run(&["session", "create", "--key", &path("owner.key"), "--name", "xr"]).trim().to_string();
    for json in [
        r#"{"kind":"CreateEntity","entity":1,"shape":"cube","name":"box"}"#,
        r#"{"kind":"SetTransform","entity":1,"translation":[0,1.5,-2]}"#,
        r#"{"kind":"CreateEntity","entity":2,"shape":"sphere","name":"ball"}"#,
    ] {
        run(&["append", "--key", &path("owner.key"), "--session", &session, "--json", json]);
    }
    // History from seq 1, one entry per frame, 60 frames, then the session ends cleanly.
    let (ok, out, err) =
        view_xr(&["--session", &session, "--key", &path("owner.key"), "--xr", "--at", "1", "--frames", "60"], &grpc);
    assert!(ok, "theta view --xr --at 1 failed:\n{out}\n{err}");
    assert!(out.contains("OpenXR session started"), "{out}");
    assert!(frames_ended(&out) >= 60, "{out}");
    // Live over QUIC.
    let (ok, out, err) = view_xr(
        &[
            "--session",
            &session,
            "--key",
            &path("owner.key"),
            "--xr",
            "--quic",
            &quic,
            "--fingerprint",
            &fp,
            "--frames",
            "30",
        ],
        &grpc,
    );
    assert!(ok, "theta view --xr (live) failed:\n{out}\n{err}");
    assert!(frames_ended(&out) >= 30, "{out}");
}

/// A historical session opened at seq S in the headset shows what the desktop viewer shows at S
/// from the same eyes: `--capture` writes the eyes' images and poses, `--eyes` renders from them.
#[test]
fn the_headset_at_seq_s_shows_what_the_desktop_shows_at_s() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (ok, _, err) = theta_env(&["keygen", "--out", &path("owner.key")], "127.0.0.1:1");
    assert!(ok, "{err}");
    let (child, grpc, _, _, _) = serve(&dir.path().join("data"), std::path::Path::new(&path("owner.key")));
    let _server = Kill(child);
    let run = |args: &[&str]| {
        let (ok, out, err) = theta_env(args, &grpc);
        assert!(ok, "theta {args:?} failed:\n{out}\n{err}");
        out
    };
    let key = path("owner.key");
    let session = run(&["session", "create", "--key", &key, "--name", "xr"]).trim().to_string();
    // A red box in front of the headset (seq 4), then moved out to the right (seq 5).
    for json in [
        r#"{"kind":"CreateEntity","entity":1,"shape":"cube","name":"box"}"#,
        r#"{"kind":"SetMaterial","entity":1,"base_color":[0.9,0.1,0.1,1]}"#,
        r#"{"kind":"SetTransform","entity":1,"translation":[0,1.4,-2.5]}"#,
        r#"{"kind":"SetTransform","entity":1,"translation":[3,1.4,-2.5]}"#,
    ] {
        run(&["append", "--key", &key, "--session", &session, "--json", json]);
    }
    let cap = path("capture");
    let (ok, out, err) = view_xr(
        &[
            "--session",
            &session,
            "--key",
            &key,
            "--xr",
            "--at",
            "4",
            "--step",
            "0",
            "--frames",
            "20",
            "--capture",
            &cap,
        ],
        &grpc,
    );
    assert!(ok, "theta view --xr --capture failed:\n{out}\n{err}");
    assert!(out.contains("captured both eyes (seq 4/5"), "{out}");
    let eyes = format!("{cap}/eyes.json");
    let desktop = |at: &str, out_dir: &str| {
        run(&[
            "view",
            "--session",
            &session,
            "--key",
            &key,
            "--headless",
            "--at",
            at,
            "--step",
            "0",
            "--frames",
            "1",
            "--eyes",
            &eyes,
            "--no-hud",
            "--out",
            out_dir,
        ]);
        theta_viewer::Image::load_png(&std::path::Path::new(out_dir).join("frame-00000.png")).unwrap()
    };
    let at_s = desktop("4", &path("desk4"));
    let at_head = desktop("5", &path("desk5"));
    for (i, name) in ["left.png", "right.png"].iter().enumerate() {
        let headset = theta_viewer::Image::load_png(&std::path::Path::new(&cap).join(name)).unwrap();
        let (same, other) = (at_s.half(i == 1), at_head.half(i == 1));
        assert_eq!((same.width, same.height), (headset.width, headset.height));
        let d = headset.diff_fraction(&same, 24);
        assert!(d < 0.01, "{name}: {:.2}% of pixels differ from the desktop at seq 4", d * 100.0);
        let red = headset.rgba.chunks(4).filter(|p| p[0] > 150 && p[1] < 90).count();
        assert!(red > 100, "{name}: the red box is not in view ({red} red pixels)");
        let moved = headset.diff_fraction(&other, 24);
        assert!(moved > 0.01, "{name}: seq 4 and seq 5 look the same ({:.2}%)", moved * 100.0);
    }
}
