//! Checkpoint restore from arbitrary bytes (a damaged or hostile checkpoint file): a typed
//! error, or a projection that checkpoints back to bytes that restore to the same state.
#![no_main]

use libfuzzer_sys::fuzz_target;
use theta_projector::Projection;

fuzz_target!(|data: &[u8]| {
    if let Ok(p) = Projection::from_checkpoint(data) {
        let again = Projection::from_checkpoint(&p.checkpoint()).expect("a fresh checkpoint restores");
        assert_eq!(again.state_hash(), p.state_hash());
        assert_eq!(again.seq(), p.seq());
    }
});
