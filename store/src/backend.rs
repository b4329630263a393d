//! The storage seam: an ordered key-value space with atomic batches and a durable flush.
//!
//! [`SledBackend`] is the real one; [`MemoryBackend`] keeps everything in a `BTreeMap` for
//! fast tests. Nothing outside this module knows about sled.

use std::collections::BTreeMap;
use std::fs::File;
use std::path::{Path, PathBuf};
use std::sync::RwLock;

/// A storage failure. The store treats these as fatal for the batch that hit them. No sled
/// type appears here: the engine is this module's business.
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The storage engine reported an error (its message).
    #[error("storage engine: {0}")]
    Engine(String),
    /// A file operation (fdatasync, directory creation) failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being done.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Key-value pairs in key order.
pub type KvIter = Box<dyn Iterator<Item = Result<(Vec<u8>, Vec<u8>), BackendError>> + Send>;

/// One atomic set of writes.
#[derive(Debug, Default, Clone)]
pub struct WriteBatch {
    ops: Vec<(Vec<u8>, Option<Vec<u8>>)>,
}

impl WriteBatch {
    /// Sets `key` to `value`.
    pub fn put(&mut self, key: Vec<u8>, value: Vec<u8>) {
        self.ops.push((key, Some(value)));
    }
    /// Removes `key`.
    pub fn delete(&mut self, key: Vec<u8>) {
        self.ops.push((key, None));
    }
    /// Number of operations.
    pub fn len(&self) -> usize {
        self.ops.len()
    }
    /// Whether the batch is empty.
    pub fn is_empty(&self) -> bool {
        self.ops.is_empty()
    }
}

/// The narrow seam between the store and its storage engine.
pub trait Backend: Send + Sync + 'static {
    /// Reads one key.
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError>;
    /// Iterates keys in `[start, end)` in order, lazily.
    fn range(&self, start: &[u8], end: &[u8]) -> KvIter;
    /// Iterates keys in `[start, end)` in reverse order, lazily.
    fn range_rev(&self, start: &[u8], end: &[u8]) -> KvIter;
    /// Applies a batch atomically (all or nothing, also across a crash).
    fn apply(&self, batch: WriteBatch) -> Result<(), BackendError>;
    /// Makes every applied batch durable. `sync_data` also forces the data to stable storage
    /// (fdatasync), beyond what the engine's own flush does.
    fn flush(&self, sync_data: bool) -> Result<(), BackendError>;
    /// Where the data lives, if on disk.
    fn path(&self) -> Option<&Path>;
}

/// Segment size of new sled databases, bytes. sled writes any page larger than a quarter of a
/// segment to a file of its own under `blobs/` (each one fsynced on flush); with sled's default
/// of 512 KiB a leaf of a few log blocks already crossed that line at every rewrite.
pub const SEGMENT_BYTES: usize = 8 << 20;

/// The segment size recorded in an existing sled database's `conf` file.
fn stored_segment_size(path: &Path) -> Option<usize> {
    // Text lines, then a 4-byte checksum.
    let conf = std::fs::read(path.join("conf")).ok()?;
    String::from_utf8_lossy(&conf).lines().find_map(|l| l.strip_prefix("segment_size: ")?.trim().parse().ok())
}

/// sled 0.34, with an fdatasync of its data file after its own flush.
///
/// sled's flush writes its log with `sync_file_range`, which does not flush the drive's
/// write cache or file metadata; the extra `fdatasync` covers power loss (docs/ARCHITECTURE.md,
/// "Safety").
pub struct SledBackend {
    db: sled::Db,
    tree: sled::Tree,
    data_file: File,
    path: PathBuf,
    /// Blob files (sled's out-of-line storage for large pages) already fdatasync'ed.
    synced_blobs: std::sync::Mutex<std::collections::BTreeSet<std::ffi::OsString>>,
}

