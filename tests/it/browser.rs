//! The browser viewer in a real browser: Debian's chromium, driven by playwright-core
//! (`viewer/web/test/browser.mjs`), opens the page `theta serve` serves, connects over WebRTC,
//! follows live edits of two editors, and must report the server's state hash and show the
//! scene the native renderer draws from the same state.

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};

use theta_projector::{Assembler, Projection};
use theta_proto::v1 as pb;
use theta_proto::v1::replay_service_client::ReplayServiceClient;
use theta_schemas::Message;
use theta_viewer::{Image, Orbit, Renderer, extract};

const WIDTH: u32 = 640;
const HEIGHT: u32 = 360;

fn web_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("viewer/web")
}

/// The page's driver; panics with what to install when the browser or npm tools are missing
/// (`scripts/test` installs both).
struct Driver {
    child: std::process::Child,
    stdin: std::process::ChildStdin,
    stdout: std::io::Lines<BufReader<std::process::ChildStdout>>,
}

impl Driver {
    fn open(url: &str) -> Driver {
        Driver::open_with(url, false)
    }

    /// Opens the page; with `xr`, under an emulated headset (IWER).
    fn open_with(url: &str, xr: bool) -> Driver {
        let chromium = std::env::var("THETA_CHROMIUM").unwrap_or_else(|_| "/usr/bin/chromium".into());
        assert!(
            Path::new(&chromium).exists() && web_dir().join("node_modules/playwright-core").exists(),
            "the browser test needs {chromium} and viewer/web/node_modules: run scripts/test, which installs \
             chromium (apt) and the pinned npm toolchain (npm ci in viewer/web)"
        );
        let mut child = Command::new("node")
            .arg("test/browser.mjs")
            .arg(url)
            .args(xr.then_some("xr"))
            .current_dir(web_dir())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .expect("run node");
        let stdin = child.stdin.take().unwrap();
        let stdout = BufReader::new(child.stdout.take().unwrap()).lines();
        Driver { child, stdin, stdout }
    }

