//! The verification stage: payload guard, schema, scope and signatures, batched.
//!
//! Runs on `verify_threads` workers ahead of the committer, so the next batches are decoded
//! and verified while the previous one is committed and flushed. Each worker takes everything
//! queued when it is free (a batch as large as the load allows) and checks it with batch
//! verification; a failed batch is split in halves until only the bad signatures are
//! rejected. Both paths apply the one rule of [`theta_schemas::signing`], so the verdict never
//! depends on which path a signature took.

use std::collections::HashMap;
use std::time::Instant;

use theta_schemas::signing::{self, PublicKey, SignatureError};
use theta_schemas::{AuthorKey, CommandBody, Envelope, SessionId};

use crate::config::StoreConfig;
use crate::error::AppendError;
use crate::metrics::Metrics;
use crate::validate::validate;

/// An append after the stateless stage.
pub(crate) struct Checked {
    /// The envelope bytes as received (hashed for the rejection trail only if refused).
    pub bytes: Vec<u8>,
    /// The decoded body, or why the stage rejected it.
    pub result: Result<CommandBody, AppendError>,
    /// Session and author named by the body, when it decoded and the signature proves the author
    /// (for the rejection trail: a session's trail holds only rejections of proven authors).
    pub origin: Option<(SessionId, AuthorKey)>,
    /// The body's nonce, when it decoded (0 otherwise): a live client matches answers by it.
    pub nonce: u64,
}

/// Bounded cache of decoded, non-weak public keys.
pub(crate) struct KeyCache {
    keys: HashMap<AuthorKey, PublicKey>,
    capacity: usize,
}

impl KeyCache {
    pub fn new(capacity: usize) -> KeyCache {
        KeyCache { keys: HashMap::new(), capacity: capacity.max(1) }
    }

    pub fn get(&mut self, key: &AuthorKey) -> Result<PublicKey, SignatureError> {
        if let Some(k) = self.keys.get(key) {
            return Ok(*k);
        }
        let k = signing::verifying_key(key)?;
        if self.keys.len() >= self.capacity {
            // Bounded: start over rather than grow; re-decoding is cheap relative to a miss storm.
            self.keys.clear();
        }
        self.keys.insert(*key, k);
        Ok(k)
    }
}

/// Guard, decode and validate one envelope (bound to `expected`, the submitting connection's
/// session, when it has one); returns the body and envelope if they pass.
fn precheck(
    bytes: &[u8],
    expected: Option<SessionId>,
    config: &StoreConfig,
    origin: &mut Option<(SessionId, AuthorKey)>,
    nonce: &mut u64,
) -> Result<(Envelope, CommandBody), AppendError> {
    if bytes.len() > config.max_envelope_bytes {
        return Err(AppendError::PayloadTooLarge { len: bytes.len(), max: config.max_envelope_bytes });
    }
    let (envelope, body) = Envelope::open(bytes).map_err(AppendError::Malformed)?;
    *origin = Some((body.session, body.author));
    *nonce = body.nonce;
    if expected.is_some_and(|s| s != body.session) {
        return Err(AppendError::Invalid {
            kind: body.command.kind(),
            reason: "the command names another session than its connection's".into(),
        });
    }
    validate(&body)?;
    Ok((envelope, body))
}

/// Whether the envelope's signature verifies under the author it names (the rare path of
/// commands that decode but are invalid: their rejection goes to the session's trail only then).
fn author_proven(bytes: &[u8], keys: &mut KeyCache) -> bool {
    let Ok((envelope, body)) = Envelope::open(bytes) else { return false };
    keys.get(&body.author).is_ok_and(|k| signing::verify_command(&k, &envelope.body, &envelope.signature).is_ok())
}

struct Pending<'a> {
    idx: usize,
    /// The command body (signed as `COMMAND_DOMAIN || body`).
    body: &'a [u8],
    key: PublicKey,
    signature: &'a [u8; 64],
}

/// Verifies a part of a batch; returns the indexes that failed and whether a batch check
/// failed. A failed batch is split in halves, each checked as a batch again, down to four
/// signatures checked one by one: one bad signature in 1,024 costs about two batch checks
/// instead of 1,024 single ones, which also bounds what a flood of bad signatures can cost.
fn verify_part(part: &[Pending<'_>], batch: bool) -> (Vec<usize>, bool) {
    let single = |p: &[Pending<'_>]| -> Vec<usize> {
        p.iter().filter(|p| signing::verify_command(&p.key, p.body, p.signature).is_err()).map(|p| p.idx).collect()
    };
    if !batch || part.len() <= 1 {
        return (single(part), false);
    }
    fn bisect(part: &[Pending<'_>], single: &dyn Fn(&[Pending<'_>]) -> Vec<usize>, out: &mut Vec<usize>) {
        if part.len() <= 4 {
            out.extend(single(part));
            return;
        }
        if signing::verify_batch_commands(part.iter().map(|p| (&p.key, p.body, p.signature))) {
            return;
        }
        let (a, b) = part.split_at(part.len() / 2);
        bisect(a, single, out);
        bisect(b, single, out);
    }
    if signing::verify_batch_commands(part.iter().map(|p| (&p.key, p.body, p.signature))) {
        return (Vec::new(), false);
    }
    let mut failed = Vec::new();
    let (a, b) = part.split_at(part.len() / 2);
    bisect(a, &single, &mut failed);
    bisect(b, &single, &mut failed);
    (failed, true)
}

/// Runs the stateless stage over a batch of envelopes.
pub(crate) fn check_batch(
    inputs: Vec<(Vec<u8>, Option<SessionId>)>,
    config: &StoreConfig,
    keys: &mut KeyCache,
    metrics: &Metrics,
) -> Vec<Checked> {
    let mut out: Vec<Checked> = Vec::with_capacity(inputs.len());
    let mut envelopes: Vec<Option<(Envelope, PublicKey)>> = Vec::with_capacity(inputs.len());
    for (bytes, expected) in inputs {
        let (mut origin, mut nonce) = (None, 0);
        let (envelope, result) = match precheck(&bytes, expected, config, &mut origin, &mut nonce) {
            Ok((envelope, body)) => match keys.get(&body.author) {
                Ok(key) => (Some((envelope, key)), Ok(body)),
                Err(e) => {
                    origin = None;
                    (None, Err(AppendError::Signature(e)))
                }
            },
            Err(e) => {
                // A decoded but invalid command keeps its session trail only if its author is proven.
                if origin.is_some() && !author_proven(&bytes, keys) {
                    origin = None;
                }
                (None, Err(e))
            }
        };
        envelopes.push(envelope);
        out.push(Checked { bytes, result, origin, nonce });
    }
    let started = Instant::now();
    let pending: Vec<Pending<'_>> = out
        .iter()
        .zip(&envelopes)
        .enumerate()
        .filter_map(|(idx, (c, e))| {
            c.result.as_ref().ok()?;
            let (envelope, key) = e.as_ref()?;
            Some(Pending { idx, body: &envelope.body, key: *key, signature: &envelope.signature })
        })
        .collect();
    if pending.is_empty() {
        return out;
    }
    let results = [verify_part(&pending, config.batch_verify)];
    metrics.verify_latency.observe_us(started.elapsed().as_micros() as u64);
    metrics.signatures_verified.fetch_add(pending.len() as u64, std::sync::atomic::Ordering::Relaxed);
    drop(pending);
    for (failed, fell_back) in results {
        if fell_back {
            metrics.batch_verify_fallbacks.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        }
        for idx in failed {
            out[idx].result = Err(AppendError::Signature(SignatureError::BadSignature));
            out[idx].origin = None;
        }
    }
    out
}
