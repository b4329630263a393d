//! The log store: Theta's single source of truth.
//!
//! Every accepted command of every session, in order, durably, with proof of who signed it
//! and that it was allowed under the policy in force at that moment. The store owns:
//!
//! - the append checks, in their documented order (docs/PROTOCOL.md, "Append checks"):
//!   payload guard, schema, signature, session, role, replay, Lamport, rate, conflict; each
//!   failure is a distinct [`AppendError`] with a counter, and leaves the log untouched;
//! - gapless per-session seqs, the hash chain and the RFC 6962 Merkle tree ([`merkle`]),
//!   with inclusion and consistency proofs and tree heads signed by the store's own key;
//! - durability: group commit with one flush (+ fdatasync) per batch before any
//!   acknowledgement ([`Durability`]);
//! - reads that stream from storage: by seq range, author or entity, the head, the
//!   rejection trail, and projection checkpoints (opaque bytes made by the projector).
//!
//! It does not fold entries into a world (that is `theta-projector`) nor speak any network
//! protocol (that is `theta-gateway`). sled stays behind the [`backend::Backend`] seam.
//!
//! ```no_run
//! use theta_store::{Store, StoreConfig};
//! let store = Store::open("./theta-data", StoreConfig::default())?;
//! # let envelope_bytes: Vec<u8> = vec![];
//! let receipt = store.append(&envelope_bytes)?;
//! let session = store.session(receipt.session);
//! for entry in session.read_range(1, receipt.seq)? {
//!     println!("{}", entry?.seq);
//! }
//! let proof = session.inclusion_proof(receipt.seq, receipt.tree_size)?;
//! assert!(proof.verify() && proof.root == receipt.tree_root);
//! # Ok::<(), Box<dyn std::error::Error>>(())
//! ```

pub mod archive;
pub mod backend;
mod blocks;
pub mod config;
pub mod error;
pub mod guard;
mod index;
mod keys;
pub mod merkle;
pub mod metrics;
/// The permission matrix, scope rules and default strategies (from theta-schemas).
pub use theta_schemas::policy;
mod session;
mod store;
pub mod validate;
mod verifier;

pub use config::{Admission, Durability, StoreConfig, VerifyOnOpen};
pub use error::{AppendError, ConflictReason, OpenError, ReadError, RejectionCode};
pub use metrics::MetricsSnapshot;
pub use store::{
    CommandListener, CommitListener, Committed, Entries, FORMAT_VERSION, Head, ImportError, InclusionProof, Receipt,
    Rejection, ResetListener, Session, SignedTreeHead, Stamp, Store, TREE_HEAD_DOMAIN,
};

/// The machine's cores, read once (the standard library reads the cgroup files at every call).
pub(crate) fn cores() -> usize {
    static CORES: std::sync::OnceLock<usize> = std::sync::OnceLock::new();
    *CORES.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// `f` over `items` in order, split over `threads` scoped threads (on the caller's thread when
/// 1 or fewer).
pub(crate) fn par_map<T: Sync, R: Send>(items: &[T], threads: usize, f: impl Fn(&T) -> R + Sync) -> Vec<R> {
    if threads <= 1 || items.len() <= 1 {
        return items.iter().map(f).collect();
    }
    let chunk = items.len().div_ceil(threads);
    let f = &f;
    std::thread::scope(|s| {
        let parts: Vec<_> = items.chunks(chunk).map(|c| s.spawn(move || c.iter().map(f).collect::<Vec<_>>())).collect();
        parts.into_iter().flat_map(|h| h.join().expect("worker thread")).collect()
    })
}
