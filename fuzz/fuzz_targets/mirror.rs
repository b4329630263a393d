//! A viewer's mirror fed arbitrary frame payloads under each agreed encoding and compact
//! setting: a typed error or a state it can hold, never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;
use theta_live::mirror::Mirror;
use theta_schemas::wire::Capabilities;

fuzz_target!(|data: &[u8]| {
    let Some((&mode, rest)) = data.split_first() else { return };
    let compression = match mode % 4 {
        0 => vec![],
        1 => vec!["zstd".to_string()],
        2 => vec!["zstd-dict".to_string(), "zstd".to_string()],
        _ => vec!["zstd-stream".to_string()],
    };
    let agreed = Capabilities { compression, compact_deltas: mode & 4 != 0, ..Capabilities::default() };
    let mut m = Mirror::new();
    m.new_connection(&agreed);
    for payload in theta_fuzz::pieces(rest) {
        if m.handle_frame(payload.to_vec()).is_err() {
            // A real client drops the mirror and asks for a snapshot.
            m.clear();
            m.new_connection(&agreed);
        }
    }
});
