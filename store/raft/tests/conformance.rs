//! openraft's storage conformance suite on Theta's Raft storage: the sled log store and the
//! store-backed state machine, each test on a fresh node directory.

use std::sync::Arc;

use openraft::StorageError;
use openraft::testing::{StoreBuilder, Suite};
use tempfile::TempDir;
use theta_raft::{GroupMachine, LogStore, NodeId, TypeConfig};
use theta_store::{Store, StoreConfig};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, GroupMachine, TempDir> for Builder {
    async fn build(&self) -> Result<(TempDir, LogStore, GroupMachine), StorageError<NodeId>> {
        let dir = tempfile::tempdir().expect("tempdir");
        let store = Arc::new(Store::open(dir.path().join("store"), StoreConfig::default()).expect("store"));
        let db = sled::open(dir.path().join("raft")).expect("raft db");
        let log = LogStore::open(&db, 1).expect("log store");
        let machine = GroupMachine::open(store, 1, 1)?;
        Ok((dir, log, machine))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).expect("openraft's storage suite");
}
