//! The stored log entry.

use flatbuffers::FlatBufferBuilder;

use crate::decode::{DecodeError, Limits, fixed};
use crate::fb;

/// A command once accepted into a session's log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogEntry {
    /// Gapless per-session sequence number, from 1.
    pub seq: u64,
    /// The envelope bytes exactly as received.
    pub envelope: Vec<u8>,
    /// Hash of the previous entry (zeros for seq 1).
    pub prev_hash: [u8; 32],
    /// Hash of this entry.
    pub entry_hash: [u8; 32],
    /// Store's wall clock at acceptance, Unix milliseconds.
    pub receipt_time_ms: u64,
}

impl LogEntry {
    /// Encodes the entry (identifier `THLE`).
    pub fn encode(&self) -> Vec<u8> {
        let mut fbb = FlatBufferBuilder::with_capacity(self.envelope.len() + 160);
        let envelope = Some(fbb.create_vector(&self.envelope));
        let prev_hash = Some(fbb.create_vector(&self.prev_hash));
        let entry_hash = Some(fbb.create_vector(&self.entry_hash));
        let root = fb::LogEntry::create(
            &mut fbb,
            &fb::LogEntryArgs { seq: self.seq, envelope, prev_hash, entry_hash, receipt_time_ms: self.receipt_time_ms },
        );
        fb::finish_log_entry_buffer(&mut fbb, root);
        fbb.finished_data().to_vec()
    }

    /// Decodes and validates an entry.
    pub fn decode(buf: &[u8]) -> Result<LogEntry, DecodeError> {
        const T: &str = "LogEntry";
        let e = Limits::LOG_ENTRY.root::<fb::LogEntry>(buf, T, Some(fb::LOG_ENTRY_IDENTIFIER))?;
        let envelope = e.envelope().ok_or(DecodeError::MissingField { table: T, field: "envelope" })?;
        Ok(LogEntry {
            seq: e.seq(),
            envelope: envelope.bytes().to_vec(),
            prev_hash: fixed(e.prev_hash(), T, "prev_hash")?,
            entry_hash: fixed(e.entry_hash(), T, "entry_hash")?,
            receipt_time_ms: e.receipt_time_ms(),
        })
    }
}
