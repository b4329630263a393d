//! The state hash: a digest of a projection that depends only on its content.
//!
//! Every item is (entity id, component id, canonical bytes); an entity's existence is the item
//! (entity, 0, empty). Each item hashes to `SHA-256("theta/state-item/v1\0" || entity (u64 BE)
//! || component (u64 BE) || bytes)`. The accumulator adds item hashes as four little-endian u64
//! lanes with wrapping arithmetic (a multiset hash: order-independent, updated in O(1) per
//! changed item) and counts items. The state hash is
//! `SHA-256("theta/state/v1\0" || lane0..lane3 (u64 LE) || item count (u64 LE))`.

use sha2::{Digest, Sha256};
use theta_schemas::{ComponentId, EntityId};

/// A 32-byte digest.
pub type Hash = [u8; 32];

const ITEM_DOMAIN: &[u8] = b"theta/state-item/v1\0";
const STATE_DOMAIN: &[u8] = b"theta/state/v1\0";

/// The hash of one item.
pub fn item_hash(entity: EntityId, component: ComponentId, bytes: &[u8]) -> Hash {
    let mut h = Sha256::new();
    h.update(ITEM_DOMAIN);
    h.update(entity.to_be_bytes());
    h.update(component.0.to_be_bytes());
    h.update(bytes);
    h.finalize().into()
}

/// The order-independent accumulator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct StateHash {
    lanes: [u64; 4],
    items: u64,
}

fn lanes(h: &Hash) -> [u64; 4] {
    std::array::from_fn(|i| u64::from_le_bytes(h[i * 8..i * 8 + 8].try_into().expect("8 bytes")))
}

impl StateHash {
    /// Adds an item.
    pub fn add(&mut self, item: &Hash) {
        for (lane, x) in self.lanes.iter_mut().zip(lanes(item)) {
            *lane = lane.wrapping_add(x);
        }
        self.items += 1;
    }

    /// Removes an item previously added.
    pub fn remove(&mut self, item: &Hash) {
        for (lane, x) in self.lanes.iter_mut().zip(lanes(item)) {
            *lane = lane.wrapping_sub(x);
        }
        assert!(self.items > 0, "removing an item from an empty state");
        self.items -= 1;
    }

    /// Number of items.
    pub fn items(&self) -> u64 {
        self.items
    }

    /// The 32-byte state hash.
    pub fn digest(&self) -> Hash {
        let mut h = Sha256::new();
        h.update(STATE_DOMAIN);
        for lane in self.lanes {
            h.update(lane.to_le_bytes());
        }
        h.update(self.items.to_le_bytes());
        h.finalize().into()
    }
}

impl StateHash {
    /// The state hash of this accumulator with `adjust` added to its lanes (the item count
    /// unchanged): the hash of the same items with some replaced, see [`Adjust`].
    pub(crate) fn digest_adjusted(&self, adjust: &Adjust) -> Hash {
        let mut h = *self;
        for (lane, x) in h.lanes.iter_mut().zip(adjust.0) {
            *lane = lane.wrapping_add(x);
        }
        h.digest()
    }
}

/// Lanes to add to an accumulator so that it hashes as if some items were replaced by others
/// (`replace(from, to)`, undone by `replace(to, from)`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct Adjust(pub(crate) [u64; 4]);

impl Adjust {
    /// The lanes that turn item `from` into item `to`.
    pub(crate) fn between(from: &Hash, to: &Hash) -> Adjust {
        let (f, t) = (lanes(from), lanes(to));
        Adjust(std::array::from_fn(|i| t[i].wrapping_sub(f[i])))
    }

    pub(crate) fn add(&mut self, other: &Adjust) {
        for (lane, x) in self.0.iter_mut().zip(other.0) {
            *lane = lane.wrapping_add(x);
        }
    }

    pub(crate) fn sub(&mut self, other: &Adjust) {
        for (lane, x) in self.0.iter_mut().zip(other.0) {
            *lane = lane.wrapping_sub(x);
        }
    }
}
