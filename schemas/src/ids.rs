//! Component identity: `ComponentId` = SipHash-2-4 of a stable name under a fixed key.

use std::fmt;

use siphasher::sip::SipHasher24;

/// The fixed SipHash-2-4 key for component ids: the 16 ASCII bytes `theta.component1`.
///
/// Changing it changes every id; it is part of the protocol (docs/PROTOCOL.md).
pub const COMPONENT_ID_KEY: [u8; 16] = *b"theta.component1";

/// A stable, build-independent component identifier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Default)]
pub struct ComponentId(pub u64);

impl ComponentId {
    /// No component: the scope of session-level commands and of whole-entity commands.
    pub const NONE: ComponentId = ComponentId(0);

    /// The id of a component with this stable name: SipHash-2-4 of its UTF-8 bytes.
    pub fn of(name: &str) -> ComponentId {
        ComponentId(SipHasher24::new_with_key(&COMPONENT_ID_KEY).hash(name.as_bytes()))
    }
}

impl fmt::Display for ComponentId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:#018x}", self.0)
    }
}

/// What the registry knows of a component type: its stable name and encoding version.
///
/// Implement it with [`component!`](crate::component) in one line.
pub trait ComponentMeta {
    /// The stable name hashed into the id, e.g. `theta.Transform`. Never change it.
    const NAME: &'static str;
    /// Version of the canonical encoding; bump it when the table's layout changes.
    const ENCODING_VERSION: u32;

    /// The component's id.
    fn id() -> ComponentId {
        ComponentId::of(Self::NAME)
    }

    /// The descriptor advertised to receivers.
    fn descriptor() -> Descriptor {
        Descriptor { name: Self::NAME, id: Self::id(), encoding_version: Self::ENCODING_VERSION }
    }
}

/// A component type as advertised on the wire and pinned in the manifest.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Descriptor {
    /// Stable name.
    pub name: &'static str,
    /// SipHash-2-4 id of the name.
    pub id: ComponentId,
    /// Canonical encoding version.
    pub encoding_version: u32,
}

/// Registers a component type: `component!(Transform, "theta.Transform", 1);`.
#[macro_export]
macro_rules! component {
    ($ty:ty, $name:literal, $version:literal) => {
        impl $crate::ids::ComponentMeta for $ty {
            const NAME: &'static str = $name;
            const ENCODING_VERSION: u32 = $version;

            fn id() -> $crate::ids::ComponentId {
                // Hashed once per process, then an atomic load.
                static ID: ::std::sync::OnceLock<$crate::ids::ComponentId> = ::std::sync::OnceLock::new();
                *ID.get_or_init(|| $crate::ids::ComponentId::of($name))
            }
        }
    };
}
