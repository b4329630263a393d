//! The QUIC endpoint on loopback with a real quinn client: handshake, commands, receipts and
//! bad input.

use std::sync::Arc;
use std::time::Duration;

use ed25519_dalek::SigningKey;
use quinn::crypto::rustls::QuicClientConfig;
use theta_client::frame::{self, Decoder};
use theta_client::handshake::{ClientHandshake, ClientStep, CloseCode, HandshakeError};
use theta_gateway::quic::{ALPN, COMMAND_ERROR_BASE, load_or_create_identity, serve_quic};
use theta_schemas::components::Name;
use theta_schemas::ids::ComponentMeta;
use theta_schemas::signing::author_key;
use theta_schemas::wire::Capabilities;
use theta_schemas::{Command, CommandBody, ComponentId, Envelope, Message, Role, SessionId, Shape};
use theta_store::{Store, StoreConfig};

const S: SessionId = SessionId([0x44; 16]);

fn sign(key: &SigningKey, lamport: u64, entity: u64, component: ComponentId, command: Command) -> Vec<u8> {
    let body = CommandBody {
        session: S,
        author: author_key(key),
        lamport,
        nonce: lamport * 1_000 + entity,
        wall_clock_ms: 0,
        entity,
        component,
        base_version: 0,
        command,
    };
    Envelope::sign(&body, key).encode()
}

/// A store in `dir` holding session `S`: created by the owner (seq 1), an editor granted at
/// seq 2 and a viewer at seq 3. Returns the store and the three keys.
fn session_with_editor_and_viewer(dir: &std::path::Path) -> (Arc<Store>, SigningKey, SigningKey, SigningKey) {
    let config = StoreConfig { rate_per_sec: 1e6, rate_burst: 1e6, ..StoreConfig::default() };
    let store = Arc::new(Store::open(dir.join("data"), config).unwrap());
    let (owner, editor, viewer) =
        (SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32]), SigningKey::from_bytes(&[3; 32]));
    let n = ComponentId::NONE;
    store.append(&sign(&owner, 1, 0, n, Command::CreateSession { name: "quic".into() })).unwrap();
    store.append(&sign(&owner, 2, 0, n, Command::GrantRole { key: author_key(&editor), role: Role::Editor })).unwrap();
    store.append(&sign(&owner, 3, 0, n, Command::GrantRole { key: author_key(&viewer), role: Role::Viewer })).unwrap();
    (store, owner, editor, viewer)
}

fn client(cert: rustls::pki_types::CertificateDer<'static>) -> quinn::Endpoint {
    let mut roots = rustls::RootCertStore::empty();
    roots.add(cert).unwrap();
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut tls = rustls::ClientConfig::builder_with_provider(provider)
        .with_protocol_versions(&[&rustls::version::TLS13])
        .unwrap()
        .with_root_certificates(roots)
        .with_no_client_auth();
    tls.alpn_protocols = vec![ALPN.to_vec()];
    let mut ep = quinn::Endpoint::client("127.0.0.1:0".parse().unwrap()).unwrap();
    ep.set_default_client_config(quinn::ClientConfig::new(Arc::new(QuicClientConfig::try_from(tls).unwrap())));
    ep
}

struct Control {
    tx: quinn::SendStream,
    rx: quinn::RecvStream,
    dec: Decoder,
    pending: std::collections::VecDeque<Vec<u8>>,
}

impl Control {
    async fn send(&mut self, payload: &[u8]) {
        self.tx.write_all(&frame::encode(payload)).await.unwrap();
    }
    async fn recv(&mut self) -> Option<Vec<u8>> {
        loop {
            if let Some(f) = self.pending.pop_front() {
                return Some(f);
            }
            let chunk = tokio::time::timeout(Duration::from_secs(10), self.rx.read_chunk(1 << 16, true))
                .await
                .expect("timely")
                .ok()??;
            self.pending.extend(self.dec.push(&chunk.bytes).unwrap());
        }
    }
}

async fn connect(ep: &quinn::Endpoint, addr: std::net::SocketAddr) -> (quinn::Connection, Control) {
    let conn = ep.connect(addr, "localhost").unwrap().await.unwrap();
    let (tx, rx) = conn.open_bi().await.unwrap();
    (conn, Control { tx, rx, dec: Decoder::new(1 << 16), pending: Default::default() })
}

