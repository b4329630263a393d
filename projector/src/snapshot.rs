//! Snapshots: a projection cut into self-contained chunks for the wire, and their assembly.

use std::collections::{BTreeMap, BTreeSet};

use theta_schemas::wire::{ComponentValue, Message, SnapshotChunk};
use theta_schemas::{EntityId, SessionId};

use crate::hash::Hash;
use crate::projection::Projection;
use crate::values::Value;

/// Default largest encoded chunk: 16 KiB.
pub const DEFAULT_CHUNK_BYTES: usize = 16 * 1024;

/// Fixed cost of a chunk frame (identifiers, header fields, vector lengths), bytes; generous.
const CHUNK_OVERHEAD: usize = 192;
/// Cost of one entity id in a chunk.
const ENTITY_COST: usize = 8;
/// Cost of one component value beside its data (table, vtable, offsets, padding).
const VALUE_OVERHEAD: usize = 48;

fn value_cost(data: &[u8]) -> usize {
    VALUE_OVERHEAD + data.len().next_multiple_of(8)
}

impl Projection {
    /// The projection cut into chunks of at most `max_chunk_bytes` encoded bytes each (a single
    /// component larger than that gets a chunk of its own). With `only`, just those entities
    /// (interest management). Every chunk carries the session, seq, index, count and the
    /// state hash of what the chunks hold together.
    pub fn snapshot(&self, max_chunk_bytes: usize, only: Option<&BTreeSet<EntityId>>) -> Vec<SnapshotChunk> {
        let state_hash = match only {
            None => self.state_hash(),
            Some(set) => self.subset_hash(set),
        };
        let mut parts: Vec<(Vec<EntityId>, Vec<ComponentValue>)> = vec![(Vec::new(), Vec::new())];
        let mut size = CHUNK_OVERHEAD;
        // Starts a new chunk unless the current one is empty (a lone oversized item still goes).
        let make_room = |parts: &mut Vec<(Vec<EntityId>, Vec<ComponentValue>)>, size: &mut usize, cost: usize| {
            let empty = parts.last().is_some_and(|p| p.0.is_empty() && p.1.is_empty());
            if *size + cost > max_chunk_bytes && !empty {
                parts.push((Vec::new(), Vec::new()));
                *size = CHUNK_OVERHEAD;
            }
            *size += cost;
        };
        for e in self.entities() {
            if only.is_some_and(|s| !s.contains(&e)) {
                continue;
            }
            let values: Vec<ComponentValue> = self
                .components(e)
                .into_iter()
                .filter_map(|c| self.get(e, c).map(|v| ComponentValue { entity: e, component: c, data: v.encode() }))
                .collect();
            // The entity id travels with its first value; later values may spill into the next
            // chunks (assembly spawns every listed entity before setting values).
            let first = ENTITY_COST + values.first().map_or(0, |v| value_cost(&v.data));
            make_room(&mut parts, &mut size, first);
            parts.last_mut().expect("a part").0.push(e);
            for (i, v) in values.into_iter().enumerate() {
                if i > 0 {
                    make_room(&mut parts, &mut size, value_cost(&v.data));
                }
                parts.last_mut().expect("a part").1.push(v);
            }
        }
        let count = parts.len() as u32;
        parts
            .into_iter()
            .enumerate()
            .map(|(i, (entities, values))| SnapshotChunk {
                session: self.session(),
                seq: self.seq(),
                chunk_index: i as u32,
                chunk_count: count,
                state_hash,
                entities,
                values,
            })
            .collect()
    }

    /// The state hash of a subset of entities (what an interest-filtered viewer holds).
    pub fn subset_hash(&self, entities: &BTreeSet<EntityId>) -> Hash {
        let mut h = crate::hash::StateHash::default();
        for e in entities {
            if let Some(r) = self.entities.get(e) {
                h.add(&crate::hash::item_hash(*e, theta_schemas::ComponentId::NONE, &[]));
                for item in r.items.values() {
                    h.add(item);
                }
            }
        }
        h.digest()
    }
}

/// Encoded size of a chunk as a frame.
pub fn encoded_len(chunk: &SnapshotChunk) -> usize {
    Message::SnapshotChunk(chunk.clone()).encode().len()
}

/// Why chunks could not be assembled.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum AssembleError {
    /// A chunk disagrees with the others on session, seq, count or state hash.
    #[error("chunk {index} does not belong to this snapshot")]
    Mismatch {
        /// The chunk index.
        index: u32,
    },
    /// The same chunk index twice with different contents.
    #[error("chunk {index} received twice with different contents")]
    Duplicate {
        /// The chunk index.
        index: u32,
    },
    /// A value does not decode, or an entity appears twice.
    #[error("chunk {index}: {what}")]
    Invalid {
        /// The chunk index.
        index: u32,
        /// What is wrong.
        what: String,
    },
    /// The assembled world's state hash differs from the announced one.
    #[error("assembled state hash differs from the snapshot's")]
    HashMismatch,
}

/// Collects the chunks of one snapshot in any order.
#[derive(Debug, Default)]
pub struct Assembler {
    header: Option<(SessionId, u64, u32, Hash)>,
    chunks: BTreeMap<u32, SnapshotChunk>,
}

impl Assembler {
    /// An empty assembler.
    pub fn new() -> Assembler {
        Assembler::default()
    }

    /// Adds a chunk; returns the projection once every chunk has arrived.
    pub fn add(&mut self, chunk: SnapshotChunk) -> Result<Option<Projection>, AssembleError> {
        let header = (chunk.session, chunk.seq, chunk.chunk_count, chunk.state_hash);
        if *self.header.get_or_insert(header) != header || chunk.chunk_index >= chunk.chunk_count {
            return Err(AssembleError::Mismatch { index: chunk.chunk_index });
        }
        if let Some(old) = self.chunks.get(&chunk.chunk_index) {
            if *old != chunk {
                return Err(AssembleError::Duplicate { index: chunk.chunk_index });
            }
            return Ok(None);
        }
        self.chunks.insert(chunk.chunk_index, chunk);
        if self.chunks.len() < header.2 as usize {
            return Ok(None);
        }
        let (session, seq, _, state_hash) = header;
        // Complete: the assembler is ready for another snapshot (a resync).
        self.header = None;
        let mut p = Projection::new(session);
        let chunks = std::mem::take(&mut self.chunks);
        for (index, c) in &chunks {
            for e in &c.entities {
                if p.contains(*e) {
                    return Err(AssembleError::Invalid { index: *index, what: format!("entity {e} appears twice") });
                }
                p.spawn(*e);
            }
        }
        for (index, c) in &chunks {
            for v in &c.values {
                if !p.contains(v.entity) {
                    let what = format!("value for unlisted entity {}", v.entity);
                    return Err(AssembleError::Invalid { index: *index, what });
                }
                let value = Value::decode(v.component, &v.data)
                    .map_err(|e| AssembleError::Invalid { index: *index, what: format!("entity {}: {e}", v.entity) })?;
                p.set_value(v.entity, value);
            }
        }
        p.set_seq(seq);
        p.rebuild_hierarchy();
        p.reset_tracker();
        if p.state_hash() != state_hash {
            return Err(AssembleError::HashMismatch);
        }
        Ok(Some(p))
    }
}
