//! The storage seam: an ordered key-value space with atomic batches and a durable flush.
//!
//! [`SledBackend`] is the real one; [`MemoryBackend`] keeps everything in a `BTreeMap` for
//! fast tests. Nothing outside this module knows about sled.

use std::collections::BTreeMap;
use std::fs::File;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

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
    /// After a failed write or flush: drops what the engine holds in memory and opens the
    /// storage again, so that what is served is what storage really holds (a write the engine
    /// took but failed to make durable may or may not be there). Fails while the fault lasts.
    fn reopen(&self) -> Result<(), BackendError> {
        Ok(())
    }
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
    /// The open database; `None` only while [`Backend::reopen`] runs or after it failed.
    open: RwLock<Option<SledOpen>>,
    path: PathBuf,
    cache_capacity_bytes: u64,
    /// Blob files (sled's out-of-line storage for large pages) already fdatasync'ed.
    synced_blobs: std::sync::Mutex<std::collections::BTreeSet<std::ffi::OsString>>,
}

/// One opening of the database.
struct SledOpen {
    db: sled::Db,
    tree: sled::Tree,
    data_file: File,
}

impl SledBackend {
    /// Opens (or creates) a sled database in `path`.
    pub fn open(path: &Path, cache_capacity_bytes: u64) -> Result<SledBackend, BackendError> {
        let open = SledOpen::open(path, cache_capacity_bytes)?;
        Ok(SledBackend {
            open: RwLock::new(Some(open)),
            path: path.to_path_buf(),
            cache_capacity_bytes,
            synced_blobs: Default::default(),
        })
    }

    /// The open tree (cheap to clone), or why there is none.
    fn tree(&self) -> Result<sled::Tree, BackendError> {
        match &*self.open.read().expect("sled backend lock") {
            Some(o) => Ok(o.tree.clone()),
            None => Err(closed()),
        }
    }
}

impl SledOpen {
    fn open(path: &Path, cache_capacity_bytes: u64) -> Result<SledOpen, BackendError> {
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
        Ok(SledOpen { db, tree, data_file })
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

/// The error of a database closed by a failed reopen.
fn closed() -> BackendError {
    BackendError::Engine("the database is closed after a storage failure".into())
}

/// An iterator that yields one error.
fn failed_iter(e: BackendError) -> KvIter {
    Box::new(std::iter::once(Err(e)))
}

impl Backend for SledBackend {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        Ok(self.tree()?.get(key).map_err(sled_error)?.map(|v| v.to_vec()))
    }
    fn range(&self, start: &[u8], end: &[u8]) -> KvIter {
        match self.tree() {
            Ok(t) => sled_iter(t.range(start.to_vec()..end.to_vec())),
            Err(e) => failed_iter(e),
        }
    }
    fn range_rev(&self, start: &[u8], end: &[u8]) -> KvIter {
        match self.tree() {
            Ok(t) => sled_iter(t.range(start.to_vec()..end.to_vec()).rev()),
            Err(e) => failed_iter(e),
        }
    }
    fn apply(&self, batch: WriteBatch) -> Result<(), BackendError> {
        let mut b = sled::Batch::default();
        for (k, v) in batch.ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.tree()?.apply_batch(b).map_err(sled_error)
    }
    fn flush(&self, sync_data: bool) -> Result<(), BackendError> {
        {
            let open = self.open.read().expect("sled backend lock");
            let Some(o) = &*open else { return Err(closed()) };
            o.db.flush().map_err(sled_error)?;
            if sync_data {
                o.data_file.sync_data().map_err(|source| BackendError::Io {
                    what: format!("fdatasync {}", self.path.join("db").display()),
                    source,
                })?;
            }
        }
        if sync_data {
            self.sync_new_blobs()?;
        }
        Ok(())
    }
    fn path(&self) -> Option<&Path> {
        Some(&self.path)
    }
    /// Closes the database (sled stops at its first I/O error and stays stopped) and opens it
    /// again from disk, as after a crash: what it recovers is every batch that reached its log
    /// whole, so nothing flushed before is lost. Readers still holding the old opening's
    /// iterators keep its file lock; the open waits up to 5 s for them, then fails (the store
    /// tries again later).
    fn reopen(&self) -> Result<(), BackendError> {
        let mut open = self.open.write().expect("sled backend lock");
        // Dropped before the new opening: sled holds a file lock until then.
        drop(open.take());
        self.synced_blobs.lock().expect("blob set lock").clear();
        *open = Some(SledOpen::open(&self.path, self.cache_capacity_bytes)?);
        Ok(())
    }
}

/// Everything in memory; for tests and benchmarks of the logic alone. Not durable.
#[derive(Default)]
pub struct MemoryBackend {
    map: Arc<RwLock<BTreeMap<Vec<u8>, Vec<u8>>>>,
}

impl MemoryBackend {
    /// An empty in-memory backend.
    pub fn new() -> MemoryBackend {
        MemoryBackend::default()
    }