impl SledBackend {
    /// Opens (or creates) a sled database in `path`.
    pub fn open(path: &Path, cache_capacity_bytes: u64) -> Result<SledBackend, BackendError> {
        let io = |what: &str| {
            let what = format!("{what} {}", path.display());
            move |source| BackendError::Io { what, source }
        };
        std::fs::create_dir_all(path).map_err(io("create data directory"))?;
        // sled stores its segment size and refuses another one on reopen.
        let segment = stored_segment_size(path).unwrap_or(SEGMENT_BYTES);
        let config = sled::Config::new()
            .path(path)
            .cache_capacity(cache_capacity_bytes)
            .segment_size(segment)
            .flush_every_ms(None)
            .mode(sled::Mode::HighThroughput);
        // sled releases its file lock from background threads shortly after a `Db` in this
        // process is dropped; wait briefly for that instead of failing a reopen.
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(5);
        let db = loop {
            match config.open() {
                Ok(db) => break db,
                Err(sled::Error::Io(e))
                    if e.to_string().contains("could not acquire lock") && std::time::Instant::now() < deadline =>
                {
                    std::thread::sleep(std::time::Duration::from_millis(10));
                }
                Err(e) => return Err(sled_error(e)),
            }
        };
        let tree = db.open_tree("theta").map_err(sled_error)?;
        db.flush().map_err(sled_error)?;
        let data_file = File::open(path.join("db")).map_err(io("open sled data file in"))?;
        // Make the directory entries of a new database durable too.
        File::open(path).and_then(|d| d.sync_all()).map_err(io("fsync directory"))?;
        data_file.sync_all().map_err(io("fsync sled data file in"))?;
        Ok(SledBackend { db, tree, data_file, path: path.to_path_buf(), synced_blobs: Default::default() })
    }
}

impl SledBackend {
    /// sled writes pages too large for its log to files in `blobs/` without syncing them;
    /// fdatasync every blob file not synced yet, then the directory.
    fn sync_new_blobs(&self) -> Result<(), BackendError> {
        let dir = self.path.join("blobs");
        let io = |what: String| move |source| BackendError::Io { what, source };
        let Ok(listing) = std::fs::read_dir(&dir) else {
            return Ok(());
        };
        let mut synced = self.synced_blobs.lock().expect("blob set lock");
        let mut present = std::collections::BTreeSet::new();
        let mut new = false;
        for entry in listing {
            let entry = entry.map_err(io(format!("list {}", dir.display())))?;
            let name = entry.file_name();
            if !synced.contains(&name) {
                let p = entry.path();
                match File::open(&p) {
                    Ok(f) => f.sync_data().map_err(io(format!("fdatasync {}", p.display())))?,
                    // Collected by sled since the listing.
                    Err(e) if e.kind() == std::io::ErrorKind::NotFound => continue,
                    Err(e) => return Err(io(format!("open {}", p.display()))(e)),
                }
                new = true;
            }
            present.insert(name);
        }
        if new {
            File::open(&dir).and_then(|d| d.sync_all()).map_err(io(format!("fsync {}", dir.display())))?;
        }
        *synced = present;
        Ok(())
    }
}

/// A sled error as a [`BackendError`]: its I/O errors keep their `io::Error` (their kind says
/// "disk full" or "I/O error"), the rest their message.
fn sled_error(e: sled::Error) -> BackendError {
    match e {
        sled::Error::Io(source) => BackendError::Io { what: "sled".into(), source },
        other => BackendError::Engine(other.to_string()),
    }
}

fn sled_iter(it: impl Iterator<Item = sled::Result<(sled::IVec, sled::IVec)>> + Send + 'static) -> KvIter {
    Box::new(it.map(|r| r.map(|(k, v)| (k.to_vec(), v.to_vec())).map_err(sled_error)))
}

impl Backend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.tree.get(key).map_err(sled_error)?.map(|v| v.to_vec()))
    }
    fn range(&self, start: &[u8], end: &[u8]) -> KvIter {
        sled_iter(self.tree.range(start.to_vec()..end.to_vec()))
    }
    fn range_rev(&self, start: &[u8], end: &[u8]) -> KvIter {
        sled_iter(self.tree.range(start.to_vec()..end.to_vec()).rev())
    }
    fn apply(&self, batch: WriteBatch) -> Result<(), BackendError> {
        let mut b = sled::Batch::default();
        for (k, v) in batch.ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.tree.apply_batch(b).map_err(sled_error)
    }
    fn flush(&self, sync_data: bool) -> Result<(), BackendError> {
        self.db.flush().map_err(sled_error)?;
        if sync_data {
            self.data_file.sync_data().map_err(|source| BackendError::Io {
                what: format!("fdatasync {}", self.path.join("db").display()),
                source,
            })?;
            self.sync_new_blobs()?;
        }
        Ok(())
    }
    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }
}

