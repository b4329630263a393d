//! Malformed outside bytes are rejected with a typed error and never panic.

use flatbuffers::InvalidFlatbuffer;
use proptest::prelude::*;
use theta_schemas::command::{Command, CommandBody};
use theta_schemas::components::{Component, Mesh, Selection, Transform};
use theta_schemas::decode::{DecodeError, Limits};
use theta_schemas::{Envelope, LogEntry, MAX_ENVELOPE_BYTES, Message};

#[path = "roundtrip.rs"]
#[allow(dead_code)]
mod roundtrip;

/// A body with fixed scope fields around `command`.
fn body(command: Command) -> CommandBody {
    CommandBody {
        session: theta_schemas::SessionId([1; 16]),
        author: theta_schemas::AuthorKey([2; 32]),
        lamport: 1,
        nonce: 2,
        wall_clock_ms: 3,
        entity: 4,
        component: theta_schemas::ComponentId(5),
        base_version: 6,
        command,
    }
}

/// Runs every decoder of outside bytes over `bytes`; none may panic.
fn decode_everything(bytes: &[u8]) {
    let _ = CommandBody::decode(bytes);
    let _ = Envelope::open(bytes);
    let _ = LogEntry::decode(bytes);
    let _ = Message::decode(bytes);
    let _ = Transform::decode(bytes);
    let _ = Mesh::decode(bytes);
    let _ = Selection::decode(bytes);
    let _ = theta_schemas::components::Name::decode(bytes);
    let _ = theta_schemas::components::ToolState::decode(bytes);
    let _ = theta_schemas::components::Material::decode(bytes);
    let _ = theta_schemas::components::Primitive::decode(bytes);
    let _ = theta_schemas::components::Parent::decode(bytes);
}

fn valid_buffers() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = roundtrip::every_message().iter().map(Message::encode).collect();
    for c in roundtrip::every_command() {
        let body = body(c);
        let bytes = body.encode();
        out.push(Envelope { body: bytes.clone(), signature: [9; 64] }.encode());
        out.push(bytes);
    }
    out
}

#[test]
fn every_truncation_is_rejected_or_harmless() {
    for buf in valid_buffers() {
        let whole_msg = Message::decode(&buf).ok();
        let whole_body = CommandBody::decode(&buf).ok();
        for len in 0..buf.len() {
            let cut = &buf[..len];
            // Cutting only trailing padding may still decode; it must then decode to the same value.
            if let Ok(m) = Message::decode(cut) {
                assert_eq!(Some(m), whole_msg, "truncated frame of {len}/{} bytes decoded differently", buf.len());
            }
            if let Ok(b) = CommandBody::decode(cut) {
                assert_eq!(Some(b), whole_body, "truncated body of {len}/{} bytes decoded differently", buf.len());
            }
            decode_everything(cut);
        }
        // Cutting into the data itself always fails.
        assert!(Message::decode(&buf[..buf.len() / 2]).is_err());
        assert!(Envelope::open(&buf[..buf.len() / 2]).is_err());
    }
}

#[test]
fn empty_and_tiny_buffers_are_typed_errors() {
    assert!(matches!(Message::decode(&[]), Err(DecodeError::WrongIdentifier { .. })));
    assert!(matches!(CommandBody::decode(&[0, 0, 0]), Err(DecodeError::WrongIdentifier { .. })));
    // Right identifier, root offset pointing far outside the buffer.
    let mut bad = vec![0xff, 0xff, 0xff, 0x7f];
    bad.extend_from_slice(b"THFR");
    assert!(matches!(Message::decode(&bad), Err(DecodeError::Malformed { .. })));
}

#[test]
fn bad_offsets_are_rejected() {
    let buf = Message::encode(&roundtrip::every_message()[5]);
    // Point the root offset at every position; each must decode or fail cleanly.
    for pos in (0..buf.len() as u32 + 8).step_by(1) {
        let mut b = buf.clone();
        b[..4].copy_from_slice(&pos.to_le_bytes());
        let _ = Message::decode(&b);
    }
    // Overwrite each aligned 4-byte word (offsets, lengths) with a huge value.
    for at in (8..buf.len() - 4).step_by(4) {
        let mut b = buf.clone();
        b[at..at + 4].copy_from_slice(&0x7fff_fff0u32.to_le_bytes());
        let _ = Message::decode(&b);
    }
}

#[test]
fn oversized_buffers_are_rejected_before_parsing() {
    let big = vec![0u8; MAX_ENVELOPE_BYTES + 1];
    assert_eq!(
        Message::decode(&big),
        Err(DecodeError::TooLarge { len: MAX_ENVELOPE_BYTES + 1, max: MAX_ENVELOPE_BYTES })
    );
    assert!(matches!(Envelope::decode(&big), Err(DecodeError::TooLarge { .. })));
    assert!(matches!(CommandBody::decode(&big), Err(DecodeError::TooLarge { .. })));
    // A real but too-big set-component command is also refused.
    let body = body(Command::SetComponent { data: vec![0; MAX_ENVELOPE_BYTES] });
    assert!(matches!(CommandBody::decode(&body.encode()), Err(DecodeError::TooLarge { .. })));
}

