//! The handshake state machines and the framing, driven by hand (no I/O).

use ed25519_dalek::SigningKey;
use theta_live::frame::{self, Decoder, FrameError};
use theta_live::handshake::{
    ClientHandshake, ClientStep, CloseCode, HandshakeError, Reject, ServerHandshake, ServerStep, intersect,
};
use theta_schemas::wire::{Capabilities, Hello};
use theta_schemas::{Message, Role, SessionId};

const S: SessionId = SessionId([3; 16]);

fn caps(compression: &[&str], interest: bool, chunk: u32) -> Capabilities {
    Capabilities {
        compression: compression.iter().map(|s| s.to_string()).collect(),
        interest_management: interest,
        max_chunk_bytes: chunk,
        datagrams: false,
        compact_deltas: false,
    }
}

fn server() -> ServerHandshake {
    ServerHandshake::new(caps(&["zstd", "zstd-dict"], true, 16_384), [9; 32], 1_000, 5_000)
}

fn allow(role: Role) -> impl FnOnce(&SessionId, &theta_schemas::AuthorKey) -> Result<(Role, u64, u64), Reject> {
    move |s, _| if *s == S { Ok((role, 42, 77)) } else { Err(Reject::UnknownSession(*s)) }
}

fn code_of(step: &ServerStep) -> u32 {
    match step {
        ServerStep::Close { error, .. } => match Message::decode(error).unwrap() {
            Message::Error(e) => e.code,
            other => panic!("{other:?}"),
        },
        other => panic!("expected a close, got {other:?}"),
    }
}

#[test]
fn a_full_handshake_agrees_on_the_intersection() {
    let key = SigningKey::from_bytes(&[1; 32]);
    let (mut client, hello) = ClientHandshake::start(key.clone(), S, caps(&["lz4", "zstd"], true, 65_536), [7; 32]);
    let mut server = server();
    let ServerStep::Send(challenge) = server.on_message(&hello, 1_010, allow(Role::Viewer)) else {
        panic!("challenge")
    };
    let ClientStep::Send(proof) = client.on_message(&challenge).unwrap() else { panic!("proof") };
    let ServerStep::Done { welcome, accepted } = server.on_message(&proof, 1_020, allow(Role::Viewer)) else {
        panic!("welcome")
    };
    assert_eq!(accepted.role, Role::Viewer);
    assert_eq!(accepted.session, S);
    assert_eq!(accepted.key.0, key.verifying_key().to_bytes());
    assert_eq!(accepted.capabilities, caps(&["zstd"], true, 16_384));
    let ClientStep::Done(w) = client.on_message(&welcome).unwrap() else { panic!("done") };
    assert_eq!((w.role, w.head_seq, w.lamport_clock, w.session), (Role::Viewer, 42, 77, S));
    assert!(server.is_finished());
}

#[test]
fn compact_deltas_are_agreed_only_when_both_want_them_without_interest_management() {
    let compact = |interest| Capabilities { compact_deltas: true, ..caps(&["zstd-stream"], interest, 0) };
    assert!(intersect(&compact(false), &compact(true)).compact_deltas);
    assert!(!intersect(&compact(false), &caps(&["zstd-stream"], true, 0)).compact_deltas);
    assert!(!intersect(&caps(&[], false, 0), &compact(true)).compact_deltas);
    // With interest management agreed, deltas stay exact (the area's hash is over exact values).
    assert!(!intersect(&compact(true), &compact(true)).compact_deltas);
    assert!(intersect(&compact(true), &compact(false)).compact_deltas);
}

#[test]
fn version_and_schema_mismatches_are_refused_with_their_codes() {
    let key = SigningKey::from_bytes(&[1; 32]);
    let (_, hello) = ClientHandshake::start(key.clone(), S, caps(&[], false, 0), [7; 32]);
    let Message::Hello(h) = Message::decode(&hello).unwrap() else { panic!() };
    let wrong_version = Message::Hello(Hello { protocol_version: 99, ..h.clone() }).encode();
    assert_eq!(
        code_of(&server().on_message(&wrong_version, 1_001, allow(Role::Editor))),
        CloseCode::VersionMismatch as u32
    );
    let wrong_schema = Message::Hello(Hello { schema_hash: [0; 32], ..h }).encode();
    assert_eq!(
        code_of(&server().on_message(&wrong_schema, 1_001, allow(Role::Editor))),
        CloseCode::SchemaMismatch as u32
    );
}

