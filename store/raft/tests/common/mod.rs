//! Helpers the replicated-store tests share.

use theta_schemas::SessionId;
use theta_store::Store;

/// Every session's entries, encoded, in session order: what a replica holds.
pub fn contents(store: &Store) -> Vec<(SessionId, Vec<Vec<u8>>)> {
    let mut heads = store.sessions();
    heads.sort_by_key(|h| h.session);
    heads
        .iter()
        .map(|h| (h.session, store.read_range(&h.session, 1, h.seq).unwrap().map(|e| e.unwrap().encode()).collect()))
        .collect()
}
