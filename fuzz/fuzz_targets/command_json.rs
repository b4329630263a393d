//! The CLI's command JSON (`theta append`, docs/PROTOCOL.md "CLI command JSON"): arbitrary
//! bytes parsed as JSON, then as a command. A typed refusal, or a command that signs into an
//! envelope the store's decoder reads back the same.
#![no_main]

use libfuzzer_sys::fuzz_target;
use theta_schemas::{Envelope, SessionId};

fuzz_target!(|data: &[u8]| {
    let Ok(json) = serde_json::from_slice::<serde_json::Value>(data) else { return };
    let Ok((entity, component, base, command)) = theta_client::command_json::command_from_json(&json) else { return };
    let mut author = theta_testkit::Author::new(7);
    let envelope = author.cmd(SessionId([2; 16]), entity, component, base, command.clone());
    let (_, body) = Envelope::open(&envelope).expect("a signed command opens");
    assert_eq!(body.command, command);
    assert_eq!((body.entity, body.component, body.base_version), (entity, component, base));
});
