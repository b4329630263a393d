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
