//! The `theta` binary: demo, manifest, keys.

use std::process::Command;

fn theta(args: &[&str]) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_theta")).args(args).output().expect("run theta");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[test]
fn demo_runs_renders_and_its_replay_check_passes() {
    let dir = tempfile::tempdir().unwrap();
    let (data, frames) = (dir.path().join("data"), dir.path().join("frames"));
    let args = ["demo", "--seconds", "2", "--fps", "5", "--width", "320", "--height", "180"];
    let (ok, out, err) =
        theta(&[&args[..], &["--data", data.to_str().unwrap(), "--out", frames.to_str().unwrap()]].concat());
    assert!(ok, "demo failed:\n{out}\n{err}");
    assert!(out.contains("replay check       passed"), "{out}");
    assert!(out.contains("= live") && out.contains("same state hash and same image as live"), "{out}");
    for counter in ["permission_denials     1", "conflict_rejections    1"] {
        assert!(out.contains(counter), "missing {counter:?} in\n{out}");
    }
    // The frames are real PNGs of the scene.
    let pngs: Vec<_> = std::fs::read_dir(&frames)
        .unwrap()
        .flatten()
        .filter(|e| e.file_name().to_string_lossy().ends_with(".png"))
        .collect();
    assert!(pngs.len() >= 5, "{} frames", pngs.len());
    let img = theta_viewer::Image::load_png(&pngs[0].path()).unwrap();
    assert_eq!((img.width, img.height), (320, 180));
    // The data directory is kept when given.
    assert!(data.join("service.key").exists());
}

#[test]
fn manifest_matches_the_pinned_one() {
    let (ok, out, _) = theta(&["manifest"]);
    assert!(ok);
    assert_eq!(out, theta_schemas::manifest::render());
    assert!(out.contains("theta.Transform    v1  0x72d836534314151e"));
}