/// Everything in memory; for tests and benchmarks of the logic alone. Not durable.
#[derive(Default)]
pub struct MemoryBackend {
    map: RwLock<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl MemoryBackend {
    /// An empty in-memory backend.
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    fn collect(&self, start: &[u8], end: &[u8], rev: bool) -> KvIter {
        let map = self.map.read().expect("memory backend lock");
        let range = map.range(start.to_vec()..end.to_vec()).map(|(k, v)| Ok((k.clone(), v.clone())));
        let items: Vec<_> = if rev { range.rev().collect() } else { range.collect() };
        Box::new(items.into_iter())
    }
}

impl Backend for MemoryBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.map.read().expect("memory backend lock").get(key).cloned())
    }
    fn range(&self, start: &[u8], end: &[u8]) -> KvIter {
        self.collect(start, end, false)
    }
    fn range_rev(&self, start: &[u8], end: &[u8]) -> KvIter {
        self.collect(start, end, true)
    }
    fn apply(&self, batch: WriteBatch) -> Result<(), BackendError> {
        let mut map = self.map.write().expect("memory backend lock");
        for (k, v) in batch.ops {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        Ok(())
    }
    fn flush(&self, _sync_data: bool) -> Result<(), BackendError> {
        Ok(())
    }
    fn path(&self) -> Option<&Path> {
        None
    }
}

/// A backend that loses power on request: what was applied since the last durable flush is
/// gone after [`PowerLossBackend::power_loss`]. Batches stay atomic (all or nothing), as
/// sled's are. Flushes can be made to fail (`fail_flushes`), as a disk error would. For tests.
#[derive(Default)]
pub struct PowerLossBackend {
    live: MemoryBackend,
    durable: MemoryBackend,
    unflushed: std::sync::Mutex<Vec<WriteBatch>>,
    failing_flushes: std::sync::atomic::AtomicU64,
}

impl PowerLossBackend {
    /// An empty backend.
    pub fn new() -> PowerLossBackend {
        PowerLossBackend::default()
    }

    /// Fails the next `n` flushes with an I/O error (nothing of theirs becomes durable).
    pub fn fail_flushes(&self, n: u64) {
        self.failing_flushes.store(n, std::sync::atomic::Ordering::SeqCst);
    }

    /// The power goes out: a new backend holding only what was durable.
    pub fn power_loss(&self) -> PowerLossBackend {
        let durable = self.durable.map.read().expect("memory backend lock").clone();
        let copy = || MemoryBackend { map: RwLock::new(durable.clone()) };
        PowerLossBackend { live: copy(), durable: copy(), ..Default::default() }
    }
}

impl Backend for PowerLossBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.live.get(key)
    }
    fn range(&self, start: &[u8], end: &[u8]) -> KvIter {
        self.live.range(start, end)
    }
    fn range_rev(&self, start: &[u8], end: &[u8]) -> KvIter {
        self.live.range_rev(start, end)
    }
    fn apply(&self, batch: WriteBatch) -> Result<(), BackendError> {
        self.unflushed.lock().expect("unflushed lock").push(batch.clone());
        self.live.apply(batch)
    }
    fn flush(&self, _sync_data: bool) -> Result<(), BackendError> {
        let failing = &self.failing_flushes;
        if failing.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            failing.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            return Err(BackendError::Io {
                what: "flush (injected)".into(),
                source: std::io::Error::other("injected I/O error"),
            });
        }
        for b in std::mem::take(&mut *self.unflushed.lock().expect("unflushed lock")) {
            self.durable.apply(b)?;
        }
        Ok(())
    }
    fn path(&self) -> Option<&Path> {
        None
    }
}
