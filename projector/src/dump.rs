//! The canonical text dump of a projection: every entity and component value, in order.
//!
//! For review (insta snapshots) and debugging; floats print with Rust's shortest round-trip
//! formatting, so equal worlds dump equally.

use std::fmt::Write as _;

use crate::projection::Projection;
use crate::values::{Value, descriptors};

fn name_of(id: theta_schemas::ComponentId) -> String {
    descriptors().into_iter().find(|d| d.id == id).map_or_else(|| id.to_string(), |d| d.name.to_string())
}

fn short(key: &theta_schemas::AuthorKey) -> String {
    hex::encode(&key.0[..4])
}

impl Projection {
    /// The canonical dump.
    pub fn dump(&self) -> String {
        let mut s = String::new();
        let _ = writeln!(s, "session {} seq {} state {}", self.session(), self.seq(), hex::encode(self.state_hash()));
        for e in self.entities() {
            let _ = writeln!(s, "entity {e}");
            for c in self.components(e) {
                let v = self.get(e, c).expect("present");
                let text = match &v {
                    Value::Transform(t) => format!("t={:?} r={:?} s={:?}", t.translation, t.rotation, t.scale),
                    Value::Name(n) => format!("{:?}", n.0),
                    Value::Parent(p) => format!("{}", p.0),
                    Value::Mesh(m) => format!("positions={:?} indices={:?}", m.positions, m.indices),
                    Value::Material(m) => {
                        format!("color={:?} metallic={:?} roughness={:?}", m.base_color, m.metallic, m.roughness)
                    }
                    Value::Selection(sel) => format!("{:?}", sel.authors.iter().map(short).collect::<Vec<_>>()),
                    Value::ToolState(t) => format!("{} {:?}", short(&t.author), t.tool),
                    Value::Primitive(p) => format!("{:?}", p.shape),
                };
                let _ = writeln!(s, "  {:<16} {text}", name_of(c));
            }
        }
        s
    }
}
