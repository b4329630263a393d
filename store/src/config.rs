//! Store configuration: plain fields, each with its default and unit.

/// When an append is acknowledged relative to its durability.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Durability {
    /// Default. Every batch is flushed by sled and then fdatasync'ed before any of its
    /// appends is acknowledged: an acknowledged entry survives a process kill and power loss.
    Sync,
    /// Acknowledge once applied; flush and fdatasync every `n` milliseconds. A crash loses at
    /// most the last interval of acknowledged entries.
    IntervalMs(u64),
    /// Never flush explicitly (benchmarks of the logic only). A crash may lose anything not
    /// yet written back by sled.
    None,
}

/// How much of the log is re-verified when a store opens.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum VerifyOnOpen {
    /// Default. Every entry: decoding, seq continuity, chain hashes, Merkle leaves and the
    /// author and entity indexes.
    Full,
    /// Only entries after each session's last verified point (recorded every
    /// `verified_checkpoint_every_entries` entries) plus the tree frontier.
    Tail,
}

/// Who may create sessions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Admission {
    /// Any valid key (the default of an embedded store, and `theta serve --admission anyone`).
    Anyone,
    /// Only these keys (`theta serve` defaults to its service admin keys).
    Keys(std::collections::BTreeSet<theta_schemas::AuthorKey>),
}

impl Admission {
    /// Whether `key` may create a session.
    pub fn admits(&self, key: &theta_schemas::AuthorKey) -> bool {
        match self {
            Admission::Anyone => true,
            Admission::Keys(keys) => keys.contains(key),
        }
    }
}

/// Configuration of a [`Store`](crate::Store).
#[derive(Debug, Clone)]
pub struct StoreConfig {
    /// Largest accepted envelope, bytes. Default 65,536 (64 KiB).
    pub max_envelope_bytes: usize,
    /// How far (in Lamport ticks) a command may be ahead of the session clock. Default 100,000.
    pub max_lamport_skew: u64,
    /// Token-bucket refill rate per author and session, commands per second. Default 1,000.
    pub rate_per_sec: f64,
    /// Token-bucket capacity per author and session, commands. Default 2,000.
    pub rate_burst: f64,
    /// Durability of acknowledged appends. Default [`Durability::Sync`].
    pub durability: Durability,
    /// Most appends group-committed in one batch. Default 4,096.
    pub max_batch_entries: usize,
    /// Capacity of the submission queue, appends. A full queue blocks submitters. Default 16,384.
    pub queue_capacity: usize,
    /// Verification workers, each decoding and verifying whole batches. Default: available cores.
    pub verify_threads: usize,
    /// Use ed25519 batch verification (falling back to one-by-one on a failed batch). Default true.
    pub batch_verify: bool,
    /// Decoded public keys kept in memory. Default 65,536.
    pub key_cache_entries: usize,
    /// Rejection records kept per session (and for the global trail); older ones are dropped.
    /// Default 10,000.
    pub rejection_trail_entries: u64,
    /// Deepest allowed parent chain. Default 256.
    pub max_hierarchy_depth: usize,
    /// sled page cache, bytes. Default 256 MiB.
    pub cache_capacity_bytes: u64,
    /// Decoded log blocks kept for point reads (single entries, index hits, proofs), bytes.
    /// Default 64 MiB; 0 turns the cache off.
    pub block_cache_bytes: usize,
    /// Re-verification on open. Default [`VerifyOnOpen::Full`].
    pub verify_on_open: VerifyOnOpen,
    /// Spacing of the chain's verified points, entries. Default 10,000.
    pub verified_checkpoint_every_entries: u64,
    /// Largest log block (consecutive entries stored under one key), bytes before compression.
    /// A single entry larger than this gets a block of its own. Default 32,768.
    pub max_block_bytes: usize,
    /// Spacing of the state checkpoints (Lamport values, scope versions, entities, tombstones,
    /// the replay window), entries: opening a session folds at most this many entries after
    /// its newest one. A clean close writes one at every head. Default 16,384.
    pub state_checkpoint_every_entries: u64,
    /// Who may create sessions. Default [`Admission::Anyone`]; `theta serve` defaults to its
    /// service admin keys.
    pub admission: Admission,
    /// Sessions one key may create per minute, also the burst (token bucket). Refusals are
    /// `RateLimited`. Default 10.
    pub session_creations_per_min: u32,
}

impl Default for StoreConfig {
    fn default() -> Self {
        StoreConfig {
            max_envelope_bytes: theta_schemas::MAX_ENVELOPE_BYTES,
            max_lamport_skew: 100_000,
            rate_per_sec: 1_000.0,
            rate_burst: 2_000.0,
            durability: Durability::Sync,
            max_batch_entries: 4_096,
            queue_capacity: 16_384,
            verify_threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
            batch_verify: true,
            key_cache_entries: 65_536,
            rejection_trail_entries: 10_000,
            max_hierarchy_depth: 256,
            cache_capacity_bytes: 256 * 1024 * 1024,
            block_cache_bytes: 64 * 1024 * 1024,
            verify_on_open: VerifyOnOpen::Full,
            verified_checkpoint_every_entries: 10_000,
            max_block_bytes: 32 * 1024,
            state_checkpoint_every_entries: 16_384,
            admission: Admission::Anyone,
            session_creations_per_min: 10,
        }
    }
}
