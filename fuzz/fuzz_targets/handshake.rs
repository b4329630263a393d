//! The server's handshake state machine driven by an arbitrary sequence of frame payloads at
//! arbitrary times: it must end in a welcome or a typed refusal, never panic, and never accept
//! without a proof signed by the key it names.
#![no_main]

use libfuzzer_sys::fuzz_target;
use theta_live::handshake::{ServerHandshake, ServerStep};
use theta_schemas::wire::Capabilities;
use theta_schemas::{Message, Role};

fuzz_target!(|data: &[u8]| {
    let mut hs = ServerHandshake::new(Capabilities::default(), [7; 32], 0, 5_000);
    let mut now = 0u64;
    // Payloads, each preceded by a time step byte (× 40 ms).
    for part in theta_fuzz::pieces(data) {
        let Some((&step, payload)) = part.split_first() else { continue };
        now += u64::from(step) * 40;
        match hs.on_message(payload, now, |_, _| Ok((Role::Editor, 0, 0))) {
            // A welcome needs a proof signed by the named key over this server's challenge:
            // random bytes never carry one, so the fuzzer only ends here from a seeded corpus.
            ServerStep::Done { .. } | ServerStep::Close { .. } => return,
            _ => {}
        }
        if hs.is_finished() {
            return;
        }
    }
    let _ = Message::decode(data);
});
