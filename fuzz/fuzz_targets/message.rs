//! Every live message kind, decoded under the live-frame limits (what a peer's frame payload
//! meets first), and the frame decoder that cuts a byte stream into payloads.
#![no_main]

use libfuzzer_sys::fuzz_target;
use theta_live::frame::Decoder;
use theta_schemas::Message;

fuzz_target!(|data: &[u8]| {
    if let Ok(m) = Message::decode(data) {
        // What decodes re-encodes and decodes to the same message.
        assert_eq!(Message::decode(&m.encode()).expect("a re-encoded message decodes"), m);
    }
    // The same bytes as a stream in uneven pieces: at most one frame (≤ the guard) held.
    let mut d = Decoder::new(4_096);
    for piece in data.chunks(7) {
        match d.push(piece) {
            Ok(frames) => assert!(frames.iter().all(|f| !f.is_empty() && f.len() <= 4_096)),
            Err(_) => break,
        }
        assert!(d.buffered() <= 4_096 + 4);
    }
});
