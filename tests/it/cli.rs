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
fn demo_runs_and_verifies() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("data");
    let (ok, out, err) = theta(&["demo", "--moves", "300", "--data", data.to_str().unwrap()]);
    assert!(ok, "demo failed:\n{out}\n{err}");
    assert!(out.contains("reopened and verified 617 entries"), "{out}");
    assert!(out.contains("signed tree head: all verify"), "{out}");
    for counter in ["permission_denials     1", "replay_rejections      1", "conflict_rejections    1"] {
        assert!(out.contains(counter), "missing {counter:?} in\n{out}");
    }
    // The data directory is kept when given, and a second run adds a second session to it.
    assert!(data.join("service.key").exists());
    let (ok, out, _) = theta(&["demo", "--moves", "10", "--data", data.to_str().unwrap()]);
    assert!(ok, "{out}");
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
