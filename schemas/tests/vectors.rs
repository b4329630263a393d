//! Signing test vectors, also printed in docs/PROTOCOL.md ("Test vectors").
//!
//! A client in any language checks itself against these: the same secret key signs the same
//! body bytes into the same signature (Ed25519 is deterministic), and decoding the body
//! bytes yields the listed fields.

use ed25519_dalek::SigningKey;
use theta_schemas::Envelope;
use theta_schemas::command::{AuthorKey, Command, CommandBody, SessionId};
use theta_schemas::components::Transform;
use theta_schemas::ids::{ComponentId, ComponentMeta};
use theta_schemas::signing::{self, COMMAND_DOMAIN, SignatureError};

/// Secret key of the vectors: the 32 bytes 0x00, 0x01, ..., 0x1f.
fn vector_key() -> SigningKey {
    let mut secret = [0u8; 32];
    for (i, b) in secret.iter_mut().enumerate() {
        *b = i as u8;
    }
    SigningKey::from_bytes(&secret)
}

fn session() -> SessionId {
    SessionId::from_hex("00112233445566778899aabbccddeeff").unwrap()
}

struct Vector {
    body: CommandBody,
    body_hex: &'static str,
    signature_hex: &'static str,
    envelope_hex: &'static str,
}

fn vectors() -> Vec<Vector> {
    let key = vector_key();
    let author = signing::author_key(&key);
    vec![
        Vector {
            body: CommandBody {
                session: session(),
                author,
                lamport: 1,
                nonce: 42,
                wall_clock_ms: 1_700_000_000_000,
                entity: 0,
                component: ComponentId::NONE,
                base_version: 0,
                command: Command::CreateSession { name: "demo".into() },
            },
            body_hex: VECTOR1_BODY,
            signature_hex: VECTOR1_SIG,
            envelope_hex: VECTOR1_ENVELOPE,
        },
        Vector {
            body: CommandBody {
                session: session(),
                author,
                lamport: 2,
                nonce: 43,
                wall_clock_ms: 1_700_000_000_500,
                entity: 7,
                component: Transform::id(),
                base_version: 0,
                command: Command::SetTransform(Transform {
                    translation: [1.0, 2.0, 3.0],
                    rotation: [0.0, 0.0, 0.0, 1.0],
                    scale: [1.0, 1.0, 1.0],
                }),
            },
            body_hex: VECTOR2_BODY,
            signature_hex: VECTOR2_SIG,
            envelope_hex: VECTOR2_ENVELOPE,
        },
    ]
}

const VECTOR_PUBLIC_KEY: &str = "03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8";
const VECTOR1_BODY: &str = "2400000054484342000000001800300008000c0014001c0024000000000000000700100018000000000000014c000000240000006000000001000000000000002a000000000000000068e5cf8b010000000000002000000003a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b81000000000112233445566778899aabbccddeeff000006000800040006000000040000000400000064656d6f00000000";
const VECTOR1_SIG: &str = "9a43c5aeab9fa993389e88cecb2e17081a0d52802cba7f08b717a9dbc103ab3d9cf1ac098b20179bdf90088da4ff954b70ac0a9d9cf86782883829f68af29e03";
const VECTOR1_ENVELOPE: &str = "100000005448455608000c0004000800080000004c00000004000000400000009a43c5aeab9fa993389e88cecb2e17081a0d52802cba7f08b717a9dbc103ab3d9cf1ac098b20179bdf90088da4ff954b70ac0a9d9cf86782883829f68af29e03a80000002400000054484342000000001800300008000c0014001c0024000000000000000700100018000000000000014c000000240000006000000001000000000000002a000000000000000068e5cf8b010000000000002000000003a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b81000000000112233445566778899aabbccddeeff000006000800040006000000040000000400000064656d6f00000000";
const VECTOR2_BODY: &str = "24000000544843420000000018003c0008000c0014001c0024002c003400000007001000180000000000000958000000300000007000000002000000000000002b00000000000000f469e5cf8b01000007000000000000001e1514435336d8722000000003a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b81000000000112233445566778899aabbccddeeff00000a002c000400100020000a0000000000803f00000040000040400000000000000000000000000000803f0000803f0000803f0000803f";
const VECTOR2_SIG: &str = "15e9fc59b8a099eae1ced40ad8445ac5dd1c04b2bea5d596fd74a86c790fd48d2eb6e51666ecc8b69fee65b726d3901c2bd6343a860c22619b52d1435eb18c03";
const VECTOR2_ENVELOPE: &str = "100000005448455608000c0004000800080000004c000000040000004000000015e9fc59b8a099eae1ced40ad8445ac5dd1c04b2bea5d596fd74a86c790fd48d2eb6e51666ecc8b69fee65b726d3901c2bd6343a860c22619b52d1435eb18c03d000000024000000544843420000000018003c0008000c0014001c0024002c003400000007001000180000000000000958000000300000007000000002000000000000002b00000000000000f469e5cf8b01000007000000000000001e1514435336d8722000000003a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b81000000000112233445566778899aabbccddeeff00000a002c000400100020000a0000000000803f00000040000040400000000000000000000000000000803f0000803f0000803f0000803f";