#[test]
fn depth_and_table_limits_are_enforced() {
    let delta = Message::encode(&roundtrip::every_message()[5]);
    let shallow = Limits { max_depth: 2, ..Limits::FRAME };
    let err = Message::decode_with(&delta, shallow).unwrap_err();
    assert!(matches!(err, DecodeError::Malformed { source: InvalidFlatbuffer::DepthLimitReached, .. }), "{err}");
    let few_tables = Limits { max_tables: 3, ..Limits::FRAME };
    let err = Message::decode_with(&delta, few_tables).unwrap_err();
    assert!(matches!(err, DecodeError::Malformed { source: InvalidFlatbuffer::TooManyTables, .. }), "{err}");
}

#[test]
fn invalid_values_are_rejected() {
    let mut body = body(Command::SetTransform(Transform { translation: [f32::NAN, 0.0, 0.0], ..Transform::default() }));
    assert!(matches!(CommandBody::decode(&body.encode()), Err(DecodeError::InvalidValue { .. })));
    body.command = Command::AddFaces { indices: vec![1, 2] };
    assert!(matches!(CommandBody::decode(&body.encode()), Err(DecodeError::InvalidValue { .. })));
    body.command = Command::MoveVertices { indices: vec![1, 2], positions: vec![[0.0; 3]] };
    assert!(matches!(CommandBody::decode(&body.encode()), Err(DecodeError::InvalidValue { .. })));
    let mesh = Mesh { positions: vec![[0.0; 3]], indices: vec![0, 0, 5] };
    assert!(matches!(Mesh::decode(&mesh.encode()), Err(DecodeError::InvalidValue { .. })));
    let unsorted = Selection { authors: vec![theta_schemas::AuthorKey([2; 32]), theta_schemas::AuthorKey([1; 32])] };
    assert!(matches!(Selection::decode(&unsorted.encode()), Err(DecodeError::InvalidValue { .. })));
}

#[test]
fn unknown_union_tags_and_enums_are_rejected() {
    let body = body(Command::Select);
    let bytes = body.encode();
    // The union tag is the only byte equal to 10 (Select); patch it to an unknown tag.
    let positions: Vec<usize> = bytes.iter().enumerate().filter(|(_, b)| **b == 10).map(|(i, _)| i).collect();
    let mut saw_unknown = false;
    for p in positions {
        let mut b = bytes.clone();
        b[p] = 200;
        if let Err(DecodeError::UnknownVariant { union: "Command", tag: 200 }) = CommandBody::decode(&b) {
            saw_unknown = true;
        }
    }
    assert!(saw_unknown, "patching the union tag must give UnknownVariant");
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, .. ProptestConfig::default() })]

    #[test]
    fn random_bytes_never_panic(bytes in proptest::collection::vec(any::<u8>(), 0..512)) {
        decode_everything(&bytes);
        // Random bytes with a forged identifier still go through the verifier.
        let mut framed = bytes.clone();
        if framed.len() >= 8 {
            framed[4..8].copy_from_slice(b"THFR");
            let _ = Message::decode(&framed);
            framed[4..8].copy_from_slice(b"THCB");
            let _ = CommandBody::decode(&framed);
        }
    }

    #[test]
    fn mutated_valid_buffers_never_panic(idx in 0usize..64, flips in proptest::collection::vec((any::<usize>(), any::<u8>()), 1..8)) {
        let bufs = valid_buffers();
        let mut b = bufs[idx % bufs.len()].clone();
        for (at, x) in flips {
            let n = b.len();
            b[at % n] ^= x;
        }
        decode_everything(&b);
    }
}

#[test]
fn live_control_and_compression_messages_with_bad_values_are_typed_errors() {
    use theta_schemas::wire::{Compressed, Dictionary, Interest};
    let bad_interest = [
        Interest { center: [f32::NAN, 0.0, 0.0], radius: 1.0 },
        Interest { center: [0.0; 3], radius: f32::INFINITY },
        Interest { center: [0.0; 3], radius: -1.0 },
    ];
    for i in bad_interest {
        let e = Message::decode(&Message::Interest(i).encode()).unwrap_err();
        assert!(matches!(e, DecodeError::InvalidValue { field: "Interest", .. }), "{e:?}");
    }
    let e = Message::decode(&Message::Dictionary(Dictionary { id: 0, data: vec![1] }).encode()).unwrap_err();
    assert!(matches!(e, DecodeError::InvalidValue { field: "Dictionary.id", .. }), "{e:?}");
    let huge = Compressed { dictionary: 0, raw_len: MAX_ENVELOPE_BYTES as u32 + 1, data: vec![1, 2, 3] };
    let e = Message::decode(&Message::Compressed(huge).encode()).unwrap_err();
    assert!(matches!(e, DecodeError::InvalidValue { field: "Compressed.raw_len", .. }), "{e:?}");
}
