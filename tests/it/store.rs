//! `theta store backup | restore | migrate` on the data directory of a stopped server.

use crate::cli::{Kill, serve, theta_env};

/// The state hash of a session's world folded from `store`'s log.
fn state_hash(store: &theta_store::Store, s: &theta_schemas::SessionId) -> [u8; 32] {
    let mut p = theta_projector::Projection::new(*s);
    for e in store.read_range(s, 1, u64::MAX).unwrap() {
        p.apply_entry(&e.unwrap()).unwrap();
    }
    p.state_hash()
}

#[test]
fn backup_and_restore_a_stopped_servers_data_give_the_same_sessions() {
    let dir = tempfile::tempdir().unwrap();
    let path = |name: &str| dir.path().join(name).to_str().unwrap().to_string();
    let (ok, _, err) = theta_env(&["keygen", "--out", &path("owner.key")], "127.0.0.1:1");
    assert!(ok, "{err}");
    let session = {
        let (child, grpc, _, _, _) = serve(&dir.path().join("a"), std::path::Path::new(&path("owner.key")));
        let _server = Kill(child);
        let run = |args: &[&str]| {
            let (ok, out, err) = theta_env(args, &grpc);
            assert!(ok, "theta {args:?} failed:\n{out}\n{err}");
            out
        };
        let session = run(&["session", "create", "--key", &path("owner.key"), "--name", "kept"]).trim().to_string();
        for json in [
            r#"{"kind":"CreateEntity","entity":1,"shape":"cube","name":"box"}"#,
            r#"{"kind":"SetTransform","entity":1,"translation":[0,1.5,-2]}"#,
            r#"{"kind":"CreateEntity","entity":2,"shape":"sphere","name":"ball","parent":1}"#,
            r#"{"kind":"SetMaterial","entity":2,"base_color":[0.2,0.8,0.3,1]}"#,
            r#"{"kind":"Rename","entity":1,"name":"crate"}"#,
        ] {
            run(&["append", "--key", &path("owner.key"), "--session", &session, "--json", json]);
        }
        session
        // The server is killed here (SIGKILL): the tools work on what it left on disk.
    };
    let store_cmd = |args: &[&str]| theta_env(&[&["store"], args].concat(), "127.0.0.1:1");
    let (ok, out, err) = store_cmd(&["backup", "--data", &path("a"), "--out", &path("a.backup")]);
    assert!(ok, "backup failed:\n{out}\n{err}");
    assert!(out.contains(&format!("session {session}  head 6")), "{out}");
    // Never over an existing file, never into a non-empty directory.
    let (ok, _, err) = store_cmd(&["backup", "--data", &path("a"), "--out", &path("a.backup")]);
    assert!(!ok && err.contains("exists"), "{err}");
    let (ok, out, err) = store_cmd(&["restore", "--from", &path("a.backup"), "--data", &path("b")]);
    assert!(ok, "restore failed:\n{out}\n{err}");
    let (ok, _, err) = store_cmd(&["restore", "--from", &path("a.backup"), "--data", &path("b")]);
    assert!(!ok && err.contains("not empty"), "{err}");
    // A damaged backup is refused.
    let mut bytes = std::fs::read(path("a.backup")).unwrap();
    let at = bytes.len() - 10;
    bytes[at] ^= 1;
    std::fs::write(path("bad.backup"), bytes).unwrap();
    let (ok, _, err) = store_cmd(&["restore", "--from", &path("bad.backup"), "--data", &path("c")]);
    assert!(!ok && err.contains("restore failed"), "{err}");
    // The same head, root and state hash.
    let s = theta_schemas::SessionId::from_hex(&session).unwrap();
    let a = theta_store::Store::open(dir.path().join("a"), Default::default()).unwrap();
    let b = theta_store::Store::open(dir.path().join("b"), Default::default()).unwrap();
    assert_eq!(a.head(&s).unwrap(), b.head(&s).unwrap());
    assert_eq!(state_hash(&a, &s), state_hash(&b, &s));
    drop((a, b));
    // Migrating a current store says there is nothing to do.
    let (ok, _, err) = store_cmd(&["migrate", "--data", &path("b")]);
    let current = format!("already in format {}", theta_store::FORMAT_VERSION);
    assert!(!ok && err.contains(&current), "{err}");
}

/// `theta view --eyes` refuses a file that is not a headset capture, saying which.
#[test]
fn view_refuses_a_malformed_eyes_file() {
    let dir = tempfile::tempdir().unwrap();
    let bad = [
        ("not-json", "{{{"),
        (
            "three-eyes",
            r#"{"width":4,"height":4,"eyes":[{"position":[0,0,0],"orientation":[0,0,0,1],"fov":[-1,1,1,-1]},{"position":[0,0,0],"orientation":[0,0,0,1],"fov":[-1,1,1,-1]},{"position":[0,0,0],"orientation":[0,0,0,1],"fov":[-1,1,1,-1]}]}"#,
        ),
        (
            "huge",
            r#"{"width":100000,"height":4,"eyes":[{"position":[0,0,0],"orientation":[0,0,0,1],"fov":[-1,1,1,-1]}]}"#,
        ),
    ];
    for (name, text) in bad {
        let path = dir.path().join(format!("{name}.json"));
        std::fs::write(&path, text).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_theta"))
            .args(["view", "--session", &"ab".repeat(16), "--headless", "--eyes", path.to_str().unwrap()])
            .args(["--out", dir.path().join("frames").to_str().unwrap()])
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name}: accepted");
        assert!(err.contains(&format!("{name}.json")), "{name}: the error names the file: {err}");
    }
}