    fn ask(&mut self, command: &str) -> serde_json::Value {
        writeln!(self.stdin, "{command}").unwrap();
        let line = self.stdout.next().expect("driver answer").unwrap();
        let v: serde_json::Value = serde_json::from_str(&line).unwrap();
        assert_eq!(v["ok"], true, "{command}: {v}");
        v
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = writeln!(self.stdin, "quit");
        for _ in 0..100 {
            if let Ok(Some(_)) = self.child.try_wait() {
                return;
            }
            std::thread::sleep(std::time::Duration::from_millis(100));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The server's projection at its head, over gRPC ReadState (checked against its state hash).
/// Read with the credentials of `key` (a key file).
fn server_state(grpc: &str, session: &str, key: &str) -> Projection {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let secret: [u8; 32] = hex::decode(std::fs::read_to_string(key).unwrap().trim()).unwrap().try_into().unwrap();
    let key = ed25519_dalek::SigningKey::from_bytes(&secret);
    rt.block_on(async {
        let mut replay = ReplayServiceClient::connect(format!("http://{grpc}")).await.unwrap();
        let session = theta_schemas::SessionId::from_hex(session).unwrap();
        let req = pb::ReadStateRequest { session: session.0.to_vec(), at_seq: 0, max_chunk_bytes: 0 };
        let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
        let credential = theta_schemas::credential::Credential::sign(
            &key,
            "/theta.v1.ReplayService/ReadState",
            Some(&session),
            now,
            rand::random(),
        );
        let mut req = tonic::Request::new(req);
        req.metadata_mut().insert("theta-auth", credential.encode().parse().unwrap());
        let mut stream = replay.read_state(req).await.unwrap().into_inner();
        let mut asm = Assembler::new();
        while let Some(chunk) = stream.message().await.unwrap() {
            let Message::SnapshotChunk(c) = Message::decode(&chunk.frame).unwrap() else { panic!("not a chunk") };
            if let Some(p) = asm.add(c).unwrap() {
                return p;
            }
        }
        panic!("ReadState ended early")
    })
}

fn render(p: &Projection) -> Image {
    let mut r = Renderer::headless().expect("a wgpu adapter (lavapipe is enough)");
    let eye = Orbit::default().eye(WIDTH as f32 / HEIGHT as f32);
    r.render(&extract(p), &[eye], WIDTH, HEIGHT, None).unwrap()
}

#[test]
fn browser_follows_live_edits_over_webrtc_and_draws_the_scene() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    for k in ["owner", "editor", "viewer"] {
        let (ok, _, err) = crate::cli::theta_env(&["keygen", "--out", &path(&format!("{k}.key"))], "127.0.0.1:1");
        assert!(ok, "{err}");
    }
    let (child, grpc, _quic, _fp, signal) =
        crate::cli::serve(&dir.path().join("data"), std::path::Path::new(&path("owner.key")));
    let _child = crate::cli::Kill(child);
    let run = |key: &str, args: &[&str]| {
        let mut all = args.to_vec();
        if !key.is_empty() {
            all.extend(["--key", key]);
        }
        let (ok, out, err) = crate::cli::theta_env(&all, &grpc);
        assert!(ok, "theta {all:?} failed:\n{out}\n{err}");
        out
    };
    let owner = path("owner.key");
    let editor = path("editor.key");
    let session = run(&owner, &["session", "create", "--name", "browser"]);
    let session =
        session.split_whitespace().find(|w| w.len() == 32 && w.chars().all(|c| c.is_ascii_hexdigit())).unwrap();
    let append = |key: &str, json: &str| {
        run(key, &["append", "--session", session, "--json", json]);
    };
    let pubkey = |k: &str| run("", &["pubkey", &path(k)]).trim().to_string();
    let (viewer_pub, editor_pub) = (pubkey("viewer.key"), pubkey("editor.key"));
    append(&owner, &format!(r#"{{"kind":"GrantRole","key":"{viewer_pub}","role":"viewer"}}"#));
    append(&owner, &format!(r#"{{"kind":"GrantRole","key":"{editor_pub}","role":"editor"}}"#));
    append(&owner, r#"{"kind":"CreateEntity","entity":1,"shape":"cube","name":"box"}"#);
    append(&owner, r#"{"kind":"SetTransform","entity":1,"translation":[0,1,0],"scale":[2,2,2]}"#);

    // The page, on the HTTP port the server logged (the signalling URL's origin). Without a key
    // it makes one for the visit, is refused (no role), and says how to grant one; once granted,
    // it connects by itself.
    let origin = signal.trim_end_matches("/webrtc/offer");
    let mut page = Driver::open(&format!("{origin}/?session={session}"));
    let refused = page.ask("state refused");
    assert_eq!(refused["status"]["code"], 5, "{refused}");
    let visitor = refused["status"]["publicKey"].as_str().unwrap().to_string();
    append(&owner, &format!(r#"{{"kind":"GrantRole","key":"{visitor}","role":"viewer"}}"#));
    let first = page.ask("wait 6");
    assert_eq!(first["status"]["transport"], "webrtc");
    assert_eq!(first["status"]["role"], "viewer");
    assert_eq!(first["status"]["snapshots"], 1);

    // Both editors change the scene while the page watches: spawns, moves, materials, a
    // removal and a despawn all arrive as deltas.
    append(&editor, r#"{"kind":"CreateEntity","entity":2,"shape":"sphere","name":"ball"}"#);
    append(&editor, r#"{"kind":"SetTransform","entity":2,"translation":[3,1.5,0],"scale":[3,3,3]}"#);
    append(&owner, r#"{"kind":"SetMaterial","entity":1,"base_color":[0.85,0.2,0.15,1],"metallic":0,"roughness":0.5}"#);
    append(&editor, r#"{"kind":"CreateEntity","entity":3,"shape":"cylinder","name":"post"}"#);
    append(&editor, r#"{"kind":"SetTransform","entity":3,"translation":[-3,1.5,1],"scale":[1.5,3,1.5]}"#);
    append(&editor, r#"{"kind":"SetMaterial","entity":3,"base_color":[0.2,0.4,0.9,1],"metallic":0,"roughness":0.5}"#);
    append(&owner, r#"{"kind":"CreateEntity","entity":4,"shape":"cone","name":"gone"}"#);
    append(&owner, r#"{"kind":"Rename","entity":1,"name":"red box"}"#);
    append(&owner, r#"{"kind":"RemoveComponent","entity":1,"component":"theta.Name"}"#);
    append(&editor, r#"{"kind":"DeleteEntity","entity":4,"base_version":1}"#);
    let server = server_state(&grpc, session, &owner);
    assert_eq!(server.seq(), 16);
    let last = page.ask(&format!("wait {}", server.seq()));
    let status = &last["status"];
    assert_eq!(status["stateHash"], hex::encode(server.state_hash()), "{status}");
    assert_eq!(status["entities"], 3);
    assert_eq!(status["snapshots"], 1, "the edits arrived as deltas: {status}");
    assert!(status["deltas"].as_u64().unwrap() >= 1, "{status}");
    assert_eq!(status["resyncs"], 0);

    // The picture: the page's canvas next to the native renderer's image of the server's state,
    // with the same camera. Rasterisers differ at edges, so the match is loose; an image of the
    // grid alone must differ clearly more, so the check sees the objects.
    page.ask(&format!("shot {}", path("page.png")));
    page.ask(&format!("scene {}", path("scene.png")));
    let shot = Image::load_png(Path::new(&path("scene.png"))).unwrap();
    assert_eq!((shot.width, shot.height), (WIDTH, HEIGHT));
    let reference = render(&server);
    let empty = render(&Projection::new(server.session()));
    let near = shot.diff_fraction(&reference, 40);
    let far = shot.diff_fraction(&empty, 40);
    if let Ok(out) = std::env::var("THETA_BROWSER_OUT") {
        std::fs::create_dir_all(&out).unwrap();
        for (name, img) in [("scene.png", &shot), ("reference.png", &reference), ("empty.png", &empty)] {
            img.save_png(&Path::new(&out).join(name)).unwrap();
        }
        std::fs::copy(path("page.png"), Path::new(&out).join("page.png")).unwrap();
    }
    eprintln!("browser vs reference: {:.2}% of pixels differ; vs the empty grid: {:.2}%", near * 100.0, far * 100.0);
    assert!(near < 0.01, "the page's picture differs from the reference in {:.2}% of pixels", near * 100.0);
    assert!(far > 0.03, "the objects are missing: only {:.2}% differ from the empty grid", far * 100.0);

    // A key supplied in the address (the fragment never reaches the server) works the same.
    let key = std::fs::read_to_string(path("viewer.key")).unwrap();
    page.ask(&format!("goto {origin}/index.html?session={session}#key={}", key.trim()));
    let again = page.ask(&format!("wait {}", server.seq()));
    assert_eq!(again["status"]["publicKey"], viewer_pub.as_str());
    assert_eq!(again["status"]["stateHash"], hex::encode(server.state_hash()));
}

/// The page's protocol code (framing guard, state hash, deltas, handshake proof) run by node
/// against values computed here by the Rust implementation.
#[test]
fn page_protocol_code_agrees_with_the_rust_implementation() {
    use ed25519_dalek::{Signer, SigningKey};
    use theta_projector::hash::{StateHash, item_hash};
    use theta_schemas::components::{Component, Primitive};
    use theta_schemas::ids::ComponentMeta;
    use theta_schemas::{ComponentId, SessionId, Shape};

    assert!(
        web_dir().join("node_modules/esbuild").exists(),
        "needs viewer/web/node_modules: run scripts/test (npm ci with the pinned lock file)"
    );
    let empty = Projection::new(SessionId([7; 16])).state_hash();
    let cube = Primitive { shape: Shape::Cube }.encode();
    let mut one = StateHash::default();
    one.add(&item_hash(1, ComponentId(0), &[]));
    one.add(&item_hash(1, Primitive::id(), &cube));
    let (hello, challenge) = (b"hello bytes as sent".to_vec(), b"challenge bytes as received".to_vec());
    let key = SigningKey::from_bytes(&std::array::from_fn(|i| i as u8));
    let signature = key.sign(&theta_client::handshake::proof_message(&hello, &challenge));
    let expected = serde_json::json!({
        "emptyHash": hex::encode(empty),
        "oneCubeHash": hex::encode(one.digest()),
        "cubeBytes": hex::encode(&cube),
        "proofHello": hex::encode(&hello),
        "proofChallenge": hex::encode(&challenge),
        "proofSignature": hex::encode(signature.to_bytes()),
    });
    let out = Command::new("node")
        .arg("test/unit.mjs")
        .arg(expected.to_string())
        .current_dir(web_dir())
        .output()
        .expect("run node");
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "page unit checks failed:\n{stdout}\n{stderr}");
    assert!(stdout.contains("ok: 13 checks"), "{stdout}");
}

/// The eye of one WebXR view as the page reported it: pose, and the field of view read off the
/// projection matrix (column-major; tan of each edge angle from its terms).
fn eye_of(view: &serde_json::Value) -> theta_viewer::Eye {
    let f = |v: &serde_json::Value| v.as_f64().unwrap() as f32;
    let p: Vec<f32> = view["position"].as_array().unwrap().iter().map(f).collect();
    let o: Vec<f32> = view["orientation"].as_array().unwrap().iter().map(f).collect();
    let m: Vec<f32> = view["projection"].as_array().unwrap().iter().map(f).collect();
    let (x_scale, x_off, y_scale, y_off) = (m[0], m[8], m[5], m[9]);
    theta_viewer::Eye {
        position: glam::Vec3::new(p[0], p[1], p[2]),
        orientation: glam::Quat::from_xyzw(o[0], o[1], o[2], o[3]).normalize(),
        fov: theta_viewer::Fov {
            left: ((x_off - 1.0) / x_scale).atan(),
            right: ((x_off + 1.0) / x_scale).atan(),
            down: ((y_off - 1.0) / y_scale).atan(),
            up: ((y_off + 1.0) / y_scale).atan(),
        },
    }
}

#[test]
fn browser_enters_vr_under_an_emulated_headset_and_draws_each_eye() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    for k in ["owner", "viewer"] {
        let (ok, _, err) = crate::cli::theta_env(&["keygen", "--out", &path(&format!("{k}.key"))], "127.0.0.1:1");
        assert!(ok, "{err}");
    }
    let owner = path("owner.key");
    let (child, grpc, _quic, _fp, signal) = crate::cli::serve(&dir.path().join("data"), Path::new(&owner));
    let _child = crate::cli::Kill(child);
    let run = |args: &[&str]| {
        let mut all = args.to_vec();
        all.extend(["--key", owner.as_str()]);
        let (ok, out, err) = crate::cli::theta_env(&all, &grpc);
        assert!(ok, "theta {all:?} failed:\n{out}\n{err}");
        out
    };
    let session = run(&["session", "create", "--name", "webxr"]).trim().to_string();
    let (_, viewer_pub, _) = crate::cli::theta_env(&["pubkey", &path("viewer.key")], &grpc);
    let viewer_pub = viewer_pub.trim().to_string();
    for json in [
        format!(r#"{{"kind":"GrantRole","key":"{viewer_pub}","role":"viewer"}}"#),
        r#"{"kind":"CreateEntity","entity":1,"shape":"cube","name":"box"}"#.to_string(),
        r#"{"kind":"SetTransform","entity":1,"translation":[0,1.5,-4],"scale":[1.5,1.5,1.5]}"#.to_string(),
        r#"{"kind":"SetMaterial","entity":1,"base_color":[0.9,0.2,0.2,1]}"#.to_string(),
        r#"{"kind":"CreateEntity","entity":2,"shape":"sphere","name":"ball"}"#.to_string(),
        r#"{"kind":"SetTransform","entity":2,"translation":[1.5,1,-3]}"#.to_string(),
    ] {
        run(&["append", "--session", &session, "--json", &json]);
    }
    let secret = std::fs::read_to_string(path("viewer.key")).unwrap().trim().to_string();
    let origin = signal.trim_end_matches("/webrtc/offer");
    let mut page = Driver::open_with(&format!("{origin}/?session={session}#key={secret}"), true);
    page.ask("wait 6");
    let entered = page.ask("vr");
    assert_eq!(entered["status"]["vr"], "in VR", "{entered}");
    let status = page.ask("xrframes 60")["status"].clone();
    assert!(status["xrFrames"].as_u64().unwrap() >= 60, "{status}");
    let views = status["xrViews"].as_array().unwrap().clone();
    assert_eq!(views.len(), 2, "stereo: {status}");
    // Each eye has its own projection and pose.
    assert_ne!(views[0]["position"], views[1]["position"]);
    // The status panel says what is shown.
    let panel: Vec<&str> = status["xrPanel"].as_array().unwrap().iter().map(|l| l.as_str().unwrap()).collect();
    assert!(panel[0].starts_with("LIVE · session ") && panel[0].ends_with("live as viewer"), "{panel:?}");
    assert!(panel[1].starts_with("seq 7 · 2 entities · state matches server"), "{panel:?}");

    // The canvas halves (the panel hidden with H) against the native renderer's images of the
    // same eyes, whole.
    page.ask(&format!("scene {}", path("xr.png")));
    let shot = Image::load_png(Path::new(&path("xr.png"))).unwrap();
    page.ask(&format!("canvas {}", path("xr-panel.png")));
    let with_panel = Image::load_png(Path::new(&path("xr-panel.png"))).unwrap();
    let server = server_state(&grpc, &session, &owner);
    let mut native = Renderer::headless().unwrap();
    for (i, view) in views.iter().enumerate() {
        let vp: Vec<u64> = view["viewport"].as_array().unwrap().iter().map(|v| v.as_u64().unwrap()).collect();
        assert_eq!(
            (vp[0], vp[2], vp[3]),
            (i as u64 * u64::from(shot.width) / 2, u64::from(shot.width) / 2, u64::from(shot.height)),
            "side-by-side viewports: {view}"
        );
        let half = shot.half(i == 1);
        let eye = eye_of(view);
        let want = native.render(&extract(&server), &[eye], half.width, half.height, None).unwrap();
        let diff = half.diff_fraction(&want, 40);
        let red = half.rgba.chunks(4).filter(|p| p[0] > 150 && p[1] < 110 && p[2] < 110).count();
        assert!(red > 500, "eye {i}: the red cube is not in view ({red} red pixels)");
        if diff >= 0.02 {
            let kept = std::env::temp_dir().join(format!("theta-webxr-eye{i}.png"));
            half.save_png(&kept).unwrap();
            panic!(
                "eye {i}: {:.2}% of pixels differ from the native renderer ({eye:?} from {view}; image: {})",
                diff * 100.0,
                kept.display()
            );
        }
        // With the panel: below eye level, the status panel with the live timeline's orange
        // playhead, which the scene alone does not have.
        let playhead = |img: &Image| {
            let below = &img.rgba[(img.width * img.height * 6 / 10 * 4) as usize..];
            below.chunks(4).filter(|p| p[0] > 220 && (150..230).contains(&p[1]) && p[2] < 140).count()
        };
        let (on, off) = (playhead(&with_panel.half(i == 1)), playhead(&half));
        assert!(on > 20 && off == 0, "eye {i}: playhead pixels {on} with the panel, {off} without");
    }
}
