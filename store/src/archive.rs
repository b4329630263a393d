//! Backup, restore and format migration: a store's logs and rejection trails as one file, and
//! back through the verified import path.
//!
//! **Backup file** (docs/PROTOCOL.md, "Backup file"): the 8 bytes `THETABK1`, then one zstd
//! frame holding records `tag (1) || session (16) || length (u32 LE) || payload`:
//!
//! | tag | payload |
//! | --- | --- |
//! | `E` | a `LogEntry` (every session's entries in seq order, sessions one after another) |
//! | `R` | a rejection record: time ms (u64 BE), code (1), author (32, zeros: none), envelope SHA-256 (32), reason (UTF-8); session all zeros: the global trail |
//! | `Z` | the end: entries (u64 LE), rejection records (u64 LE), SHA-256 of every record byte before it (32) |
//!
//! Restore checks every chain link, hash and rule as an import does, and the end record; a
//! file cut short or changed is refused.

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::path::Path;

use sha2::{Digest, Sha256};
use theta_schemas::{LogEntry, SessionId};

use crate::backend::{Backend, SledBackend};
use crate::error::ReadError;
use crate::keys;
use crate::session::Meta;
use crate::{ImportError, Rejection, Store, StoreConfig};

/// The first bytes of a backup file.
pub const MAGIC: &[u8; 8] = b"THETABK1";
/// Entries per import chunk when restoring.
const CHUNK: usize = 10_000;

/// Why a backup, restore or migration failed.
#[derive(Debug, thiserror::Error)]
pub enum ArchiveError {
    /// Reading or writing the file failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// The file is not a backup, or is damaged or cut short.
    #[error("not a valid backup: {0}")]
    Invalid(String),
    /// Reading the store failed.
    #[error(transparent)]
    Read(#[from] ReadError),
    /// The import path refused an entry.
    #[error("session {session}: {error}")]
    Import {
        /// The session.
        session: SessionId,
        /// What the import said.
        #[source]
        error: ImportError,
    },
    /// Opening a store failed.
    #[error(transparent)]
    Open(#[from] crate::OpenError),
}

fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> ArchiveError {
    let what = what.into();
    move |source| ArchiveError::Io { what, source }
}

/// What a backup or restore covered.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Summary {
    /// Every session: its id, head seq and Merkle root at the head.
    pub sessions: Vec<(SessionId, u64, [u8; 32])>,
    /// Log entries.
    pub entries: u64,
    /// Rejection records.
    pub rejections: u64,
}

/// Progress of a long operation: entries done so far and, where known, in all.
#[derive(Debug, Clone, Copy)]
pub struct Progress {
    /// Entries done.
    pub done: u64,
    /// Entries in all, when known.
    pub total: Option<u64>,
}

/// Writes records, hashing them for the end record.
struct Writer<W: Write> {
    out: zstd::stream::write::Encoder<'static, W>,
    hash: Sha256,
}

impl<W: Write> Writer<W> {
    fn record(&mut self, tag: u8, session: &SessionId, payload: &[u8]) -> Result<(), ArchiveError> {
        let mut head = [0u8; 21];
        head[0] = tag;
        head[1..17].copy_from_slice(&session.0);
        head[17..].copy_from_slice(&(payload.len() as u32).to_le_bytes());
        self.hash.update(head);
        self.hash.update(payload);
        self.out.write_all(&head).map_err(io("write the backup"))?;
        self.out.write_all(payload).map_err(io("write the backup"))
    }
}

/// Writes every session's log and every rejection trail of `store` to `out`.
pub fn backup(store: &Store, out: impl Write, progress: &mut dyn FnMut(Progress)) -> Result<Summary, ArchiveError> {
    let mut out = out;
    out.write_all(MAGIC).map_err(io("write the backup"))?;
    let encoder = zstd::stream::write::Encoder::new(out, 3).map_err(io("start compressing"))?;
    let mut w = Writer { out: encoder, hash: Sha256::new() };
    let heads = store.sessions();
    let total: u64 = heads.iter().map(|h| h.seq).sum();
    let mut summary = Summary::default();
    for head in &heads {
        for e in store.read_range(&head.session, 1, head.seq)? {
            w.record(b'E', &head.session, &e?.encode())?;
            summary.entries += 1;
            if summary.entries % 65_536 == 0 {
                progress(Progress { done: summary.entries, total: Some(total) });
            }
        }
        for r in store.rejections(Some(&head.session))? {
            w.record(b'R', &head.session, &r.encode())?;
            summary.rejections += 1;
        }
        summary.sessions.push((head.session, head.seq, head.tree_root));
    }
    for r in store.rejections(None)? {
        w.record(b'R', &SessionId::default(), &r.encode())?;
        summary.rejections += 1;
    }
    let mut end = Vec::with_capacity(48);
    end.extend_from_slice(&summary.entries.to_le_bytes());
    end.extend_from_slice(&summary.rejections.to_le_bytes());
    end.extend_from_slice(&w.hash.clone().finalize());
    w.record(b'Z', &SessionId::default(), &end)?;
    let mut out = w.out.finish().map_err(io("finish compressing"))?;
    out.flush().map_err(io("write the backup"))?;
    progress(Progress { done: summary.entries, total: Some(total) });
    Ok(summary)
}

/// Imports one session's entries in chunks, three in flight.
struct Importer<'a> {
    store: &'a Store,
    session: Option<SessionId>,
    chunk: Vec<LogEntry>,
    results: std::sync::mpsc::Receiver<Result<u64, ImportError>>,
    sender: std::sync::mpsc::Sender<Result<u64, ImportError>>,
    in_flight: usize,
    head: u64,
}

