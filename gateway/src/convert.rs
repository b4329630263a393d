//! Conversions between store/projector types and `theta.v1` messages.

use theta_proto::v1 as pb;
use theta_schemas::{AuthorKey, Envelope, LogEntry, SessionId};
use theta_store::{Head, Receipt};
use tonic::Status;

use crate::status::bad_field;

/// A 16-byte session id from a request field.
pub fn session(bytes: &[u8]) -> Result<SessionId, Status> {
    bytes.try_into().map(SessionId).map_err(|_| bad_field("session", &format!("must be 16 bytes, got {}", bytes.len())))
}

/// A 32-byte author key from a request field.
pub fn author(bytes: &[u8]) -> Result<AuthorKey, Status> {
    bytes.try_into().map(AuthorKey).map_err(|_| bad_field("author", &format!("must be 32 bytes, got {}", bytes.len())))
}

/// A receipt message.
pub fn receipt(r: &Receipt) -> pb::Receipt {
    pb::Receipt {
        session: r.session.0.to_vec(),
        seq: r.seq,
        lamport: r.lamport,
        nonce: r.nonce,
        entry_hash: r.entry_hash.to_vec(),
        tree_size: r.tree_size,
        tree_root: r.tree_root.to_vec(),
    }
}

/// A head message.
pub fn head(h: &Head) -> pb::HeadResponse {
    pb::HeadResponse {
        session: h.session.0.to_vec(),
        seq: h.seq,
        lamport_clock: h.clock,
        tree_root: h.tree_root.to_vec(),
        last_entry_hash: h.last_entry_hash.to_vec(),
        name: h.name.clone(),
    }
}

/// An entry message without the decoded convenience fields.
pub fn bare_entry(e: LogEntry) -> pb::Entry {
    pb::Entry {
        seq: e.seq,
        prev_hash: e.prev_hash.to_vec().into(),
        entry_hash: e.entry_hash.to_vec().into(),
        receipt_time_ms: e.receipt_time_ms,
        envelope: e.envelope.into(),
        ..Default::default()
    }
}

/// An entry message, with the decoded convenience fields.
pub fn entry(e: LogEntry) -> pb::Entry {
    let mut out = pb::Entry {
        seq: e.seq,
        prev_hash: e.prev_hash.to_vec().into(),
        entry_hash: e.entry_hash.to_vec().into(),
        receipt_time_ms: e.receipt_time_ms,
        ..Default::default()
    };
    if let Ok((_, body)) = Envelope::open(&e.envelope) {
        out.author = body.author.0.to_vec().into();
        out.lamport = body.lamport;
        out.nonce = body.nonce;
        out.kind = body.command.kind().name().to_string();
        out.entity = body.entity;
        out.component = body.component.0;
    }
    out.envelope = e.envelope.into();
    out
}
