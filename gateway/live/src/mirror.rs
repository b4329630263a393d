//! A viewer's side of replication without I/O: frame payloads in (dictionaries, compressed
//! frames, snapshot chunks, deltas), a mirror of the session's projection out, checked against
//! the server's state hash with every delta.

use theta_projector::{Assembler, Projection};
use theta_schemas::Message;

use crate::compress::Decompressor;

/// What a frame did to the mirror.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Synced {
    /// A snapshot completed: the mirror was replaced, at `seq`.
    Snapshot {
        /// The snapshot's seq.
        seq: u64,
    },
    /// A delta was applied: the mirror is at `seq`, its state hash checked.
    Delta {
        /// The delta's last seq.
        seq: u64,
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
    /// Snapshots completed.
    pub snapshots: u64,
    /// Deltas applied.
    pub deltas: u64,
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

    /// (compressed bytes received, their size decompressed).
    pub fn compression(&self) -> (u64, u64) {
        (self.decompressor.compressed_bytes, self.decompressor.raw_bytes)
    }

    /// A new connection starts: its frames are a new compression stream and a new snapshot
    /// sequence. The projection is kept (the server may resume from its seq).
    pub fn new_connection(&mut self) {
        self.decompressor = Decompressor::new();
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
                    Some(p) => {
                        let seq = p.seq();
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
                Ok(Some(Synced::Delta { seq: d.to_seq }))
            }
            other => Err(MirrorError::Protocol(format!("unexpected {other:?} on the replication stream"))),
        }
    }
}
