//! A signed command as it arrives on every append path: envelope and body decode (with the
//! body's validation) under the command limits. Nothing may panic; what opens must re-encode
//! to bytes that open to the same body.
#![no_main]

use libfuzzer_sys::fuzz_target;
use theta_schemas::{CommandBody, Envelope};

fuzz_target!(|data: &[u8]| {
    let _ = Envelope::decode(data);
    let _ = CommandBody::decode(data);
    if let Ok((envelope, body)) = Envelope::open(data) {
        let again = Envelope::open(&envelope.encode()).expect("a re-encoded envelope opens");
        assert_eq!(again.1, body, "the body survives a re-encode");
    }
});
