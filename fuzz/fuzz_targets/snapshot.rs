//! Snapshot chunks assembled in any order, count and content: a projection whose state hash
//! is the one announced, or a typed error.
#![no_main]

use libfuzzer_sys::fuzz_target;
use theta_projector::Assembler;
use theta_schemas::Message;

fuzz_target!(|data: &[u8]| {
    let mut asm = Assembler::new();
    for payload in theta_fuzz::pieces(data) {
        let Ok(Message::SnapshotChunk(c)) = Message::decode(payload) else { continue };
        let announced = c.state_hash;
        match asm.add(c) {
            Ok(Some(p)) => {
                assert_eq!(p.state_hash(), announced, "an assembled snapshot has the announced hash");
                return;
            }
            Ok(None) => {}
            Err(_) => asm = Assembler::new(),
        }
    }
});