impl<'a> Importer<'a> {
    fn new(store: &'a Store) -> Importer<'a> {
        let (sender, results) = std::sync::mpsc::channel();
        Importer { store, session: None, chunk: Vec::new(), results, sender, in_flight: 0, head: 0 }
    }

    fn wait_one(&mut self) -> Result<(), ArchiveError> {
        let session = self.session.unwrap_or_default();
        let r = self.results.recv().map_err(|_| ArchiveError::Invalid("the store stopped".into()))?;
        self.in_flight -= 1;
        self.head = r.map_err(|error| ArchiveError::Import { session, error })?;
        Ok(())
    }

    fn send(&mut self) -> Result<(), ArchiveError> {
        if self.chunk.is_empty() {
            return Ok(());
        }
        if self.in_flight == 3 {
            self.wait_one()?;
        }
        let tx = self.sender.clone();
        let session = self.session.expect("a session with entries");
        self.store.submit_import(session, std::mem::take(&mut self.chunk), move |r| {
            let _ = tx.send(r);
        });
        self.in_flight += 1;
        Ok(())
    }

    fn finish(&mut self) -> Result<(), ArchiveError> {
        self.send()?;
        while self.in_flight > 0 {
            self.wait_one()?;
        }
        Ok(())
    }

    fn push(&mut self, session: SessionId, entry: LogEntry) -> Result<(), ArchiveError> {
        if self.session != Some(session) {
            self.finish()?;
            self.session = Some(session);
        }
        self.chunk.push(entry);
        if self.chunk.len() >= CHUNK {
            self.send()?;
        }
        Ok(())
    }
}

/// Restores a backup into `store` (normally a new, empty one) through the verified import
/// path; the end record must match.
pub fn restore(store: &Store, input: impl Read, progress: &mut dyn FnMut(Progress)) -> Result<Summary, ArchiveError> {
    let mut input = input;
    let mut magic = [0u8; 8];
    input.read_exact(&mut magic).map_err(|_| ArchiveError::Invalid("shorter than its header".into()))?;
    if &magic != MAGIC {
        return Err(ArchiveError::Invalid("the file does not start with THETABK1".into()));
    }
    let mut r = zstd::stream::read::Decoder::new(input).map_err(io("start decompressing"))?;
    let mut hash = Sha256::new();
    let mut importer = Importer::new(store);
    let mut trails: BTreeMap<SessionId, Vec<Rejection>> = BTreeMap::new();
    let (mut entries, mut rejections) = (0u64, 0u64);
    loop {
        let mut head = [0u8; 21];
        r.read_exact(&mut head).map_err(|_| ArchiveError::Invalid("cut short: no end record".into()))?;
        let session = SessionId(head[1..17].try_into().expect("16 bytes"));
        let len = u32::from_le_bytes(head[17..].try_into().expect("4 bytes")) as usize;
        if len > 16 << 20 {
            return Err(ArchiveError::Invalid(format!("a record of {len} bytes")));
        }
        let mut payload = vec![0u8; len];
        r.read_exact(&mut payload).map_err(|_| ArchiveError::Invalid("cut short inside a record".into()))?;
        match head[0] {
            b'E' => {
                hash.update(head);
                hash.update(&payload);
                let e = LogEntry::decode(&payload)
                    .map_err(|e| ArchiveError::Invalid(format!("entry {entries} does not decode: {e}")))?;
                importer.push(session, e)?;
                entries += 1;
                if entries % 65_536 == 0 {
                    progress(Progress { done: entries, total: None });
                }
            }
            b'R' => {
                hash.update(head);
                hash.update(&payload);
                let rec = Rejection::decode(0, &payload)
                    .ok_or_else(|| ArchiveError::Invalid(format!("rejection record {rejections} does not decode")))?;
                trails.entry(session).or_default().push(rec);
                rejections += 1;
            }
            b'Z' => {
                let want: [u8; 32] = hash.finalize().into();
                let ok = payload.len() == 48
                    && payload[..8] == entries.to_le_bytes()
                    && payload[8..16] == rejections.to_le_bytes()
                    && payload[16..] == want;
                if !ok {
                    return Err(ArchiveError::Invalid("the end record does not match the contents".into()));
                }
                break;
            }
            t => return Err(ArchiveError::Invalid(format!("unknown record tag {t}"))),
        }
    }
    importer.finish()?;
    for (session, records) in trails {
        let target = (session != SessionId::default()).then_some(session);
        store.import_rejections(target, records).map_err(|error| ArchiveError::Import { session, error })?;
    }
    progress(Progress { done: entries, total: Some(entries) });
    let sessions = store.sessions().into_iter().map(|h| (h.session, h.seq, h.tree_root)).collect();
    Ok(Summary { sessions, entries, rejections })
}

/// An older format's log, for migration. Format 1 (stores written before the format key):
/// sessions from the `S` headers, entries in `E` blocks of plain `u32 LE length || LogEntry`
/// framing, trails as today. Format 2: the same with compressed blocks (codec byte, plain
/// length, zstd frame, as today), Merkle nodes one per key (not read: the import rebuilds them).
fn read_old(
    format: u8,
    backend: &dyn Backend,
    importer: &mut Importer<'_>,
    trails: &mut BTreeMap<SessionId, Vec<Rejection>>,
    progress: &mut dyn FnMut(Progress),
) -> Result<(u64, u64), ArchiveError> {
    let bad = |session: SessionId, seq: u64, detail: &str| {
        ArchiveError::Read(ReadError::Corrupted { session, seq, detail: detail.into() })
    };
    let mut sessions = Vec::new();
    for kv in backend.range(&[keys::tag::META], &[keys::tag::META + 1]) {
        let (k, v) = kv.map_err(ReadError::from)?;
        let id = SessionId(k[1..17].try_into().expect("session key"));
        let meta = Meta::decode(&v).ok_or_else(|| bad(id, 0, "unreadable session header"))?;
        sessions.push((id, meta.head_seq));
    }
    let total: u64 = sessions.iter().map(|(_, h)| h).sum();
    let (mut entries, mut rejections) = (0u64, 0u64);
    for (id, head) in sessions {
        let p = keys::prefix(keys::tag::ENTRY, &id);
        let mut seq = 1;
        for kv in backend.range(&p, &keys::prefix_end(&p)) {
            let (_, stored) = kv.map_err(ReadError::from)?;
            let raw = match format {
                1 => stored.to_vec(),
                _ => crate::blocks::decode(&stored).map_err(|e| bad(id, seq, &e))?,
            };
            let parts = crate::blocks::split(&raw).map_err(|_| bad(id, seq, "block framing broken"))?;
            for part in parts {
                let e = LogEntry::decode(part).map_err(|_| bad(id, seq, "entry does not decode"))?;
                if e.seq != seq {
                    return Err(bad(id, seq, "entry out of order"));
                }
                importer.push(id, e)?;
                seq += 1;
                entries += 1;
                if entries % 65_536 == 0 {
                    progress(Progress { done: entries, total: Some(total) });
                }
            }
        }
        if seq != head + 1 {
            return Err(bad(id, seq, "entries end before the head"));
        }
    }
    for kv in backend.range(&[keys::tag::TRAIL], &[keys::tag::TRAIL + 1]) {
        let (k, v) = kv.map_err(ReadError::from)?;
        let id = SessionId(k[1..17].try_into().expect("session key"));
        if let Some(r) = Rejection::decode(0, &v) {
            trails.entry(id).or_default().push(r);
            rejections += 1;
        }
    }
    Ok((entries, rejections))
}

/// Converts the store in `dir` to the current on-disk format: reads it as its own format,
/// imports everything into `dir.migrating` through the verified import path, then keeps the
/// old directory as `dir.format-N` and puts the new one in its place. The service key moves
/// with it. Projection checkpoints are caches and are not carried over.
pub fn migrate(dir: &Path, config: StoreConfig, progress: &mut dyn FnMut(Progress)) -> Result<Summary, ArchiveError> {
    if !dir.join("db").exists() {
        return Err(ArchiveError::Invalid(format!("{} holds no store", dir.display())));
    }
    let old = SledBackend::open(dir, config.cache_capacity_bytes).map_err(crate::OpenError::from)?;
    let found = match old.get(keys::FORMAT).map_err(crate::OpenError::from)? {
        Some(v) => v.first().copied().unwrap_or(0),
        None => 1,
    };
    if found == crate::FORMAT_VERSION {
        return Err(ArchiveError::Invalid(format!("{} is already in format {found}", dir.display())));
    }
    if !(1..crate::FORMAT_VERSION).contains(&found) {
        return Err(ArchiveError::Invalid(format!(
            "{} holds format {found}, which this theta cannot read",
            dir.display()
        )));
    }
    let staging = dir.with_extension("migrating");
    if staging.exists() {
        std::fs::remove_dir_all(&staging).map_err(io(format!("remove {}", staging.display())))?;
    }
    std::fs::create_dir_all(&staging).map_err(io(format!("create {}", staging.display())))?;
    let key = dir.join("service.key");
    if key.exists() {
        std::fs::copy(&key, staging.join("service.key")).map_err(io("copy the service key"))?;
    }
    let summary = {
        let store = Store::open(&staging, config)?;
        let mut importer = Importer::new(&store);
        let mut trails = BTreeMap::new();
        let (entries, rejections) = read_old(found, &old, &mut importer, &mut trails, progress)?;
        importer.finish()?;
        for (session, records) in trails {
            let target = (session != SessionId::default()).then_some(session);
            store.import_rejections(target, records).map_err(|error| ArchiveError::Import { session, error })?;
        }
        let sessions = store.sessions().into_iter().map(|h| (h.session, h.seq, h.tree_root)).collect();
        store.close();
        Summary { sessions, entries, rejections }
    };
    drop(old);
    let kept = dir.with_extension(format!("format-{found}"));
    std::fs::rename(dir, &kept).map_err(io(format!("rename {} to {}", dir.display(), kept.display())))?;
    std::fs::rename(&staging, dir).map_err(io(format!("rename {} to {}", staging.display(), dir.display())))?;
    Ok(summary)
}