    fn collect(&self, start: &[u8], end: &[u8], rev: bool) -> KvIter {
        Box::new(MemoryIter {
            map: self.map.clone(),
            low: Bound::Included(start.to_vec()),
            high: Bound::Excluded(end.to_vec()),
            rev,
            buffer: std::collections::VecDeque::new(),
            done: start >= end,
        })
    }
}

/// A range of a [`MemoryBackend`], read a few keys at a time (a read never copies more of the
/// map than it consumes).
struct MemoryIter {
    map: Arc<RwLock<BTreeMap<Vec<u8>, Vec<u8>>>>,
    low: Bound<Vec<u8>>,
    high: Bound<Vec<u8>>,
    rev: bool,
    buffer: std::collections::VecDeque<(Vec<u8>, Vec<u8>)>,
    done: bool,
}

/// Keys a [`MemoryIter`] copies per lock.
const MEMORY_ITER_CHUNK: usize = 64;

impl Iterator for MemoryIter {
    type Item = Result<(Vec<u8>, Vec<u8>), BackendError>;

    fn next(&mut self) -> Option<Self::Item> {
        if self.buffer.is_empty() && !self.done {
            let map = self.map.read().expect("memory backend lock");
            let range = map.range((self.low.clone(), self.high.clone()));
            let chunk: Vec<_> = if self.rev {
                range.rev().take(MEMORY_ITER_CHUNK).map(|(k, v)| (k.clone(), v.clone())).collect()
            } else {
                range.take(MEMORY_ITER_CHUNK).map(|(k, v)| (k.clone(), v.clone())).collect()
            };
            self.done = chunk.len() < MEMORY_ITER_CHUNK;
            if let Some((last, _)) = chunk.last() {
                if self.rev {
                    self.high = Bound::Excluded(last.clone());
                } else {
                    self.low = Bound::Excluded(last.clone());
                }
            }
            self.buffer.extend(chunk);
        }
        self.buffer.pop_front().map(Ok)
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
        let copy = || MemoryBackend { map: Arc::new(RwLock::new(durable.clone())) };
        PowerLossBackend { live: copy(), durable: copy(), ..Default::default() }
    }
}

/// The error of an injected failure of `what`.
fn injected_io(what: &str) -> BackendError {
    BackendError::Io { what: format!("{what} (injected)"), source: std::io::Error::other("injected I/O error") }
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
    /// Loses what was not flushed, as the worst case of a reopen after a failed flush; fails
    /// while flushes are set to fail (the disk is still broken).
    fn reopen(&self) -> Result<(), BackendError> {
        if self.failing_flushes.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            return Err(injected_io("reopen"));
        }
        let mut unflushed = self.unflushed.lock().expect("unflushed lock");
        let durable = self.durable.map.read().expect("memory backend lock").clone();
        *self.live.map.write().expect("memory backend lock") = durable;
        unflushed.clear();
        Ok(())
    }
    fn flush(&self, _sync_data: bool) -> Result<(), BackendError> {
        let failing = &self.failing_flushes;
        if failing.load(std::sync::atomic::Ordering::SeqCst) > 0 {
            failing.fetch_sub(1, std::sync::atomic::Ordering::SeqCst);
            return Err(injected_io("flush"));
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

/// An operation [`FaultyBackend`] can fail.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultOp {
    /// Applying a batch (the write reaches nothing).
    Write,
    /// The engine's flush (nothing of it is known to be durable).
    Flush,
    /// The fdatasync after the engine's flush (the engine wrote its log; whether the drive
    /// kept it is unknown).
    Sync,
}

/// The error an injected fault returns, as the kernel would.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FaultError {
    /// EIO: the device failed the operation.
    Eio,
    /// ENOSPC: no space left on the device.
    Enospc,
}

impl FaultError {
    fn io(self) -> std::io::Error {
        // The Linux numbers (EIO is 5 everywhere; ENOSPC is 28 on Linux and the BSDs).
        std::io::Error::from_raw_os_error(match self {
            FaultError::Eio => 5,
            FaultError::Enospc => 28,
        })
    }
}

/// A fault: which operation fails, with which error, how many more times (`None`: until
/// [`FaultyBackend::clear`]).
#[derive(Debug, Clone)]
struct Fault {
    op: FaultOp,
    error: FaultError,
    remaining: Option<u64>,
}

/// Wraps a backend and fails chosen writes, flushes and fsyncs with a chosen error (EIO,
/// ENOSPC), for tests of what the store does below its seam. While a lasting fault is set,
/// [`Backend::reopen`] fails too, as reopening a full or broken disk would.
pub struct FaultyBackend<B: Backend> {
    inner: B,
    faults: std::sync::Mutex<Vec<Fault>>,
    injected: std::sync::atomic::AtomicU64,
}

impl<B: Backend> FaultyBackend<B> {
    /// `inner`, with no fault set.
    pub fn new(inner: B) -> FaultyBackend<B> {
        FaultyBackend { inner, faults: Default::default(), injected: Default::default() }
    }

