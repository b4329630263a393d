//! The Theta schema catalog: everything stored or sent, and the rules around it.
//!
//! This crate owns:
//! - the FlatBuffers catalog (`schemas/fbs/*.fbs`) and its generated Rust code ([`fb`]);
//! - owned, validated Rust types for commands ([`CommandBody`], [`Command`]), the signed
//!   [`Envelope`], stored [`LogEntry`]s, world [`components`] and live wire [`Message`]s;
//! - checked decoding: every decoder of outside bytes runs the FlatBuffers verifier with
//!   limits tightened to Theta's sizes ([`Limits`]) and returns a typed [`DecodeError`];
//! - component identity ([`ComponentId`], SipHash-2-4 under a fixed key) and the registry of
//!   built-in components ([`registry`]);
//! - the signing rule ([`signing`]), the read [`credential`] and the schema [`manifest`].
//!
//! It does no I/O and knows nothing of storage, projection or transport.

pub mod command;
pub mod components;
pub mod credential;
pub mod decode;
pub mod envelope;
pub mod ids;
pub mod log;
pub mod manifest;
pub mod merkle;
pub mod policy;
pub mod signing;
pub mod wire;

/// Generated FlatBuffers code for the catalog (`scripts/gen-schemas` regenerates it).
#[allow(
    unsafe_code,
    unused_imports,
    missing_docs,
    clippy::all,
    non_camel_case_types,
    non_snake_case,
    non_upper_case_globals,
    dead_code,
    mismatched_lifetime_syntaxes,
    unsafe_op_in_unsafe_fn
)]
#[rustfmt::skip]
#[path = "generated/mod.rs"]
mod generated;

/// The generated FlatBuffers types (`theta.fb` namespace).
pub use generated::theta::fb;

pub use command::{AuthorKey, Command, CommandBody, CommandKind, ConflictStrategy, EntityId, Role, SessionId, Shape};
pub use components::registry;
pub use decode::{DecodeError, Limits};
pub use envelope::Envelope;
pub use ids::{ComponentId, ComponentMeta};
pub use log::LogEntry;
pub use wire::Message;

/// The live protocol version carried in the handshake.
pub const PROTOCOL_VERSION: u32 = 1;

/// The largest envelope (and, by default, any frame) Theta accepts: 64 KiB.
pub const MAX_ENVELOPE_BYTES: usize = 64 * 1024;
