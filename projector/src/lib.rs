//! The projector: a pure fold of a session's log into a deterministic ECS world.
//!
//! It owns the [`Projection`] (a flecs world keyed by Theta entity ids), the incremental
//! [`state hash`](hash), [deltas](delta) between seqs, chunked [snapshots](snapshot),
//! [checkpoints](checkpoint) and the [spatial index](spatial) for interest management.
//!
//! It does no I/O and never reads a clock: entries come in (from the store, the wire or a
//! replay), world state and bytes go out. It does not depend on the store, so viewers can use
//! it without sled; checkpoint bytes it makes are kept by the store.

pub mod checkpoint;
pub mod delta;
mod dump;
mod fast;
pub mod hash;
pub mod interest;
pub mod projection;
mod slots;
pub mod snapshot;
pub mod spatial;
pub mod values;

pub use checkpoint::CheckpointError;
pub use delta::{ApplyError, wire_descriptors};
pub use hash::Hash;
pub use projection::{FoldError, Projection, Stamp};
pub use snapshot::{AssembleError, Assembler, DEFAULT_CHUNK_BYTES};
pub use values::Value;
