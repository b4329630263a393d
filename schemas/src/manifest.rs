//! The schema manifest: protocol version, schema hash and component ids, as text.
//!
//! The manifest is pinned by an insta snapshot, so any change to an id or to the catalog
//! shows up in review.

use std::fmt::Write as _;
use std::sync::OnceLock;

use sha2::{Digest, Sha256};

use crate::PROTOCOL_VERSION;
use crate::command::CommandKind;
use crate::components::registry;
use crate::ids::COMPONENT_ID_KEY;

/// The catalog's `.fbs` files, in the order they are hashed (sorted by name).
pub const CATALOG: &[(&str, &str)] = &[
    ("command.fbs", include_str!("../fbs/command.fbs")),
    ("common.fbs", include_str!("../fbs/common.fbs")),
    ("components.fbs", include_str!("../fbs/components.fbs")),
    ("envelope.fbs", include_str!("../fbs/envelope.fbs")),
    ("log.fbs", include_str!("../fbs/log.fbs")),
    ("wire.fbs", include_str!("../fbs/wire.fbs")),
];

/// The canonical form of one `.fbs` file: comments removed, each line trimmed, runs of
/// whitespace collapsed to one space, empty lines dropped, lines joined with `\n`.
pub fn canonical_fbs(source: &str) -> String {
    let mut out = String::with_capacity(source.len());
    for line in source.lines() {
        let code = line.split("//").next().unwrap_or("");
        let words: Vec<&str> = code.split_whitespace().collect();
        if words.is_empty() {
            continue;
        }
        out.push_str(&words.join(" "));
        out.push('\n');
    }
    out
}

/// SHA-256 over the canonical catalog: for each file in [`CATALOG`] order, its name, a
/// `\n`, its canonical form, and a `\0`. Comments and layout do not change it; any change
/// to a declaration does.
pub fn schema_hash() -> [u8; 32] {
    static HASH: OnceLock<[u8; 32]> = OnceLock::new();
    *HASH.get_or_init(|| {
        let mut h = Sha256::new();
        for (name, source) in CATALOG {
            h.update(name.as_bytes());
            h.update(b"\n");
            h.update(canonical_fbs(source).as_bytes());
            h.update(b"\0");
        }
        h.finalize().into()
    })
}

/// Renders the manifest as text.
pub fn render() -> String {
    let mut s = String::new();
    let _ = writeln!(s, "theta schema manifest");
    let _ = writeln!(s, "protocol_version: {PROTOCOL_VERSION}");
    let _ = writeln!(s, "schema_hash: {}", hex::encode(schema_hash()));
    let _ = writeln!(
        s,
        "component_id: siphash-2-4, key {:?} (hex {})",
        std::str::from_utf8(&COMPONENT_ID_KEY).unwrap_or("?"),
        hex::encode(COMPONENT_ID_KEY)
    );
    let _ = writeln!(s, "components:");
    for d in registry() {
        let _ = writeln!(s, "  {:<18} v{}  {}", d.name, d.encoding_version, d.id);
    }
    let _ = writeln!(s, "commands:");
    for k in CommandKind::ALL {
        let _ = writeln!(s, "  {:>2} {}", k.tag(), k.name());
    }
    s
}
