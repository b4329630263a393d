//! Live projections and fan-out: one thread per watched session folds new entries into its
//! projection and sends each viewer the snapshot, then coalesced deltas, through a bounded
//! queue. The append path never waits on a viewer: a viewer whose queue is full is marked for
//! a resync (a fresh snapshot once its queue has room) and counted.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering::Relaxed};
use std::sync::mpsc as std_mpsc;
use std::sync::{Arc, Mutex};

use theta_projector::{DEFAULT_CHUNK_BYTES, Projection};
use theta_schemas::{Message, SessionId};
use theta_store::{ReadError, Store};
use tokio::sync::mpsc;

use crate::history::project;

/// Frames queued per viewer beyond its snapshot.
pub const VIEWER_QUEUE_FRAMES: usize = 256;

enum Cmd {
    Commit,
    Subscribe(mpsc::Sender<Vec<u8>>),
}

struct Slot {
    tx: mpsc::Sender<Vec<u8>>,
    described: bool,
    resync: bool,
}

/// The live projections of watched sessions.
pub struct LiveHub {
    store: Arc<Store>,
    sessions: Mutex<HashMap<SessionId, std_mpsc::Sender<Cmd>>>,
    /// Viewers resynced with a fresh snapshot because they fell behind.
    pub resyncs: AtomicU64,
    /// Deltas sent to viewers.
    pub deltas_sent: AtomicU64,
}

impl LiveHub {
    /// A hub over `store`; it follows commits through a store listener.
    pub fn new(store: Arc<Store>) -> Arc<LiveHub> {
        let hub = Arc::new(LiveHub {
            store: store.clone(),
            sessions: Mutex::new(HashMap::new()),
            resyncs: AtomicU64::new(0),
            deltas_sent: AtomicU64::new(0),
        });
        let weak = Arc::downgrade(&hub);
        store.add_commit_listener(move |heads| {
            let Some(hub) = weak.upgrade() else { return };
            let sessions = hub.sessions.lock().expect("live sessions lock");
            for h in heads {
                if let Some(tx) = sessions.get(&h.session) {
                    let _ = tx.send(Cmd::Commit);
                }
            }
        });
        hub
    }

    /// Subscribes a viewer to a session: frame payloads (snapshot chunks, then deltas) arrive
    /// on the returned queue.
    pub fn subscribe(self: &Arc<Self>, session: SessionId) -> Result<mpsc::Receiver<Vec<u8>>, ReadError> {
        self.store.head(&session)?;
        let (tx, rx) = mpsc::channel(VIEWER_QUEUE_FRAMES);
        let mut sessions = self.sessions.lock().expect("live sessions lock");
        let sender = sessions.entry(session).or_insert_with(|| {
            let (cmd_tx, cmd_rx) = std_mpsc::channel();
            let hub = self.clone();
            std::thread::Builder::new()
                .name("theta-live".into())
                .spawn(move || hub.run(session, cmd_rx))
                .expect("spawn live session thread");
            cmd_tx
        });
        let _ = sender.send(Cmd::Subscribe(tx));
        Ok(rx)
    }

    fn run(&self, session: SessionId, rx: std_mpsc::Receiver<Cmd>) {
        let Ok(head) = self.store.head(&session) else { return };
        let Ok(opened) = project(&self.store, &session, head.seq) else { return };
        let mut p: Projection = opened.projection;
        let _ = p.take_delta(false);
        let mut viewers: Vec<Slot> = Vec::new();
        loop {
            // While a viewer waits for a resync, retry it every 50 ms even without commits.
            let first = if viewers.iter().any(|v| v.resync) {
                match rx.recv_timeout(std::time::Duration::from_millis(50)) {
                    Ok(c) => Some(c),
                    Err(std_mpsc::RecvTimeoutError::Timeout) => None,
                    Err(std_mpsc::RecvTimeoutError::Disconnected) => return,
                }
            } else {
                match rx.recv() {
                    Ok(c) => Some(c),
                    Err(_) => return,
                }
            };
            let mut commits = false;
            for cmd in first.into_iter().chain(rx.try_iter()) {
                match cmd {
                    Cmd::Commit => commits = true,
                    Cmd::Subscribe(tx) => {
                        let mut slot = Slot { tx, described: false, resync: true };
                        self.try_snapshot(&p, &mut slot);
                        viewers.push(slot);
                    }
                }
            }
            if commits {
                let Ok(head) = self.store.head(&session) else { return };
                if head.seq > p.seq() {
                    let Ok(entries) = self.store.read_range(&session, p.seq() + 1, head.seq) else { return };
                    for e in entries {
                        let Ok(e) = e else { return };
                        if p.apply_entry(&e).is_err() {
                            return;
                        }
                    }
                    let delta = p.take_delta(false);
                    let plain = Message::Delta(delta.clone()).encode();
                    let mut described = None;
                    for v in &mut viewers {
                        if v.resync {
                            continue;
                        }
                        let payload = if v.described {
                            plain.clone()
                        } else {
                            described
                                .get_or_insert_with(|| {
                                    let mut d = delta.clone();
                                    d.descriptors = theta_projector::wire_descriptors();
                                    Message::Delta(d).encode()
                                })
                                .clone()
                        };
                        match v.tx.try_send(payload) {
                            Ok(()) => {
                                v.described = true;
                                self.deltas_sent.fetch_add(1, Relaxed);
                            }
                            Err(mpsc::error::TrySendError::Full(_)) => {
                                v.resync = true;
                                self.resyncs.fetch_add(1, Relaxed);
                            }
                            Err(mpsc::error::TrySendError::Closed(_)) => {}
                        }
                    }
                }
            }
            viewers.retain(|v| !v.tx.is_closed());
            for v in viewers.iter_mut().filter(|v| v.resync) {
                self.try_snapshot(&p, v);
            }
        }
    }

    /// Sends a fresh snapshot if the viewer's queue has room for all of it.
    fn try_snapshot(&self, p: &Projection, v: &mut Slot) {
        // A snapshot has at least one chunk: skip building it while the queue is (nearly) full.
        if v.tx.capacity() < 2 {
            return;
        }
        let chunks = p.snapshot(DEFAULT_CHUNK_BYTES, None);
        if v.tx.capacity() < chunks.len() + 1 {
            return;
        }
        for c in chunks {
            if v.tx.try_send(Message::SnapshotChunk(c).encode()).is_err() {
                return;
            }
        }
        v.resync = false;
        v.described = false;
    }
}