async fn handshake(ctl: &mut Control, key: &SigningKey) -> Result<theta_schemas::wire::Welcome, HandshakeError> {
    let (mut hs, hello) = ClientHandshake::start(key.clone(), S, Capabilities::default(), rand::random());
    ctl.send(&hello).await;
    loop {
        let msg = ctl.recv().await.expect("server answers");
        match hs.on_message(&msg)? {
            ClientStep::Send(p) => ctl.send(&p).await,
            ClientStep::Done(w) => return Ok(w),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn handshake_commands_and_bad_input_over_quic() {
    let dir = tempfile::tempdir().unwrap();
    let (store, owner, editor, viewer) = session_with_editor_and_viewer(dir.path());
    let n = ComponentId::NONE;
    store
        .append(&sign(&owner, 4, 1, n, Command::CreateEntity { shape: Shape::Cube, name: "c".into(), parent: 0 }))
        .unwrap();

    let identity = load_or_create_identity(dir.path()).unwrap();
    let cert = identity.cert.clone();
    // The identity is kept: a second load gives the same fingerprint.
    assert_eq!(load_or_create_identity(dir.path()).unwrap().fingerprint, identity.fingerprint);
    let server = serve_quic(store.clone(), "127.0.0.1:0".parse().unwrap(), identity, 2_000).unwrap();
    let ep = client(cert);

    // An editor: handshake, then commands on a uni stream, receipts on control.
    let (conn, mut ctl) = connect(&ep, server.addr).await;
    let w = handshake(&mut ctl, &editor).await.unwrap();
    assert_eq!((w.role, w.head_seq, w.session), (Role::Editor, 4, S));
    let mut cmds = conn.open_uni().await.unwrap();
    for l in 10..20u64 {
        cmds.write_all(&frame::encode(&sign(&editor, l, 1, Name::id(), Command::Rename { name: format!("n{l}") })))
            .await
            .unwrap();
    }
    let mut seqs = Vec::new();
    while seqs.len() < 10 {
        match Message::decode(&ctl.recv().await.unwrap()).unwrap() {
            Message::CommandReceipt(r) => seqs.push(r.seq),
            other => panic!("{other:?}"),
        }
    }
    assert_eq!(seqs, (5..=14).collect::<Vec<_>>());
    assert_eq!(store.head(&S).unwrap().seq, 14);

    // Heartbeats on the control stream are echoed (round-trip measurement).
    let hb = theta_schemas::wire::Heartbeat { sequence: 1, sent_at_us: 123_456, echo_us: 0 };
    ctl.send(&Message::Heartbeat(hb).encode()).await;
    match Message::decode(&ctl.recv().await.unwrap()).unwrap() {
        Message::Heartbeat(h) => assert_eq!((h.sequence, h.echo_us), (1, 123_456)),
        other => panic!("{other:?}"),
    }

    // A viewer's command stream: a typed error per command, the same store check and counter.
    let (vconn, mut vctl) = connect(&ep, server.addr).await;
    assert_eq!(handshake(&mut vctl, &viewer).await.unwrap().role, Role::Viewer);
    let mut vcmds = vconn.open_uni().await.unwrap();
    vcmds
        .write_all(&frame::encode(&sign(&viewer, 30, 1, Name::id(), Command::Rename { name: "no".into() })))
        .await
        .unwrap();
    match Message::decode(&vctl.recv().await.unwrap()).unwrap() {
        Message::Error(e) => {
            assert_eq!(e.code, COMMAND_ERROR_BASE + theta_store::RejectionCode::Permission as u32);
            assert_eq!(e.nonce, 30_001);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(store.metrics().counter("permission_denials"), Some(1));

    // A key without a role, and a stranger's session: refused after the proof.
    let (_, mut sctl) = connect(&ep, server.addr).await;
    let e = handshake(&mut sctl, &SigningKey::from_bytes(&[9; 32])).await.unwrap_err();
    assert!(matches!(e, HandshakeError::Refused { code, .. } if code == CloseCode::NoRole as u32), "{e:?}");

    // Garbage and a header claiming 4 GiB close the connection; others keep working.
    let (gconn, mut gctl) = connect(&ep, server.addr).await;
    gctl.tx.write_all(&u32::MAX.to_le_bytes()).await.unwrap();
    let closed = tokio::time::timeout(Duration::from_secs(5), gconn.closed()).await.expect("closed");
    assert!(
        matches!(closed, quinn::ConnectionError::ApplicationClosed(ref c) if c.error_code == 7u32.into()),
        "{closed:?}"
    );
    cmds.write_all(&frame::encode(&sign(&editor, 40, 1, Name::id(), Command::Rename { name: "still".into() })))
        .await
        .unwrap();
    assert!(matches!(Message::decode(&ctl.recv().await.unwrap()).unwrap(), Message::CommandReceipt(r) if r.seq == 15));
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewers_mirror_the_live_projection_over_quic() {
    use theta_projector::Assembler;
    use theta_schemas::components::Transform;

    let dir = tempfile::tempdir().unwrap();
    let (store, owner, editor, viewer) = session_with_editor_and_viewer(dir.path());
    let n = ComponentId::NONE;
    for e in 1..=3u64 {
        store
            .append(&sign(
                &owner,
                3 + e,
                e,
                n,
                Command::CreateEntity { shape: Shape::Sphere, name: format!("s{e}"), parent: 0 },
            ))
            .unwrap();
    }
    let identity = load_or_create_identity(dir.path()).unwrap();
    let cert = identity.cert.clone();
    let server = serve_quic(store.clone(), "127.0.0.1:0".parse().unwrap(), identity, 2_000).unwrap();
    let ep = client(cert);

    // Three viewers join; each gets the snapshot on the replication stream.
    let mut mirrors = Vec::new();
    for _ in 0..3 {
        let (conn, mut ctl) = connect(&ep, server.addr).await;
        handshake(&mut ctl, &viewer).await.unwrap();
        let mut rep = conn.accept_uni().await.unwrap();
        let mut dec = Decoder::new(1 << 16);
        let mut asm = Assembler::new();
        let mirror = loop {
            let chunk = tokio::time::timeout(Duration::from_secs(10), rep.read_chunk(1 << 16, true))
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            let mut done = None;
            for f in dec.push(&chunk.bytes).unwrap() {
                let Message::SnapshotChunk(c) = Message::decode(&f).unwrap() else { panic!("snapshot first") };
                done = asm.add(c).unwrap().or(done);
            }
            if let Some(m) = done {
                break m;
            }
        };
        assert_eq!(mirror.seq(), 6);
        mirrors.push((conn, ctl, rep, dec, mirror));
    }

    // An editor moves things; every viewer's mirror follows through deltas.
    let (econn, mut ectl) = connect(&ep, server.addr).await;
    handshake(&mut ectl, &editor).await.unwrap();
    let mut cmds = econn.open_uni().await.unwrap();
    for l in 10..60u64 {
        let t = Transform { translation: [l as f32, 0.0, 0.0], ..Transform::default() };
        cmds.write_all(&frame::encode(&sign(&editor, l, 1 + l % 3, Transform::id(), Command::SetTransform(t))))
            .await
            .unwrap();
    }
    let mut receipts = 0;
    while receipts < 50 {
        if let Message::CommandReceipt(_) = Message::decode(&ectl.recv().await.unwrap()).unwrap() {
            receipts += 1;
        }
    }
    let head = store.head(&S).unwrap().seq;
    assert_eq!(head, 56);
    let want = theta_gateway::history::project(&store, &S, head).unwrap().projection.state_hash();
    for (_, _, rep, dec, mirror) in &mut mirrors {
        while mirror.seq() < head {
            let chunk = tokio::time::timeout(Duration::from_secs(10), rep.read_chunk(1 << 16, true))
                .await
                .unwrap()
                .unwrap()
                .unwrap();
            for f in dec.push(&chunk.bytes).unwrap() {
                let Message::Delta(d) = Message::decode(&f).unwrap() else { panic!("deltas after the snapshot") };
                mirror.apply_delta(&d).unwrap();
            }
        }
        assert_eq!(mirror.state_hash(), want, "mirror equals the server's projection at seq {head}");
    }
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_slow_viewer_is_resynced_without_slowing_the_others() {
    use theta_projector::Assembler;

    let dir = tempfile::tempdir().unwrap();
    let store = Arc::new(
        Store::open(
            dir.path().join("data"),
            StoreConfig { rate_per_sec: 1e6, rate_burst: 1e6, ..StoreConfig::default() },
        )
        .unwrap(),
    );
    let owner = SigningKey::from_bytes(&[1; 32]);
    let viewer = SigningKey::from_bytes(&[3; 32]);
    let n = ComponentId::NONE;
    store.append(&sign(&owner, 1, 0, n, Command::CreateSession { name: "slow".into() })).unwrap();
    store.append(&sign(&owner, 2, 0, n, Command::GrantRole { key: author_key(&viewer), role: Role::Viewer })).unwrap();
    store
        .append(&sign(&owner, 3, 1, n, Command::CreateEntity { shape: Shape::Cube, name: "c".into(), parent: 0 }))
        .unwrap();
    let identity = load_or_create_identity(dir.path()).unwrap();
    let cert = identity.cert.clone();
    let server = serve_quic(store.clone(), "127.0.0.1:0".parse().unwrap(), identity, 2_000).unwrap();
    let ep = client(cert);
    // The slow viewer handshakes and then never reads its replication stream.
    let (slow_conn, mut slow_ctl) = connect(&ep, server.addr).await;
    handshake(&mut slow_ctl, &viewer).await.unwrap();
    let mut slow_rep = slow_conn.accept_uni().await.unwrap();
    // A fast viewer reads everything as it comes.
    let (fast_conn, mut fast_ctl) = connect(&ep, server.addr).await;
    handshake(&mut fast_ctl, &viewer).await.unwrap();
    let mut fast_rep = fast_conn.accept_uni().await.unwrap();
    let fast = tokio::spawn(async move {
        let (mut dec, mut asm, mut mirror) =
            (Decoder::new(1 << 16), Assembler::new(), None::<theta_projector::Projection>);
        loop {
            let Ok(Ok(Some(chunk))) =
                tokio::time::timeout(Duration::from_secs(30), fast_rep.read_chunk(1 << 16, true)).await
            else {
                break;
            };
            for f in dec.push(&chunk.bytes).unwrap() {
                match Message::decode(&f).unwrap() {
                    Message::SnapshotChunk(c) => {
                        if let Some(m) = asm.add(c).unwrap() {
                            mirror = Some(m);
                        }
                    }
                    Message::Delta(d) => mirror.as_mut().expect("snapshot first").apply_delta(&d).unwrap(),
                    other => panic!("{other:?}"),
                }
            }
            if mirror.as_ref().is_some_and(|m| m.seq() == 3 + 1_500) {
                return mirror.unwrap().state_hash();
            }
        }
        panic!("the fast viewer did not reach the head");
    });
    // 1,500 commits one at a time (one delta each) with 8 KB names: far more than the slow
    // viewer's queue and QUIC's flow-control windows hold.
    for l in 10..1_510u64 {
        store
            .append(&sign(&owner, l, 1, Name::id(), Command::Rename { name: "x".repeat(8_000) + &l.to_string() }))
            .unwrap();
    }
    let want = theta_gateway::history::project(&store, &S, 1_503).unwrap().projection.state_hash();
    assert_eq!(fast.await.unwrap(), want, "the fast viewer kept up and converged");
    assert!(server.hub.resyncs.load(std::sync::atomic::Ordering::Relaxed) >= 1, "the slow viewer was resynced");
    // Reading now, the slow viewer finds a fresh snapshot after the deltas it had room for.
    let (mut dec, mut saw_snapshot_after_delta, mut saw_delta) = (Decoder::new(1 << 16), false, false);
    let mut asm = Assembler::new();
    let mut last_mirror = None;
    while !saw_snapshot_after_delta || last_mirror.is_none() {
        let chunk = tokio::time::timeout(Duration::from_secs(10), slow_rep.read_chunk(1 << 16, true))
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        for f in dec.push(&chunk.bytes).unwrap() {
            match Message::decode(&f).unwrap() {
                Message::Delta(_) => saw_delta = true,
                Message::SnapshotChunk(c) => {
                    if saw_delta {
                        saw_snapshot_after_delta = true;
                        if c.chunk_index == 0 {
                            asm = Assembler::new();
                        }
                        if let Some(m) = asm.add(c).unwrap() {
                            last_mirror = Some(m);
                        }
                    }
                }
                other => panic!("{other:?}"),
            }
        }
    }
    let m = last_mirror.unwrap();
    assert_eq!(m.state_hash(), theta_gateway::history::project(&store, &S, m.seq()).unwrap().projection.state_hash());
    server.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_rust_client_pins_submits_and_mirrors() {
    use theta_client::quic::{Client, Event, Options, Trust};
    use theta_schemas::components::Transform;

    let dir = tempfile::tempdir().unwrap();
    let (store, _owner, editor, viewer) = session_with_editor_and_viewer(dir.path());
    let n = ComponentId::NONE;
    let identity = load_or_create_identity(dir.path()).unwrap();
    let server = serve_quic(store.clone(), "127.0.0.1:0".parse().unwrap(), identity, 2_000).unwrap();
    let mut pin = [0u8; 32];
    hex::decode_to_slice(&server.fingerprint, &mut pin).unwrap();
    let options = |key: &SigningKey, trust: Trust| Options {
        server: server.addr,
        server_name: "localhost".into(),
        trust,
        key: key.clone(),
        session: S,
        capabilities: Capabilities::default(),
    };
    // A wrong pin fails to connect.
    assert!(Client::connect(options(&editor, Trust::Fingerprint([0; 32]))).await.is_err());

    let mut ed = Client::connect(options(&editor, Trust::Fingerprint(pin))).await.unwrap();
    let mut vw = Client::connect(options(&viewer, Trust::Fingerprint(pin))).await.unwrap();
    assert_eq!((ed.welcome().role, vw.welcome().role), (Role::Editor, Role::Viewer));
    assert_eq!(ed.welcome().lamport_clock, 3);

    // The editor builds something; Lamport timestamps and nonces are automatic.
    let mut nonces = Vec::new();
    nonces.push(
        ed.submit(1, n, 0, Command::CreateEntity { shape: Shape::Cone, name: "cone".into(), parent: 0 }).await.unwrap(),
    );
    for i in 0..20 {
        let t = Transform { translation: [i as f32, 1.0, 0.0], ..Transform::default() };
        nonces.push(ed.submit(1, Transform::id(), 0, Command::SetTransform(t)).await.unwrap());
    }
    let mut receipts = Vec::new();
    while receipts.len() < nonces.len() {
        match tokio::time::timeout(Duration::from_secs(10), ed.next_event()).await.unwrap().unwrap() {
            Event::Receipt(r) => receipts.push(r.nonce),
            Event::Rejected(e) => panic!("rejected: {e:?}"),
            _ => {}
        }
    }
    assert_eq!(receipts, nonces, "receipts matched by nonce, in order");
    // A viewer's submission is rejected with the permission code, matched by its nonce.
    let nonce = vw.submit(1, Transform::id(), 0, Command::SetTransform(Transform::default())).await.unwrap();
    let head = store.head(&S).unwrap().seq;
    let want = theta_gateway::history::project(&store, &S, head).unwrap().projection.state_hash();
    let mut rejected = false;
    loop {
        match tokio::time::timeout(Duration::from_secs(10), vw.next_event()).await.unwrap().unwrap() {
            Event::Rejected(e) => {
                assert_eq!((e.nonce, e.code), (nonce, 100 + theta_store::RejectionCode::Permission as u32));
                rejected = true;
            }
            Event::Synced { seq, .. } if seq == head && rejected => break,
            _ => {}
        }
        if rejected && vw.mirror().is_some_and(|m| m.seq() == head) {
            break;
        }
    }
    assert_eq!(vw.mirror().unwrap().state_hash(), want);
    // Heartbeats measure the round trip.
    vw.heartbeat().await.unwrap();
    loop {
        if let Event::Rtt(rtt) = tokio::time::timeout(Duration::from_secs(10), vw.next_event()).await.unwrap().unwrap()
        {
            assert!(rtt < Duration::from_secs(5));
            break;
        }
    }
    server.shutdown().await;
}