    /// The wrapped backend.
    pub fn inner(&self) -> &B {
        &self.inner
    }

    /// Fails every `op` with `error` until [`FaultyBackend::clear`].
    pub fn fail(&self, op: FaultOp, error: FaultError) {
        self.faults.lock().expect("faults lock").push(Fault { op, error, remaining: None });
    }

    /// Fails the next `n` (at least 1) of `op` with `error`.
    pub fn fail_next(&self, op: FaultOp, error: FaultError, n: u64) {
        self.faults.lock().expect("faults lock").push(Fault { op, error, remaining: Some(n.max(1)) });
    }

    /// Removes every fault: the disk works again.
    pub fn clear(&self) {
        self.faults.lock().expect("faults lock").clear();
    }

    /// How many operations failed by injection so far.
    pub fn injected(&self) -> u64 {
        self.injected.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// The injected error for `op`, if one is due.
    fn check(&self, op: FaultOp) -> Result<(), BackendError> {
        let mut faults = self.faults.lock().expect("faults lock");
        let Some(i) = faults.iter().position(|f| f.op == op) else { return Ok(()) };
        let error = faults[i].error;
        if let Some(n) = &mut faults[i].remaining {
            *n -= 1;
            if *n == 0 {
                faults.remove(i);
            }
        }
        self.injected.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
        Err(BackendError::Io { what: format!("{op:?} (injected)"), source: error.io() })
    }
}

impl<B: Backend> Backend for FaultyBackend<B> {
    fn get(&self, key: &[u8]) -> Result<Option<Vec<u8>>, BackendError> {
        self.inner.get(key)
    }
    fn range(&self, start: &[u8], end: &[u8]) -> KvIter {
        self.inner.range(start, end)
    }
    fn range_rev(&self, start: &[u8], end: &[u8]) -> KvIter {
        self.inner.range_rev(start, end)
    }
    fn apply(&self, batch: WriteBatch) -> Result<(), BackendError> {
        self.check(FaultOp::Write)?;
        self.inner.apply(batch)
    }
    fn flush(&self, sync_data: bool) -> Result<(), BackendError> {
        self.check(FaultOp::Flush)?;
        if !sync_data {
            return self.inner.flush(false);
        }
        // The engine's flush goes through; then the fsync fails.
        if self.faults.lock().expect("faults lock").iter().any(|f| f.op == FaultOp::Sync) {
            self.inner.flush(false)?;
            self.check(FaultOp::Sync)?;
        }
        self.inner.flush(true)
    }
    fn path(&self) -> Option<&Path> {
        self.inner.path()
    }
    fn reopen(&self) -> Result<(), BackendError> {
        let lasting = self.faults.lock().expect("faults lock").iter().find(|f| f.remaining.is_none()).map(|f| f.error);
        if let Some(error) = lasting {
            self.injected.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            return Err(BackendError::Io { what: "reopen (injected)".into(), source: error.io() });
        }
        self.inner.reopen()
    }
}
