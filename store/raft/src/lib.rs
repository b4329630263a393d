//! The replicated log: each session's log ordered by a Raft group (openraft), with the store
//! as every replica's state machine.
//!
//! A cluster runs several Raft groups; sessions are hashed onto them ([`group_of`]). Each
//! group has, on each of its nodes:
//!
//! - a Raft log on sled ([`LogStore`]): the entries the group's leader proposed, each a
//!   signed command envelope with the leader's clock ([`Proposal`]), durable (flush +
//!   fsync) before openraft hears that they are;
//! - a state machine ([`GroupMachine`]) that applies committed entries to the node's
//!   [`theta_store::Store`] in log order. Apply runs the store's checks (signature, role,
//!   replay, Lamport, conflict) on every replica, with the leader's clock in place of the
//!   local one, so the same Raft log gives every replica the same session logs, byte for byte.
//!   The group's applied position is written in the same atomic batch as each outcome (a
//!   replica mark), so a crash never leaves the store ahead of or behind what Raft believes
//!   was applied.
//!
//! Snapshots are the store itself: a snapshot records each of the group's sessions' head at
//! the applied position, and its data is those sessions' entries, read from the store when a
//! follower needs them; installing one imports the entries the follower lacks.
//!
//! What is deliberately not in a Raft entry's apply: the rate limits (they read a clock and
//! are the leader's to enforce before it proposes), and anything else that reads this
//! machine's state outside the store.

// openraft's storage traits return its `StorageError` (over 200 bytes); the helpers that
// build one return it too.
#![allow(clippy::result_large_err)]

mod log_store;
mod machine;
pub mod net;
mod node;

pub use log_store::{LogReader, LogStore};
pub use machine::{GroupMachine, SnapshotBuilder};
pub use net::{ClusterKey, Connector, TcpConnector};
pub use node::{Node, NodeConfig, ProposeError, RaftClient};

use std::fmt;
use std::io::Cursor;

use serde::{Deserialize, Serialize};
use theta_schemas::SessionId;

/// A Raft group's number within a cluster (0 is the metadata group, data groups from 1).
pub type GroupId = u64;

/// A node's id within a cluster. Ids are never reused: a wiped node joins under a new id.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// Theta's openraft type configuration.
    pub TypeConfig:
        D = Proposal,
        R = Applied,
        NodeId = NodeId,
        Node = Member,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

/// A Raft log entry's application data: what a group's leader proposes.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Proposal {
    /// A signed command envelope as its editor sent it, with the leader's clock when it
    /// proposed it (Unix milliseconds; the receipt time on every replica).
    Append {
        /// The envelope bytes.
        envelope: Vec<u8>,
        /// The leader's clock.
        time_ms: u64,
    },
}

/// What applying one Raft entry gave: the leader answers its client with this.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Applied {
    /// The entry carried no command (a blank or membership entry).
    Nothing,
    /// The command was accepted.
    Accepted(ReceiptData),
    /// The command was refused by the store's checks, on every replica alike.
    Rejected {
        /// The stable rejection code (docs/PROTOCOL.md, `theta_store::RejectionCode`).
        code: u8,
        /// The store's message.
        reason: String,
        /// For a replayed (author, nonce): the seq where the pair was first accepted.
        first_seq: Option<u64>,
    },
}

/// An accepted command's receipt, as the applying replica made it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ReceiptData {
    /// The session.
    pub session: [u8; 16],
    /// The entry's seq.
    pub seq: u64,
    /// The command's Lamport time.
    pub lamport: u64,
    /// The command's nonce.
    pub nonce: u64,
    /// The entry hash.
    pub entry_hash: [u8; 32],
    /// The tree size the entry was made durable in.
    pub tree_size: u64,
    /// That tree's root.
    pub tree_root: [u8; 32],
}

impl From<&theta_store::Receipt> for ReceiptData {
    fn from(r: &theta_store::Receipt) -> ReceiptData {
        ReceiptData {
            session: r.session.0,
            seq: r.seq,
            lamport: r.lamport,
            nonce: r.nonce,
            entry_hash: r.entry_hash,
            tree_size: r.tree_size,
            tree_root: r.tree_root,
        }
    }
}

/// A cluster member: where its peers reach its Raft service and where clients reach it.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    /// Address of the node's Raft service (host:port).
    pub raft_addr: String,
    /// Address of the node's gRPC service for clients (host:port).
    pub grpc_addr: String,
}

impl fmt::Display for Member {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "raft {} grpc {}", self.raft_addr, self.grpc_addr)
    }
}

/// Key of the SipHash that places sessions onto groups. Fixed forever: changing it would move
/// every session of every cluster.
const PLACEMENT_KEY: [u8; 16] = *b"theta/placement1";

/// The data group (1..=`groups`) that orders `session`'s log in a cluster of `groups` data
/// groups.
pub fn group_of(session: &SessionId, groups: u64) -> GroupId {
    use std::hash::Hasher as _;
    let mut h = siphasher::sip::SipHasher24::new_with_key(&PLACEMENT_KEY);
    h.write(&session.0);
    1 + h.finish() % groups.max(1)
}

/// Encodes a value for Raft storage or the wire (postcard).
pub fn encode<T: Serialize>(value: &T) -> Vec<u8> {
    postcard::to_stdvec(value).expect("postcard encodes every Theta Raft type")
}

/// Decodes a value [`encode`] made.
pub fn decode<T: for<'a> Deserialize<'a>>(bytes: &[u8]) -> Result<T, postcard::Error> {
    postcard::from_bytes(bytes)
}

/// An openraft storage error from any error, for a read (`write` false) or a write.
pub(crate) fn io_error(write: bool, e: impl fmt::Display) -> openraft::StorageError<NodeId> {
    let e = openraft::AnyError::error(e);
    if write { openraft::StorageIOError::write(&e).into() } else { openraft::StorageIOError::read(&e).into() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn placement_is_stable_and_in_range() {
        let s = SessionId([7; 16]);
        // Pinned: placement must never change between versions.
        let pinned: Vec<u64> = (0..8u8).map(|i| group_of(&SessionId([i; 16]), 4)).collect();
        assert_eq!(pinned, [2, 1, 4, 1, 2, 3, 1, 1]);
        for g in 1..=8 {
            let n = group_of(&s, g);
            assert!((1..=g).contains(&n));
        }
        let spread: std::collections::BTreeSet<_> = (0..64u8).map(|i| group_of(&SessionId([i; 16]), 4)).collect();
        assert_eq!(spread.len(), 4, "64 sessions reach every one of 4 groups");
    }

    #[test]
    fn proposals_round_trip() {
        let p = Proposal::Append { envelope: vec![1, 2, 3], time_ms: 42 };
        let bytes = encode(&p);
        // A length prefix and the raw bytes: envelopes are not inflated.
        assert!(bytes.len() < 3 + 8);
        assert_eq!(decode::<Proposal>(&bytes).unwrap(), p);
    }
}
