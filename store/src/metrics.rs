//! Telemetry counters of the store, named as the seeds name them.

use std::sync::atomic::{AtomicU64, Ordering::Relaxed};

use crate::error::RejectionCode;

/// Upper bounds of the latency histogram buckets, microseconds (the last bucket is +Inf).
pub const LATENCY_BUCKETS_US: [u64; 14] =
    [50, 100, 250, 500, 1_000, 2_500, 5_000, 10_000, 25_000, 50_000, 100_000, 250_000, 1_000_000, 5_000_000];

/// A fixed-bucket latency histogram.
#[derive(Debug, Default)]
pub struct Histogram {
    buckets: [AtomicU64; LATENCY_BUCKETS_US.len() + 1],
    count: AtomicU64,
    sum_us: AtomicU64,
}

impl Histogram {
    /// Records one observation.
    pub fn observe_us(&self, us: u64) {
        let i = LATENCY_BUCKETS_US.iter().position(|b| us <= *b).unwrap_or(LATENCY_BUCKETS_US.len());
        self.buckets[i].fetch_add(1, Relaxed);
        self.count.fetch_add(1, Relaxed);
        self.sum_us.fetch_add(us, Relaxed);
    }

    /// A copy of the current values.
    pub fn snapshot(&self) -> HistogramSnapshot {
        HistogramSnapshot {
            buckets: std::array::from_fn(|i| self.buckets[i].load(Relaxed)),
            count: self.count.load(Relaxed),
            sum_us: self.sum_us.load(Relaxed),
        }
    }
}

/// Histogram values: per-bucket (not cumulative) counts, total count and sum.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct HistogramSnapshot {
    /// Count per bucket of [`LATENCY_BUCKETS_US`], then +Inf.
    pub buckets: [u64; LATENCY_BUCKETS_US.len() + 1],
    /// Observations.
    pub count: u64,
    /// Sum of observations, microseconds.
    pub sum_us: u64,
}

/// Live counters (shared, lock-free).
#[derive(Debug, Default)]
pub struct Metrics {
    pub(crate) appends_accepted: AtomicU64,
    pub(crate) rejections: [AtomicU64; RejectionCode::ALL.len()],
    pub(crate) batches_committed: AtomicU64,
    pub(crate) flushes: AtomicU64,
    pub(crate) queue_depth: AtomicU64,
    pub(crate) imported_entries: AtomicU64,
    pub(crate) signatures_verified: AtomicU64,
    pub(crate) batch_verify_fallbacks: AtomicU64,
    pub(crate) storage_failures: AtomicU64,
    pub(crate) storage_recoveries: AtomicU64,
    pub(crate) ack_latency: Histogram,
    pub(crate) flush_latency: Histogram,
    pub(crate) verify_latency: Histogram,
}

impl Metrics {
    pub(crate) fn reject(&self, code: RejectionCode) {
        self.rejections[code as usize - 1].fetch_add(1, Relaxed);
    }

    /// A copy of every counter.
    pub fn snapshot(&self) -> MetricsSnapshot {
        MetricsSnapshot {
            appends_accepted: self.appends_accepted.load(Relaxed),
            rejections: RejectionCode::ALL.map(|c| (c, self.rejections[c as usize - 1].load(Relaxed))),
            batches_committed: self.batches_committed.load(Relaxed),
            flushes: self.flushes.load(Relaxed),
            queue_depth: self.queue_depth.load(Relaxed),
            imported_entries: self.imported_entries.load(Relaxed),
            signatures_verified: self.signatures_verified.load(Relaxed),
            batch_verify_fallbacks: self.batch_verify_fallbacks.load(Relaxed),
            storage_failures: self.storage_failures.load(Relaxed),
            storage_recoveries: self.storage_recoveries.load(Relaxed),
            ack_latency: self.ack_latency.snapshot(),
            flush_latency: self.flush_latency.snapshot(),
            verify_latency: self.verify_latency.snapshot(),
        }
    }
}

/// A point-in-time copy of the store's telemetry.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct MetricsSnapshot {
    /// Appends accepted into a log.
    pub appends_accepted: u64,
    /// Rejections per reason code; [`RejectionCode::counter`] names each counter
    /// (`payload_guard_drops`, `replay_rejections`, `rate_limit_drops`, ...).
    pub rejections: [(RejectionCode, u64); RejectionCode::ALL.len()],
    /// Group-commit batches written.
    pub batches_committed: u64,
    /// Durable flushes.
    pub flushes: u64,
    /// Appends submitted and not yet answered.
    pub queue_depth: u64,
    /// Entries written through the trusted import path.
    pub imported_entries: u64,
    /// Signatures verified.
    pub signatures_verified: u64,
    /// Batches whose batch verification failed and were re-verified one by one.
    pub batch_verify_fallbacks: u64,
    /// Storage failures (a write, flush or fsync failed) that stopped appends.
    pub storage_failures: u64,
    /// Times the store reopened its storage after a failure and took appends again.
    pub storage_recoveries: u64,
    /// Submit → acknowledgement latency of appends.
    pub ack_latency: HistogramSnapshot,
    /// Duration of durable flushes.
    pub flush_latency: HistogramSnapshot,
    /// Signature verification time per batch.
    pub verify_latency: HistogramSnapshot,
}

impl MetricsSnapshot {
    /// The count of one rejection code.
    pub fn rejected(&self, code: RejectionCode) -> u64 {
        self.rejections[code as usize - 1].1
    }

    /// The count of a rejection counter by its name (`replay_rejections`, ...).
    pub fn counter(&self, name: &str) -> Option<u64> {
        self.rejections.iter().find(|(c, _)| c.counter() == name).map(|(_, n)| *n)
    }
}
