//! docs/ARCHITECTURE.md's crate graph is the one the `Cargo.toml` files declare: every
//! workspace member is in its table, under its folder, with exactly the dependencies on our
//! own crates it lists.

use std::collections::BTreeSet;
use std::path::Path;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

fn manifest(folder: &str) -> toml::Table {
    let path = root().join(folder).join("Cargo.toml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    text.parse().unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The rows of the table between `<!-- crate-graph -->` markers: (crate, folder, dependencies).
fn documented() -> Vec<(String, String, BTreeSet<String>)> {
    let doc = std::fs::read_to_string(root().join("docs/ARCHITECTURE.md")).unwrap();
    let start = doc.find("<!-- crate-graph -->").expect("the crate-graph table's start marker");
    let end = doc.find("<!-- /crate-graph -->").expect("the crate-graph table's end marker");
    let unquote = |s: &str| s.trim().trim_matches('`').to_string();
    doc[start..end]
        .lines()
        .filter(|l| l.starts_with("| `"))
        .map(|l| {
            let cells: Vec<&str> = l.trim_matches('|').split('|').collect();
            assert_eq!(cells.len(), 3, "a row of three cells: {l}");
            let deps = cells[2].split(',').map(unquote).filter(|d| !d.is_empty()).collect();
            (unquote(cells[0]), unquote(cells[1]).trim_end_matches('/').to_string(), deps)
        })
        .collect()
}

#[test]
fn the_documented_crate_graph_is_the_declared_one() {
    let rows = documented();
    let workspace = manifest(".");
    let members: BTreeSet<String> = workspace["workspace"]["members"]
        .as_array()
        .expect("workspace members")
        .iter()
        .map(|m| m.as_str().unwrap().to_string())
        .collect();
    let folders: BTreeSet<String> = rows.iter().map(|r| r.1.clone()).collect();
    assert_eq!(folders, members, "docs/ARCHITECTURE.md's crate table against the workspace members");
    for (name, folder, deps) in rows {
        let m = manifest(&folder);
        assert_eq!(m["package"]["name"].as_str(), Some(name.as_str()), "the crate in {folder}/");
        let declared: BTreeSet<String> = m
            .get("dependencies")
            .and_then(|d| d.as_table())
            .map(|d| d.keys().filter(|k| k.starts_with("theta-")).cloned().collect())
            .unwrap_or_default();
        assert_eq!(
            declared, deps,
            "{name}'s dependencies on our crates: {folder}/Cargo.toml against docs/ARCHITECTURE.md"
        );
    }
}
