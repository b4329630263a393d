//! The one signature rule: single and batch verification agree with the rule's reference
//! verdict on the edge cases of "Taming the many EdDSAs" and on generated small-order and
//! mixed-order `R` and `A`, alone and at every position inside batches of valid signatures.

use ed25519_dalek::SigningKey;
use theta_schemas::signing::edge::{Edge, edge_key, reference_verdict, sign_edge};
use theta_schemas::signing::{self, SignatureError};

fn unhex<const N: usize>(s: &str) -> [u8; N] {
    hex::decode(s).unwrap().try_into().unwrap()
}

/// Single verification, batch verification alone, and batch verification inside valid traffic.
fn verdicts(key: &[u8; 32], message: &[u8], sig: &[u8; 64]) -> (bool, bool, Vec<bool>) {
    let Ok(pk) = signing::public_key(key) else { return (false, false, vec![false; 4]) };
    let single = signing::verify(&pk, message, sig).is_ok();
    let alone = signing::verify_batch([(&pk, message, sig)]);
    let honest = SigningKey::from_bytes(&[9; 32]);
    let honest_pk = signing::public_key(&honest.verifying_key().to_bytes()).unwrap();
    let traffic: Vec<(Vec<u8>, [u8; 64])> = (0..63u8)
        .map(|i| {
            let m = vec![i; 40];
            let s = sign_edge(&honest, &m, Edge::Honest);
            (m, s)
        })
        .collect();
    let inside = [0usize, 1, 31, 63]
        .iter()
        .map(|&pos| {
            let mut items: Vec<(&signing::PublicKey, &[u8], &[u8; 64])> =
                traffic.iter().map(|(m, s)| (&honest_pk, m.as_slice(), s)).collect();
            items.insert(pos, (&pk, message, sig));
            signing::verify_batch(items)
        })
        .collect();
    (single, alone, inside)
}

/// An independent ZIP-215 implementation (ed25519-zebra) under the same key rule.
fn zebra_verdict(key: &[u8; 32], message: &[u8], sig: &[u8; 64]) -> bool {
    signing::public_key(key).is_ok()
        && ed25519_zebra::VerificationKey::try_from(*key)
            .is_ok_and(|k| k.verify(&ed25519_zebra::Signature::from_bytes(sig), message).is_ok())
}

fn check(name: &str, key: &[u8; 32], message: &[u8], sig: &[u8; 64], expected: bool) {
    assert_eq!(reference_verdict(key, message, sig), expected, "{name}: reference verdict");
    assert_eq!(zebra_verdict(key, message, sig), expected, "{name}: ed25519-zebra's verdict");
    let (single, alone, inside) = verdicts(key, message, sig);
    assert_eq!(single, expected, "{name}: single verification");
    assert_eq!(alone, expected, "{name}: batch of one");
    assert!(inside.iter().all(|&v| v == expected), "{name}: inside a batch of valid signatures: {inside:?}");
}