#[test]
fn vectors_match() {
    let key = vector_key();
    let mut printed = String::new();
    printed += &format!("public key: {}\n", hex::encode(key.verifying_key().to_bytes()));
    for (i, v) in vectors().iter().enumerate() {
        let body = v.body.encode();
        let envelope = Envelope::sign(&v.body, &key);
        printed += &format!(
            "vector {}:\n body {}\n sig {}\n envelope {}\n",
            i + 1,
            hex::encode(&body),
            hex::encode(envelope.signature),
            hex::encode(envelope.encode())
        );
    }
    eprintln!("{printed}");
    assert_eq!(hex::encode(key.verifying_key().to_bytes()), VECTOR_PUBLIC_KEY);
    for v in vectors() {
        let body = v.body.encode();
        assert_eq!(hex::encode(&body), v.body_hex, "body bytes");
        let envelope = Envelope::sign(&v.body, &key);
        assert_eq!(hex::encode(envelope.signature), v.signature_hex, "signature");
        assert_eq!(hex::encode(envelope.encode()), v.envelope_hex, "envelope bytes");
        // The pinned bytes decode to the listed fields and verify.
        let (decoded_env, decoded_body) = Envelope::open(&hex::decode(v.envelope_hex).unwrap()).unwrap();
        assert_eq!(decoded_body, v.body);
        decoded_env.verify(&decoded_body).unwrap();
    }
}

#[test]
fn signed_message_is_domain_then_body() {
    let msg = signing::command_message(b"abc");
    assert_eq!(&msg[..COMMAND_DOMAIN.len()], b"theta/command/v1\0");
    assert_eq!(&msg[COMMAND_DOMAIN.len()..], b"abc");
}

#[test]
fn every_flipped_signature_bit_fails() {
    let key = vector_key();
    for v in vectors() {
        let envelope = Envelope::sign(&v.body, &key);
        for byte in 0..64 {
            for bit in 0..8 {
                let mut bad = envelope.clone();
                bad.signature[byte] ^= 1 << bit;
                assert_eq!(bad.verify(&v.body), Err(SignatureError::BadSignature), "byte {byte} bit {bit}");
            }
        }
    }
}

#[test]
fn flipped_body_byte_fails() {
    let key = vector_key();
    let v = &vectors()[1];
    let envelope = Envelope::sign(&v.body, &key);
    for i in 0..envelope.body.len() {
        let mut bad = envelope.clone();
        bad.body[i] ^= 0x01;
        assert_eq!(bad.verify(&v.body), Err(SignatureError::BadSignature), "body byte {i}");
    }
}

#[test]
fn wrong_and_weak_keys_are_rejected() {
    let key = vector_key();
    let v = &vectors()[0];
    let envelope = Envelope::sign(&v.body, &key);

    let other = SigningKey::from_bytes(&[9u8; 32]);
    let mut body = v.body.clone();
    body.author = signing::author_key(&other);
    assert_eq!(envelope.verify(&body), Err(SignatureError::BadSignature));

    // The identity point (small order) encodes as 0x01 followed by zeros.
    let mut weak = [0u8; 32];
    weak[0] = 1;
    body.author = AuthorKey(weak);
    assert_eq!(envelope.verify(&body), Err(SignatureError::WeakKey));

    // y = 2 is not on the curve.
    let mut invalid = [0u8; 32];
    invalid[0] = 2;
    body.author = AuthorKey(invalid);
    assert_eq!(envelope.verify(&body), Err(SignatureError::InvalidKey));
}