#[test]
fn a_wrong_proof_unknown_session_and_missing_role_are_refused() {
    let key = SigningKey::from_bytes(&[1; 32]);
    // A proof signed by another key.
    let (_, hello) = ClientHandshake::start(key.clone(), S, caps(&[], false, 0), [7; 32]);
    let mut srv = server();
    let ServerStep::Send(challenge) = srv.on_message(&hello, 1_001, allow(Role::Editor)) else { panic!() };
    let (mut impostor, _) = ClientHandshake::start(SigningKey::from_bytes(&[2; 32]), S, caps(&[], false, 0), [7; 32]);
    let ClientStep::Send(bad) = impostor.on_message(&challenge).unwrap() else { panic!() };
    let step = srv.on_message(&bad, 1_002, |_, _| panic!("no lookup before the proof verifies"));
    assert_eq!(code_of(&step), CloseCode::BadProof as u32);

    for (session, role, code) in
        [(SessionId([4; 16]), Role::Editor, CloseCode::UnknownSession), (S, Role::None, CloseCode::NoRole)]
    {
        let (mut c, hello) = ClientHandshake::start(key.clone(), session, caps(&[], false, 0), [7; 32]);
        let mut srv = server();
        let ServerStep::Send(challenge) = srv.on_message(&hello, 1_001, allow(role)) else { panic!() };
        let ClientStep::Send(proof) = c.on_message(&challenge).unwrap() else { panic!() };
        let step = srv.on_message(&proof, 1_002, allow(role));
        assert_eq!(code_of(&step), code as u32);
        // The client reports the refusal with the server's code and reason.
        let ServerStep::Close { error, .. } = step else { panic!() };
        assert!(matches!(c.on_message(&error), Err(HandshakeError::Refused { code: x, .. }) if x == code as u32));
    }
}

#[test]
fn timeouts_garbage_and_out_of_order_messages() {
    let mut srv = server();
    assert!(srv.poll_timeout(5_000).is_none());
    let step = srv.poll_timeout(6_001).expect("timed out");
    assert_eq!(code_of(&step), CloseCode::Timeout as u32);
    assert_eq!(
        code_of(&server().on_message(b"\x00\x01garbage", 1_001, allow(Role::Editor))),
        CloseCode::ProtocolViolation as u32
    );
    // A proof before any hello.
    let proof = Message::Proof(theta_schemas::wire::Proof { signature: [0; 64] }).encode();
    assert_eq!(code_of(&server().on_message(&proof, 1_001, allow(Role::Editor))), CloseCode::ProtocolViolation as u32);
    // A client receiving a welcome before proving.
    let (mut c, _) = ClientHandshake::start(SigningKey::from_bytes(&[1; 32]), S, caps(&[], false, 0), [7; 32]);
    let welcome = Message::Welcome(theta_schemas::wire::Welcome {
        capabilities: caps(&[], false, 0),
        session: S,
        role: Role::Owner,
        head_seq: 0,
        lamport_clock: 0,
    })
    .encode();
    assert_eq!(c.on_message(&welcome), Err(HandshakeError::Unexpected("Welcome")));
}

#[test]
fn frames_split_anywhere_decode_the_same() {
    let payloads: Vec<Vec<u8>> = (1..40).map(|n| (0..n * 7).map(|i| i as u8).collect()).collect();
    let stream: Vec<u8> = payloads.iter().flat_map(|p| frame::encode(p)).collect();
    for step in [1usize, 2, 3, 5, 64, stream.len()] {
        let mut d = Decoder::new(1_024);
        let mut got = Vec::new();
        for chunk in stream.chunks(step) {
            got.extend(d.push(chunk).unwrap());
        }
        assert_eq!(got, payloads, "chunks of {step}");
        assert_eq!(d.buffered(), 0);
    }
}

#[test]
fn a_header_claiming_4_gib_is_refused_before_buffering() {
    let mut d = Decoder::new(64 * 1024);
    let err = d.push(&u32::MAX.to_le_bytes()).unwrap_err();
    assert_eq!(err, FrameError::TooLarge { len: u32::MAX as u64, max: 65_536 });
    assert_eq!(d.buffered(), 4, "nothing beyond the header was kept");
    // The stream stays refused.
    assert!(d.push(&frame::encode(b"ok")).is_err());
    let mut d = Decoder::new(16);
    assert_eq!(d.push(&0u32.to_le_bytes()).unwrap_err(), FrameError::Empty);
    let mut d = Decoder::new(16);
    assert!(matches!(d.push(&frame::encode(&[0; 17])), Err(FrameError::TooLarge { len: 17, max: 16 })));
}