/// The twelve cases of ed25519-speccheck (Chalkias, Garillot, Nikolaenko 2020), with Theta's
/// verdict: ZIP-215 (cofactored, `S` canonical, any `R` encoding that decompresses) plus the key
/// rule (canonical `A`, not of small order).
#[test]
fn taming_the_many_eddsas() {
    #[rustfmt::skip]
    let cases: [(&str, &str, &str, bool, &str); 12] = [
        ("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa", "8c93255d71dcab10e8f379c26200f3c7bd5f09d9bc3068d3ef4edeb4853022b6",
         "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac037a0000000000000000000000000000000000000000000000000000000000000000", false, "small-order A"),
        ("c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa", "9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79",
         "f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43a5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04", false, "small-order A"),
        ("f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43", "aebf3f2601a0c8c5d39cc7d8911642f740b78168218da8471772b35f9d35b9ab",
         "c7176a703d4dd84fba3c0b760d10670f2a2053fa2c39ccc64ec7fd7792ac03fa8c4bd45aecaca5b24fb97bc10ac27ac8751a7dfe1baff8b953ec9f5833ca260e", true, "mixed-order A, small-order R"),
        ("cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d", "9bd9f44f4dcc75bd531b56b2cd280b0bb38fc1cd6d1230e14861d861de092e79",
         "9046a64750444938de19f227bb80485e92b83fdb4b6506c160484c016cc1852f87909e14428a7a1d62e9f22f3d3ad7802db02eb2e688b6c52fcd6648a98bd009", true, "mixed orders, both equations hold"),
        ("cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d", "e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c",
         "160a1cb0dc9c0258cd0a7d23e94d8fa878bcb1925f2c64246b2dee1796bed5125ec6bc982a269b723e0668e540911a9a6a58921d6925e434ab10aa7940551a09", true, "cofactored equation only"),
        ("cdb267ce40c5cd45306fa5d2f29731459387dbf9eb933b7bd5aed9a765b88d4d", "e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec4011eaccd55b53f56c",
         "21122a84e0b5fca4052f5b1235c80a537878b38f3142356b2c2384ebad4668b7e40bc836dac0f71076f9abe3a53f9c03c1ceeeddb658d0030494ace586687405", true, "cofactored equation only, k not pre-reduced"),
        ("442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623", "85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40",
         "e96f66be976d82e60150baecff9906684aebb1ef181f67a7189ac78ea23b6c0e547f7690a0e2ddcd04d87dbc3490dc19b3b3052f7ff0538cb68afb369ba3a514", false, "S >= L"),
        ("442aad9f089ad9e14647b1ef9099a1ff4798d78589e66f28eca69c11f582a623", "85e241a07d148b41e47d62c63f830dc7a6851a0b1f33ae4bb2f507fb6cffec40",
         "8ce5b96c8f26d0ab6c47958c9e68b937104cd36e13c33566acd2fe8d38aa19427e71f98a473474f2f13f06f97c20d58cc3f54b8bd0d272f42b695dd7e89a8c22", false, "S >= L, high bits"),
        ("f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43", "9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41",
         "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff03be9678ac102edcd92b0210bb34d7428d12ffc5df5f37e359941266a4e35f0f", false, "non-canonical R, cofactored equation fails"),
        ("f7badec5b8abeaf699583992219b7b223f1df3fbbea919844e3f7c554a43dd43", "9bedc267423725d473888631ebf45988bad3db83851ee85c85e241a07d148b41",
         "ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffca8c5b64cd208982aa38d4936621a4775aa233aa0505711d8fdcfdaa943d4908", true, "non-canonical R, cofactored equation holds"),
        ("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", "e96b7021eb39c1a163b6da4e3093dcd3f21387da4cc4572be588fafae23c155b",
         "a9d55260f765261eb9b84e106f665e00b867287a761990d7135963ee0a7d59dca5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04", false, "non-canonical small-order A"),
        ("ecffffffffffffffffffffffffffffffffffffffffffffffffffffffffffffff", "39a591f5321bbe07fd5a23dc2f39d025d74526615746727ceefd6e82ae65c06f",
         "a9d55260f765261eb9b84e106f665e00b867287a761990d7135963ee0a7d59dca5bb704786be79fc476f91d3f3f89b03984d8068dcf1bb7dfc6637b45450ac04", false, "non-canonical small-order A"),
    ];
    for (i, (key, msg, sig, expected, what)) in cases.iter().enumerate() {
        check(&format!("speccheck {i} ({what})"), &unhex(key), &hex::decode(msg).unwrap(), &unhex(sig), *expected);
    }
}

#[test]
fn generated_edges_agree_on_every_path() {
    let secret = SigningKey::from_bytes(&[7; 32]);
    for edge in Edge::all() {
        let message = format!("theta edge {edge:?}").into_bytes();
        let key = edge_key(&secret, edge);
        let sig = sign_edge(&secret, &message, edge);
        let expected = match edge {
            Edge::Honest | Edge::TorsionR(_) | Edge::SmallOrderR(_) | Edge::MixedKey(_) => true,
            Edge::SmallOrderKey(_) | Edge::NonCanonicalS | Edge::FlippedBit => false,
        };
        check(&format!("{edge:?}"), &key, &message, &sig, expected);
    }
}

#[test]
fn the_key_rule() {
    let secret = SigningKey::from_bytes(&[7; 32]);
    for i in 0..8 {
        let weak = edge_key(&secret, Edge::SmallOrderKey(i));
        assert_eq!(signing::public_key(&weak).unwrap_err(), SignatureError::WeakKey, "torsion point {i}");
    }
    // The identity encoded with y = p + 1: a valid point, a non-canonical encoding.
    let mut noncanonical = [0xff; 32];
    noncanonical[0] = 0xee;
    noncanonical[31] = 0x7f;
    assert_eq!(signing::public_key(&noncanonical).unwrap_err(), SignatureError::InvalidKey);
    // Not a point at all (y = 2 has no x on the curve).
    let mut not_a_point = [0u8; 32];
    not_a_point[0] = 2;
    assert_eq!(signing::public_key(&not_a_point).unwrap_err(), SignatureError::InvalidKey);
    assert!(signing::public_key(&edge_key(&secret, Edge::MixedKey(3))).is_ok());
}
