//! Integration tests of theta-store, as one binary.

mod archive;
mod checks;
mod crash;
mod durability;
mod faults;
mod helpers;
mod props;
mod reads;
mod recovery;
