//! Compressed replication payloads in each mode (zstd with or without a dictionary sent
//! in-band, and stream pieces): typed errors, and never more output than the frame guard.
#![no_main]

use libfuzzer_sys::fuzz_target;
use theta_live::compress::{Decompressor, Encoding};
use theta_schemas::MAX_ENVELOPE_BYTES;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let mut d = match mode % 3 {
        0 => Decompressor::new(),
        1 => Decompressor::for_encoding(Encoding::ZstdDict),
        _ => Decompressor::for_encoding(Encoding::ZstdStream),
    };
    // Several payloads in a row (a dictionary may come first; stream pieces continue).
    for payload in theta_fuzz::pieces(rest) {
        match d.open(payload.to_vec()) {
            Ok(Some(out)) => assert!(out.len() <= MAX_ENVELOPE_BYTES + 1_024, "{} bytes out", out.len()),
            Ok(None) => {}
            Err(_) => {}
        }
    }
});
