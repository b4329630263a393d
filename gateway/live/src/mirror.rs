//! A viewer's side of replication without I/O: frame payloads in (dictionaries, compressed
//! frames, snapshot chunks, deltas), a mirror of the session's projection out, checked against
//! the server's state hash with every delta that carries one (every delta, except on a compact
//! stream, where one at least every 50 ms of changes does).

use theta_projector::{Assembler, Projection};
use theta_schemas::Message;
use theta_schemas::wire::Capabilities;

use crate::compress::{Decompressor, Encoding};

/// What a frame did to the mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    /// A snapshot completed: the mirror was replaced, at `seq`.
    Snapshot {
        /// The snapshot's seq.
        seq: u64,
    },
    /// A delta was applied: the mirror is at `seq`.
    Delta {
        /// The delta's last seq.
        seq: u64,
        /// The delta carried the state hash, and the mirror's matched it.
        checked: bool,
    },
}

/// Why a frame could not be taken.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MirrorError {
    /// The frame breaks the protocol (does not decode, wrong kind, delta before any snapshot).
    #[error("replication protocol: {0}")]
    Protocol(String),
    /// The mirror no longer matches the server (a delta that does not chain or whose state hash
    /// differs, a broken snapshot): drop it and ask for a fresh snapshot.
    #[error("the mirror is out of sync: {0}")]
    OutOfSync(String),
}

/// A viewer's mirror of one session.
#[derive(Default)]
pub struct Mirror {
    decompressor: Decompressor,
    assembler: Assembler,
    projection: Option<Projection>,
    /// On a compact stream (transforms quantized): snapshots are rounded as the stream's
    /// transforms are ([`Projection::round_trip_transforms`]).
    compact: bool,
    /// The first seq not yet durable, from the last delta (0: all are).
    ordered_from: u64,
    /// Snapshots completed.
    pub snapshots: u64,
    /// Deltas applied.
    pub deltas: u64,
    /// Deltas whose state hash was checked.
    pub checked: u64,
}

impl std::fmt::Debug for Mirror {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mirror")
            .field("seq", &self.projection.as_ref().map(Projection::seq))
            .field("snapshots", &self.snapshots)
            .field("deltas", &self.deltas)
            .finish_non_exhaustive()
    }
}

impl Mirror {
    /// An empty mirror (no snapshot yet).
    pub fn new() -> Mirror {
        Mirror::default()
    }

    /// The mirrored projection, once a snapshot has arrived.
    pub fn projection(&self) -> Option<&Projection> {
        self.projection.as_ref()
    }

    /// The mirror's seq (0 before any snapshot): what a reconnect resumes from.
    pub fn seq(&self) -> u64 {
        self.projection.as_ref().map_or(0, Projection::seq)
    }

    /// The highest seq the server said is durable: the mirror's seq, except under ordered
    /// visibility while the newest entries it shows are not yet durable (a crash before they
    /// are would take them back: the viewer then resyncs to the durable head).
    pub fn durable_seq(&self) -> u64 {
        match self.ordered_from {
            0 => self.seq(),
            n => (n - 1).min(self.seq()),
        }
    }

    /// (compressed bytes received, their size decompressed).
    pub fn compression(&self) -> (u64, u64) {
        (self.decompressor.compressed_bytes, self.decompressor.raw_bytes)
    }

    /// A new connection starts, with the capabilities it agreed on: its frames are a new
    /// compression stream and a new snapshot sequence. The projection is kept (the server may
    /// resume from its seq).
    pub fn new_connection(&mut self, agreed: &Capabilities) {
        self.decompressor = Decompressor::for_encoding(Encoding::from_agreed(&agreed.compression));
        self.compact = agreed.compact_deltas;
        self.assembler = Assembler::new();
    }

    /// Drops the projection (before asking for a fresh snapshot).
    pub fn clear(&mut self) {
        self.projection = None;
        self.assembler = Assembler::new();
    }

    /// Takes one replication frame payload.
    pub fn handle_frame(&mut self, payload: Vec<u8>) -> Result<Option<Synced>, MirrorError> {
        let Some(bytes) = self.decompressor.open(payload).map_err(|e| MirrorError::Protocol(e.to_string()))? else {
            return Ok(None); // a dictionary
        };
        match Message::decode(&bytes).map_err(|e| MirrorError::Protocol(e.to_string()))? {
            Message::SnapshotChunk(c) => {
                if c.chunk_index == 0 {
                    self.assembler = Assembler::new();
                }
                match self.assembler.add(c).map_err(|e| MirrorError::OutOfSync(e.to_string()))? {
                    Some(mut p) => {
                        if self.compact {
                            p.round_trip_transforms();
                        }
                        let seq = p.seq();
                        self.ordered_from = 0;
                        self.snapshots += 1;
                        self.projection = Some(p);
                        self.assembler = Assembler::new();
                        Ok(Some(Synced::Snapshot { seq }))
                    }
                    None => Ok(None),
                }
            }
            Message::Delta(d) => {
                let mirror = self
                    .projection
                    .as_mut()
                    .ok_or_else(|| MirrorError::Protocol("delta before any snapshot".into()))?;
                mirror.apply_delta(&d).map_err(|e| MirrorError::OutOfSync(e.to_string()))?;
                self.deltas += 1;
                let checked = d.state_hash.is_some();
                self.checked += u64::from(checked);
                self.ordered_from = d.ordered_from;
                Ok(Some(Synced::Delta { seq: d.to_seq, checked }))
            }
            other => Err(MirrorError::Protocol(format!("unexpected {other:?} on the replication stream"))),
        }
    }
}