#[test]
fn keygen_writes_a_private_key_and_refuses_to_overwrite() {
    let dir = tempfile::tempdir().unwrap();
    let key = dir.path().join("me.key");
    let (ok, out, _) = theta(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(ok);
    let public = out.lines().find_map(|l| l.strip_prefix("public key: ")).unwrap().to_string();
    #[cfg(unix)]
    {
        use std::os::unix::fs::PermissionsExt;
        assert_eq!(std::fs::metadata(&key).unwrap().permissions().mode() & 0o777, 0o600);
    }
    let (ok, out, _) = theta(&["pubkey", key.to_str().unwrap()]);
    assert!(ok);
    assert_eq!(out.trim(), public);
    let (ok, _, err) = theta(&["keygen", "--out", key.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("exists; pass --force"), "{err}");
    std::fs::write(&key, "not hex").unwrap();
    let (ok, _, err) = theta(&["pubkey", key.to_str().unwrap()]);
    assert!(!ok);
    assert!(err.contains("64 hex digits"), "{err}");
}

#[test]
fn serve_shuts_down_gracefully_on_sigterm_keeping_every_acknowledged_append() {
    use std::io::{BufRead, BufReader};
    use std::process::Stdio;

    use theta_proto::v1 as pb;
    use theta_proto::v1::log_service_client::LogServiceClient;
    use theta_schemas::components::Transform;
    use theta_schemas::ids::ComponentMeta;
    use theta_schemas::{Command as Cmd, CommandBody, ComponentId, Envelope, SessionId, Shape};
    use tokio_stream::StreamExt;

    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let mut child = Command::new(env!("CARGO_BIN_EXE_theta"))
        .args([
            "serve",
            "--data",
            data.to_str().unwrap(),
            "--grpc-addr",
            "127.0.0.1:0",
            "--metrics-addr",
            "off",
            "--http-addr",
            "off",
            "--quic-addr",
            "127.0.0.1:0",
        ])
        .args(["--rate-per-sec", "100000", "--rate-burst", "100000"])
        // The key the test creates its session with ([5; 32]'s public key) is the admin.
        .args(["--admin", &hex::encode(ed25519_dalek::SigningKey::from_bytes(&[5; 32]).verifying_key().to_bytes())])
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let addr = loop {
        let line = lines.next().expect("server output").unwrap();
        if let Some(rest) = line.split("grpc=").nth(1) {
            break rest.split_whitespace().next().unwrap().to_string();
        }
    };
    let log_thread = std::thread::spawn(move || lines.map_while(Result::ok).collect::<Vec<_>>());

    let key = ed25519_dalek::SigningKey::from_bytes(&[5; 32]);
    let session = SessionId([0x55; 16]);
    let sign = |lamport: u64, entity: u64, component: ComponentId, command: Cmd| {
        let body = CommandBody {
            session,
            author: theta_schemas::signing::author_key(&key),
            lamport,
            nonce: lamport,
            wall_clock_ms: 0,
            entity,
            component,
            base_version: 0,
            command,
        };
        Envelope::sign(&body, &key).encode()
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let pid = child.id().to_string();
    let acked: Vec<u64> = rt.block_on(async {
        let mut log = LogServiceClient::connect(format!("http://{addr}")).await.unwrap();
        log.create_session(pb::AppendRequest {
            envelope: sign(1, 0, ComponentId::NONE, Cmd::CreateSession { name: "term".into() }),
        })
        .await
        .unwrap();
        let create = Cmd::CreateEntity { shape: Shape::Cube, name: String::new(), parent: 0 };
        log.append(pb::AppendRequest { envelope: sign(2, 1, ComponentId::NONE, create) }).await.unwrap();
        let reqs: Vec<pb::AppendRequest> = (3..20_000u64)
            .map(|l| pb::AppendRequest {
                envelope: sign(l, 1, Transform::id(), Cmd::SetTransform(Transform::default())),
            })
            .collect();
        let mut out = log.append_stream(tokio_stream::iter(reqs)).await.unwrap().into_inner();
        let mut acked = vec![1, 2];
        let mut answered = 0;
        while let Some(r) = out.next().await {
            let Ok(r) = r else { break };
            answered += 1;
            if let Some(pb::append_stream_response::Result::Receipt(rc)) = r.result {
                acked.push(rc.seq);
            }
            if answered == 200 {
                Command::new("kill").args(["-TERM", &pid]).status().unwrap();
            }
        }
        assert!(answered >= 200, "answered {answered}");
        acked
    });
    let status = child.wait().unwrap();
    assert!(status.success(), "serve exits cleanly on SIGTERM: {status:?}");
    let logs = log_thread.join().unwrap().join("\n");
    assert!(logs.contains("shutting down") && logs.contains("stopped"), "{logs}");
    // Every acknowledged append is in the store, which reopens verified.
    let store = theta_store::Store::open(&data, theta_store::StoreConfig::default()).unwrap();
    assert!(store.corrupted().is_empty());
    let head = store.head(&session).unwrap().seq;
    assert!(head >= *acked.iter().max().unwrap());
    for seq in acked {
        store.entry(&session, seq).unwrap();
    }
}

/// A child process killed when dropped (servers, X servers).
pub(crate) struct Kill(pub(crate) std::process::Child);

impl Drop for Kill {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// Starts `theta serve` on loopback ports in `data` with `admin` (a key file) as its service
/// admin, as the README says; returns the child, the gRPC address, the QUIC address, the
/// certificate fingerprint and the WebRTC signalling URL from its start-up log line.
pub(crate) fn serve(
    data: &std::path::Path,
    admin: &std::path::Path,
) -> (std::process::Child, String, String, String, String) {
    serve_with(data, admin.to_str().unwrap(), &[])
}

/// [`serve`] with `admin` as a key file or 64 hex digits, and more flags.
pub(crate) fn serve_with(
    data: &std::path::Path,
    admin: &str,
    extra: &[&str],
) -> (std::process::Child, String, String, String, String) {
    use std::io::{BufRead, BufReader};
    let mut child = Command::new(env!("CARGO_BIN_EXE_theta"))
        .args(["serve", "--data", data.to_str().unwrap(), "--grpc-addr", "127.0.0.1:0"])
        .args(["--admin", admin])
        .args(["--metrics-addr", "127.0.0.1:0", "--http-addr", "127.0.0.1:0", "--quic-addr", "127.0.0.1:0"])
        .args(extra)
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(child.stderr.take().unwrap()).lines();
    let field = |line: &str, name: &str| -> Option<String> {
        let v = line.split(&format!("{name}=")).nth(1)?.split_whitespace().next()?;
        Some(v.trim_start_matches("Some(").trim_end_matches(')').to_string())
    };
    // The start-up line's fields; `None` if the server ended first or the line lacks one.
    let started = (|| loop {
        let line = lines.next()?.ok()?;
        if line.contains("theta serving") {
            let grpc = field(&line, "grpc")?;
            let quic = field(&line, "quic")?;
            let fp = field(&line, "quic_cert_sha256")?;
            let signal = field(&line, "webrtc_signal")?.trim_matches('"').to_string();
            return Some((grpc, quic, fp, signal));
        }
    })();
    match started {
        Some((grpc, quic, fp, signal)) => {
            std::thread::spawn(move || lines.map_while(Result::ok).for_each(drop));
            (child, grpc, quic, fp, signal)
        }
        None => {
            let _ = child.kill();
            let _ = child.wait();
            panic!("theta serve ended before its start-up line");
        }
    }
}

#[test]
fn view_renders_a_session_live_and_from_history() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    assert!(theta(&["keygen", "--out", &path("owner.key")]).0);
    let (child, grpc, quic, fp, signal) = serve(&dir.path().join("data"), std::path::Path::new(&path("owner.key")));
    let _child = Kill(child);
    let run = |args: &[&str]| {
        let (ok, out, err) = theta_env(args, &grpc);
        assert!(ok, "theta {args:?} failed:\n{out}\n{err}");
        out
    };
    run(&["keygen", "--out", &path("viewer.key")]);
    // The bare id on stdout, so that S=$(theta session create ...) works.
    let session = run(&["session", "create", "--key", &path("owner.key"), "--name", "view"]);
    let session = session.trim();
    assert!(session.len() == 32 && session.chars().all(|c| c.is_ascii_hexdigit()), "{session:?}");
    let viewer = run(&["pubkey", &path("viewer.key")]).trim().to_string();
    for json in [
        format!(r#"{{"kind":"GrantRole","key":"{viewer}","role":"viewer"}}"#),
        r#"{"kind":"CreateEntity","entity":1,"shape":"cube","name":"box"}"#.to_string(),
        r#"{"kind":"CreateEntity","entity":2,"shape":"sphere","name":"ball"}"#.to_string(),
        r#"{"kind":"SetTransform","entity":2,"translation":[2,1,0]}"#.to_string(),
    ] {
        run(&["append", "--key", &path("owner.key"), "--session", session, "--json", &json]);
    }
    // From history: seq 2 on, one entry per frame, until the head (seq 5), read with the
    // viewer's credentials.
    let out = run(&[
        "view",
        "--session",
        session,
        "--key",
        &path("viewer.key"),
        "--headless",
        "--at",
        "2",
        "--frames",
        "10",
        "--out",
        &path("hist"),
        "--width",
        "160",
        "--height",
        "90",
    ]);
    assert!(out.contains("reached the head at seq 5"), "{out}");
    let frames = |d: &str| std::fs::read_dir(path(d)).unwrap().flatten().count();
    assert_eq!(frames("hist"), 4, "seq 2, 3, 4, 5");
    // Live over QUIC with the viewer's key, pinning the certificate.
    let out = run(&[
        "view",
        "--session",
        session,
        "--headless",
        "--key",
        &path("viewer.key"),
        "--quic",
        &quic,
        "--fingerprint",
        &fp,
        "--frames",
        "3",
        "--out",
        &path("live"),
        "--width",
        "160",
        "--height",
        "90",
    ]);
    assert!(out.contains("connected as Viewer"), "{out}");
    assert_eq!(frames("live"), 3);
    // The same over WebRTC, signalling at the URL the server logged.
    let out = run(&[
        "view",
        "--session",
        session,
        "--headless",
        "--key",
        &path("viewer.key"),
        "--transport",
        "webrtc",
        "--webrtc",
        &signal,
        "--frames",
        "2",
        "--out",
        &path("rtc"),
        "--width",
        "160",
        "--height",
        "90",
    ]);
    assert!(out.contains("connected as Viewer"), "{out}");
    assert_eq!(frames("rtc"), 2);
    let img = theta_viewer::Image::load_png(&dir.path().join("live/frame-00002.png")).unwrap();
    assert_eq!((img.width, img.height), (160, 90));
    // A key without a role is refused with the handshake's reason.
    run(&["keygen", "--out", &path("stranger.key")]);
    let (ok, _, err) = theta_env(
        &[
            "view",
            "--session",
            session,
            "--headless",
            "--key",
            &path("stranger.key"),
            "--quic",
            &quic,
            "--fingerprint",
            &fp,
            "--out",
            &path("nope"),
        ],
        &grpc,
    );
    assert!(!ok && err.contains("no role"), "{err}");
}

/// Runs `theta` against the gRPC server at `grpc` (through `THETA_SERVER`).
pub(crate) fn theta_env(args: &[&str], grpc: &str) -> (bool, String, String) {
    let out = Command::new(env!("CARGO_BIN_EXE_theta"))
        .args(args)
        .env("THETA_SERVER", format!("http://{grpc}"))
        .output()
        .expect("run theta");
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// An X screenshot of display `display` (via `xwd`) as RGB rows: (width, height, pixels).
fn screenshot(display: &str) -> Option<(usize, usize, Vec<[u8; 3]>)> {
    let out = Command::new("xwd").args(["-root", "-silent", "-display", display]).output().ok()?;
    let d = out.stdout;
    if !out.status.success() || d.len() < 100 {
        return None;
    }
    let field = |i: usize| u32::from_be_bytes(d[i * 4..i * 4 + 4].try_into().unwrap()) as usize;
    let (header, width, height, byte_order, bpp, bpl, ncolors) =
        (field(0), field(4), field(5), field(7), field(11), field(12), field(19));
    assert_eq!(bpp, 32, "24-bit Xvfb screens store 32 bits per pixel");
    let start = header + ncolors * 12;
    let mut px = Vec::with_capacity(width * height);
    for y in 0..height {
        for x in 0..width {
            let p: [u8; 4] = d[start + y * bpl + x * 4..][..4].try_into().unwrap();
            let v = if byte_order == 0 { u32::from_le_bytes(p) } else { u32::from_be_bytes(p) };
            px.push([(v >> 16) as u8, (v >> 8) as u8, v as u8]);
        }
    }
    Some((width, height, px))
}

#[test]
fn window_under_xvfb_shows_the_scene() {
    let display = format!(":{}", 60 + std::process::id() % 200);
    let _xvfb = Kill(
        Command::new("Xvfb")
            .args([display.as_str(), "-screen", "0", "800x600x24", "-nolisten", "tcp"])
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("Xvfb (apt-get install xvfb; scripts/test installs it)"),
    );
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    assert!(theta(&["keygen", "--out", &path("owner.key")]).0);
    let (child, grpc, _, _, _) = serve(&dir.path().join("data"), std::path::Path::new(&path("owner.key")));
    let _server = Kill(child);
    let run = |args: &[&str]| {
        let (ok, out, err) = theta_env(args, &grpc);
        assert!(ok, "theta {args:?} failed:\n{out}\n{err}");
        out
    };
    let session = run(&["session", "create", "--key", &path("owner.key"), "--name", "window"]);
    let session =
        session.split_whitespace().find(|w| w.len() == 32 && w.chars().all(|c| c.is_ascii_hexdigit())).unwrap();
    // A big red cube in front of the default camera.
    for json in [
        r#"{"kind":"CreateEntity","entity":1,"shape":"cube","name":"red"}"#,
        r#"{"kind":"SetTransform","entity":1,"translation":[0,1.5,0],"scale":[3,3,3]}"#,
        r#"{"kind":"SetMaterial","entity":1,"base_color":[0.9,0.1,0.1,1]}"#,
    ] {
        run(&["append", "--key", &path("owner.key"), "--session", session, "--json", json]);
    }
    let _view = Kill(
        Command::new(env!("CARGO_BIN_EXE_theta"))
            .args(["view", "--session", session, "--at", "0", "--step", "0", "--frames", "2000"])
            .args(["--key", &path("owner.key")])
            .args(["--width", "400", "--height", "300"])
            .env("THETA_SERVER", format!("http://{grpc}"))
            .env("DISPLAY", &display)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    );
    // Screenshots of the X screen until the window shows the cube (or 60 s pass).
    let started = std::time::Instant::now();
    let mut best = 0;
    while started.elapsed() < std::time::Duration::from_secs(60) {
        std::thread::sleep(std::time::Duration::from_millis(500));
        let Some((w, _, px)) = screenshot(&display) else { continue };
        // Red pixels inside the window's area (top-left 400×300 of the screen).
        let red = (0..300)
            .flat_map(|y| (0..400).map(move |x| (x, y)))
            .filter(|(x, y)| {
                let [r, g, b] = px[y * w + x];
                r > 120 && g < 80 && b < 80
            })
            .count();
        best = best.max(red);
        if red > 2_000 {
            return;
        }
    }
    panic!("no window with the red cube appeared on {display} (most red pixels seen: {best})");
}

#[test]
fn history_commands_append_list_verify_prove_and_refuse_clearly() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    assert!(theta(&["keygen", "--out", &path("owner.key")]).0);
    assert!(theta(&["keygen", "--out", &path("stranger.key")]).0);
    let (child, grpc, ..) = serve(&dir.path().join("data"), std::path::Path::new(&path("owner.key")));
    let _child = Kill(child);
    let run = |args: &[&str]| {
        let (ok, out, err) = theta_env(args, &grpc);
        assert!(ok, "theta {args:?} failed:\n{out}\n{err}");
        out
    };
    let owner = path("owner.key");
    let session = run(&["session", "create", "--key", &owner, "--name", "history"]).trim().to_string();
    for json in [
        r#"{"kind":"CreateEntity","entity":1,"shape":"cone","name":"c"}"#,
        r#"{"kind":"SetTransform","entity":1,"translation":[1,2,3]}"#,
        r#"{"kind":"Rename","entity":1,"name":"renamed"}"#,
    ] {
        let receipt: serde_json::Value = serde_json::from_str(&run(&[
            "append",
            "--key",
            &owner,
            "--session",
            &session,
            "--json",
            json,
            "--json-output",
        ]))
        .unwrap();
        assert!(receipt["seq"].as_u64().unwrap() >= 2, "{receipt}");
    }
    // The log as JSON lines: every entry, in seq order, with its kind.
    let log = run(&["log", "--key", &owner, "--session", &session, "--json"]);
    let kinds: Vec<String> = log
        .lines()
        .map(|l| serde_json::from_str::<serde_json::Value>(l).unwrap()["kind"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(kinds, ["CreateSession", "CreateEntity", "SetTransform", "Rename"]);
    // The server re-verifies the log; an entry's inclusion proof is checked here.
    let verify = run(&["audit", "verify", "--key", &owner, "--session", &session]);
    assert!(verify.contains("entries checked  4") && verify.contains("hash chain       ok"), "{verify}");
    let prove = run(&["audit", "prove", "--key", &owner, "--session", &session, "3"]);
    assert!(prove.contains("entry 3: SetTransform") && prove.contains(": verified (2 hashes)"), "{prove}");
    // Clear refusals: an entry that does not exist, a read without a key, a stranger's key,
    // a command the JSON does not describe.
    let (ok, _, err) = theta_env(&["audit", "prove", "--key", &owner, "--session", &session, "9"], &grpc);
    assert!(!ok && (err.contains("OutOfRange") || err.contains("no entry 9")), "{err}");
    let (ok, _, err) = theta_env(&["log", "--session", &session], &grpc);
    assert!(!ok && err.contains("Unauthenticated") && err.contains("pass --key FILE"), "{err}");
    let (ok, _, err) = theta_env(&["log", "--key", &path("stranger.key"), "--session", &session], &grpc);
    assert!(!ok && err.contains("NotFound"), "{err}");
    let (ok, _, err) =
        theta_env(&["append", "--key", &owner, "--session", &session, "--json", r#"{"kind":"Teleport"}"#], &grpc);
    assert!(!ok && err.contains("unknown kind \"Teleport\""), "{err}");
    // The server's statistics, with the admin key.
    let stats = run(&["stats", "--key", &owner]);
    assert!(stats.contains(&session) && stats.contains("counters:"), "{stats}");
}
