//! Signature verification throughput on one thread: the signing rule's single and batch
//! verification next to ed25519-dalek's `verify_strict` and `verify_batch` (the paths the store
//! used before the one rule), over 64 signatures by 64 different keys, as a busy store sees them.
//!
//! `cargo bench -p theta-schemas --bench verify` (SECONDS=n per row, default 3).

use std::time::{Duration, Instant};

use ed25519_dalek::{Signer, SigningKey};
use theta_schemas::signing;

fn rate(seconds: f64, batch: usize, mut f: impl FnMut()) -> f64 {
    let deadline = Instant::now() + Duration::from_secs_f64(seconds);
    let started = Instant::now();
    let mut n = 0usize;
    while Instant::now() < deadline {
        f();
        n += batch;
    }
    n as f64 / started.elapsed().as_secs_f64()
}

fn main() {
    let seconds: f64 = std::env::var("SECONDS").ok().and_then(|s| s.parse().ok()).unwrap_or(3.0);
    let keys: Vec<SigningKey> = (0..64u8).map(|i| SigningKey::from_bytes(&[i.wrapping_add(1); 32])).collect();
    let msgs: Vec<Vec<u8>> = (0..64u8).map(|i| vec![i; 200]).collect();
    let sigs: Vec<[u8; 64]> = keys.iter().zip(&msgs).map(|(k, m)| k.sign(m).to_bytes()).collect();
    let dalek_keys: Vec<ed25519_dalek::VerifyingKey> = keys.iter().map(|k| k.verifying_key()).collect();
    let dalek_sigs: Vec<ed25519_dalek::Signature> = sigs.iter().map(ed25519_dalek::Signature::from_bytes).collect();
    let rule_keys: Vec<signing::PublicKey> =
        keys.iter().map(|k| signing::public_key(&k.verifying_key().to_bytes()).unwrap()).collect();
    let refs: Vec<&[u8]> = msgs.iter().map(|m| m.as_slice()).collect();

    println!("signature verification, one thread, 64 signatures by 64 keys, {seconds} s per row");
    let r = rate(seconds, 64, || {
        for i in 0..64 {
            dalek_keys[i].verify_strict(refs[i], &dalek_sigs[i]).unwrap();
        }
    });
    println!("  ed25519-dalek verify_strict (before, single)   {r:>9.0} signatures/s");
    let r = rate(seconds, 64, || ed25519_dalek::verify_batch(&refs, &dalek_sigs, &dalek_keys).unwrap());
    println!("  ed25519-dalek verify_batch  (before, batch)    {r:>9.0} signatures/s");
    let r = rate(seconds, 64, || {
        for i in 0..64 {
            signing::verify(&rule_keys[i], refs[i], &sigs[i]).unwrap();
        }
    });
    println!("  the rule, single (after)                       {r:>9.0} signatures/s");
    let r = rate(seconds, 64, || {
        assert!(signing::verify_batch((0..64).map(|i| (&rule_keys[i], refs[i], &sigs[i]))));
    });
    println!("  the rule, batch of 64 (after)                  {r:>9.0} signatures/s");
}
