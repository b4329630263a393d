//! The manifest (protocol version, schema hash, component ids) is pinned for review.

use std::collections::BTreeSet;

use theta_schemas::ids::ComponentId;
use theta_schemas::manifest;

#[test]
fn manifest_is_pinned() {
    insta::assert_snapshot!("manifest", manifest::render());
}

#[test]
fn component_ids_are_unique_and_nonzero() {
    let reg = theta_schemas::registry();
    let ids: BTreeSet<ComponentId> = reg.iter().map(|d| d.id).collect();
    assert_eq!(ids.len(), reg.len());
    assert!(!ids.contains(&ComponentId::NONE));
}

#[test]
fn component_id_is_siphash24_of_the_name() {
    // Reference value computed independently (SipHash-2-4, key "theta.component1").
    assert_eq!(ComponentId::of("theta.Transform"), ComponentId(TRANSFORM_ID));
}

const TRANSFORM_ID: u64 = 0x72d8_3653_4314_151e;

#[test]
fn schema_hash_ignores_comments_and_spacing_only() {
    let a = "table A { x: int; } // note\n\n";
    let b = "/// doc\ntable   A { x:   int; }   // other note\n";
    assert_eq!(manifest::canonical_fbs(a), manifest::canonical_fbs(b));
    assert_ne!(manifest::canonical_fbs(a), manifest::canonical_fbs("table A { x: long; }"));
}

#[test]
fn catalog_lists_every_fbs_file() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("fbs");
    let mut on_disk: Vec<String> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .filter(|n| n.ends_with(".fbs"))
        .collect();
    on_disk.sort();
    let listed: Vec<String> = manifest::CATALOG.iter().map(|(n, _)| n.to_string()).collect();
    assert_eq!(listed, on_disk, "manifest::CATALOG must list every schemas/fbs/*.fbs file, sorted");
}
