//! The gateway over WebRTC data channels on loopback, with the Rust client: the same handshake
//! and frames as QUIC, a viewer and an editor converging, QUIC-to-WebRTC fallback, and bad input.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use theta_client::quic::{Client, Event, Options, TransportChoice, Trust};
use theta_gateway::ServeConfig;
use theta_schemas::components::Transform;
use theta_schemas::ids::ComponentMeta;
use theta_schemas::signing::author_key;
use theta_schemas::wire::Capabilities;
use theta_schemas::{Command, ComponentId, Role, SessionId, Shape};
use theta_store::StoreConfig;

const S: SessionId = SessionId([0x57; 16]);

fn sign(key: &SigningKey, lamport: u64, command: Command) -> Vec<u8> {
    theta_testkit::envelope(key, S, lamport, lamport, 0, ComponentId::NONE, command)
}

async fn server(dir: &std::path::Path) -> (theta_gateway::Running, SigningKey, SigningKey) {
    server_with(dir, theta_gateway::peers::AddressConfig::default()).await
}

async fn server_with(
    dir: &std::path::Path,
    addresses: theta_gateway::peers::AddressConfig,
) -> (theta_gateway::Running, SigningKey, SigningKey) {
    server_timed(dir, addresses, ServeConfig::loopback(dir.join("data")).handshake_timeout_ms).await
}

async fn server_timed(
    dir: &std::path::Path,
    addresses: theta_gateway::peers::AddressConfig,
    handshake_timeout_ms: u64,
) -> (theta_gateway::Running, SigningKey, SigningKey) {
    let config = ServeConfig {
        addresses,
        handshake_timeout_ms,
        store: StoreConfig { rate_per_sec: 1e6, rate_burst: 1e6, ..StoreConfig::default() },
        ..ServeConfig::loopback(dir.join("data"))
    };
    let running = theta_gateway::start(config).await.unwrap();
    let (owner, editor, viewer) =
        (SigningKey::from_bytes(&[1; 32]), SigningKey::from_bytes(&[2; 32]), SigningKey::from_bytes(&[3; 32]));
    let store = running.store().clone();
    store.append(&sign(&owner, 1, Command::CreateSession { name: "webrtc".into() })).unwrap();
    store.append(&sign(&owner, 2, Command::GrantRole { key: author_key(&editor), role: Role::Editor })).unwrap();
    store.append(&sign(&owner, 3, Command::GrantRole { key: author_key(&viewer), role: Role::Viewer })).unwrap();
    (running, editor, viewer)
}

fn options(r: &theta_gateway::Running, key: &SigningKey, transport: TransportChoice) -> Options {
    let mut pin = [0u8; 32];
    hex::decode_to_slice(r.quic_fingerprint.as_ref().unwrap(), &mut pin).unwrap();
    Options {
        server: r.quic_addr.unwrap(),
        server_name: "localhost".into(),
        trust: Trust::Fingerprint(pin),
        key: key.clone(),
        session: S,
        capabilities: Capabilities {
            compression: vec!["zstd-stream".into()],
            interest_management: false,
            max_chunk_bytes: 0,
            datagrams: false,
            compact_deltas: false,
        },
        transport,
        webrtc_signal: r.webrtc_signal.clone(),
    }
}

async fn until_seq(c: &mut Client, seq: u64) {
    while c.mirror().is_none_or(|m| m.seq() < seq) {
        match tokio::time::timeout(Duration::from_secs(20), c.next_event()).await.expect("progress").unwrap() {
            Event::Resynced { reason } => panic!("resynced: {reason}"),
            _ => continue,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn viewer_and_editor_converge_over_webrtc() {
    let dir = tempfile::tempdir().unwrap();
    let (r, editor, viewer) = server(dir.path()).await;
    let mut v = Client::connect(options(&r, &viewer, TransportChoice::WebRtc)).await.unwrap();
    let mut e = Client::connect(options(&r, &editor, TransportChoice::WebRtc)).await.unwrap();
    assert_eq!((v.welcome().role, e.welcome().role), (Role::Viewer, Role::Editor));
    assert_eq!(v.telemetry().transport, "webrtc");
    // The editor builds and moves things; receipts come back over the control channel.
    e.submit(1, ComponentId::NONE, 0, Command::CreateEntity { shape: Shape::Sphere, name: "ball".into(), parent: 0 })
        .await
        .unwrap();
    for i in 0..50 {
        let t = Transform { translation: [i as f32 * 0.1, 1.0, 0.0], ..Transform::default() };
        e.submit(1, Transform::id(), 0, Command::SetTransform(t)).await.unwrap();
    }
    let mut receipts = 0;
    while receipts < 51 {
        match tokio::time::timeout(Duration::from_secs(20), e.next_event()).await.unwrap().unwrap() {
            Event::Receipt(_) => receipts += 1,
            Event::Rejected(x) => panic!("rejected: {x:?}"),
            _ => {}
        }
    }
    let head = r.store().head(&S).unwrap().seq;
    assert_eq!(head, 3 + 51);
    until_seq(&mut v, head).await;
    until_seq(&mut e, head).await;
    let want = theta_gateway::history::project(r.store(), &S, head).unwrap().projection.state_hash();
    assert_eq!(v.mirror().unwrap().state_hash(), want, "viewer mirror = server projection");
    assert_eq!(e.mirror().unwrap().state_hash(), want, "editor mirror = server projection");
    // A viewer-role command is refused with the store's code, as over QUIC.
    let nonce = v.submit(1, Transform::id(), 0, Command::SetTransform(Transform::default())).await.unwrap();
    loop {
        if let Event::Rejected(x) =
            tokio::time::timeout(Duration::from_secs(20), v.next_event()).await.unwrap().unwrap()
        {
            assert_eq!((x.nonce, x.code), (nonce, 100 + theta_store::RejectionCode::Permission as u32));
            break;
        }
    }
    // Metrics are tagged with the transport.
    let m = r.metrics_addr.unwrap();
    let text = http_get(m, "/metrics").await;
    assert!(text.contains("theta_webrtc_connections_total 2"), "{text}");
    assert!(text.contains("transport=\"webrtc\",role=\"viewer\""), "{text}");
    drop((v, e));
    r.shutdown().await;
}

/// A long stream of commands over WebRTC, each its own data-channel message: every one is
/// appended and answered, and the viewer follows (events of the channels each end only writes
/// to must not hold back the others).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_long_command_stream_over_webrtc_is_all_appended() {
    let dir = tempfile::tempdir().unwrap();
    let (r, editor, viewer) = server(dir.path()).await;
    let mut v = Client::connect(options(&r, &viewer, TransportChoice::WebRtc)).await.unwrap();
    let mut e = Client::connect(options(&r, &editor, TransportChoice::WebRtc)).await.unwrap();
    e.submit(1, ComponentId::NONE, 0, Command::CreateEntity { shape: Shape::Cube, name: "c".into(), parent: 0 })
        .await
        .unwrap();
    const N: usize = 1_500;
    let mut receipts = 0;
    for i in 0..N {
        let t = Transform { translation: [i as f32 * 0.01, 0.0, 0.0], ..Transform::default() };
        e.submit(1, Transform::id(), 0, Command::SetTransform(t)).await.unwrap();
        // Paced, one message at a time, and the events read as a client does.
        while let Ok(ev) = tokio::time::timeout(Duration::from_micros(500), e.next_event()).await {
            match ev.unwrap() {
                Event::Receipt(_) => receipts += 1,
                Event::Rejected(x) => panic!("rejected: {x:?}"),
                _ => {}
            }
        }
    }
    while receipts < N + 1 {
        match tokio::time::timeout(Duration::from_secs(20), e.next_event()).await {
            Ok(Ok(Event::Receipt(_))) => receipts += 1,
            Ok(Ok(Event::Rejected(x))) => panic!("rejected: {x:?}"),
            Ok(Ok(_)) => {}
            Ok(Err(x)) => panic!("editor: {x}"),
            Err(_) => {
                panic!("stalled: {receipts} of {} receipts, head at seq {}", N + 1, r.store().head(&S).unwrap().seq)
            }
        }
    }
    let head = r.store().head(&S).unwrap().seq;
    assert_eq!(head, 3 + 1 + N as u64);
    until_seq(&mut v, head).await;
    let want = theta_gateway::history::project(r.store(), &S, head).unwrap().projection.state_hash();
    assert_eq!(v.mirror().unwrap().state_hash(), want);
    drop((v, e));
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn auto_falls_back_to_webrtc_when_quic_cannot_connect() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _editor, viewer) = server(dir.path()).await;
    // A UDP port where nobody speaks QUIC.
    let dead = std::net::UdpSocket::bind("127.0.0.1:0").unwrap();
    let mut o = options(&r, &viewer, TransportChoice::Auto { quic_timeout: Duration::from_millis(800) });
    o.server = dead.local_addr().unwrap();
    let mut c = Client::connect(o).await.unwrap();
    assert_eq!(c.telemetry().transport, "webrtc");
    until_seq(&mut c, 3).await;
    // With QUIC reachable, Auto takes QUIC.
    let q = Client::connect(options(&r, &viewer, TransportChoice::Auto { quic_timeout: Duration::from_secs(5) }))
        .await
        .unwrap();
    assert_eq!(q.telemetry().transport, "quic");
    drop((c, q));
    r.shutdown().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

async fn http_post(addr: std::net::SocketAddr, path: &str, body: &[u8]) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    let head =
        format!("POST {path} HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\nConnection: close\r\n\r\n", body.len());
    s.write_all(head.as_bytes()).await.unwrap();
    // The server may answer (and close) before reading an oversized body.
    let _ = s.write_all(body).await;
    let mut out = Vec::new();
    let _ = s.read_to_end(&mut out).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_signalling_and_bad_frames_over_webrtc() {
    let dir = tempfile::tempdir().unwrap();
    let (r, editor, viewer) = server(dir.path()).await;
    let (m, web) = (r.metrics_addr.unwrap(), r.http_addr.unwrap());
    // Garbage instead of an offer: a clean 400 and a counter.
    let resp = http_post(web, "/webrtc/offer", b"{\"type\":\"offer\",\"sdp\":\"nonsense\"}").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    let resp = http_post(web, "/webrtc/offer", b"not json").await;
    assert!(resp.starts_with("HTTP/1.1 400"), "{resp}");
    // An oversized body is refused without reading it (and counted as a refused offer).
    let resp = http_post(web, "/webrtc/offer", &vec![b'x'; 100_000]).await;
    assert!(resp.starts_with("HTTP/1.1 413"), "{resp}");
    // The public web port does not serve metrics, and the metrics port serves neither the page
    // nor signalling.
    assert!(http_get(web, "/metrics").await.starts_with("HTTP/1.1 404"));
    assert!(http_get(m, "/").await.starts_with("HTTP/1.1 404"));
    assert!(http_post(m, "/webrtc/offer", b"not json").await.starts_with("HTTP/1.1 405"));
    assert!(http_get(web, "/").await.starts_with("HTTP/1.1 200"));
    // A request head over 8 KiB is refused before routing.
    let long = format!("/{}", "a".repeat(10_000));
    assert!(http_get(web, &long).await.starts_with("HTTP/1.1 431"));
    assert!(http_get(m, "/metrics").await.contains("theta_webrtc_signalling_refusals_total 3"));
    // A forged handshake (wrong key's proof) is refused with its close code; others unaffected.
    let mut good = Client::connect(options(&r, &editor, TransportChoice::WebRtc)).await.unwrap();
    let stranger = SigningKey::from_bytes(&[9; 32]);
    let refused = Client::connect(options(&r, &stranger, TransportChoice::WebRtc)).await;
    assert!(refused.is_err_and(|e| e.to_string().contains("no role")));
    good.submit(1, ComponentId::NONE, 0, Command::CreateEntity { shape: Shape::Cube, name: "ok".into(), parent: 0 })
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), good.next_event()).await.unwrap().unwrap() {
            Event::Receipt(_) => break,
            Event::Rejected(x) => panic!("{x:?}"),
            _ => {}
        }
    }
    // Raw channels: a header claiming 4 GiB on the control channel closes that peer, counted.
    let url = r.webrtc_signal.clone().unwrap();
    let raw = theta_client::webrtc::connect_raw(&url).await.unwrap();
    raw.control.send(bytes::BytesMut::from(&u32::MAX.to_le_bytes()[..])).await.unwrap();
    let mut refused = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if http_get(m, "/metrics").await.contains("theta_live_handshake_refusals_total{code=\"7\"} 1") {
            refused = true;
            break;
        }
    }
    assert!(refused, "the oversized frame was refused with code 7");
    // Garbage after a good handshake on the command channel: a protocol violation.
    let raw = theta_client::webrtc::connect_raw(&url).await.unwrap();
    let (mut hs, hello) =
        theta_client::handshake::ClientHandshake::start(editor.clone(), S, Capabilities::default(), [4; 32]);
    raw.control.send(bytes::BytesMut::from(&theta_client::frame::encode(&hello)[..])).await.unwrap();
    let mut decoder = theta_client::frame::Decoder::new(1 << 16);
    'hs: while let Some(ev) = tokio::time::timeout(Duration::from_secs(10), raw.control.poll()).await.unwrap() {
        if let webrtc::data_channel::DataChannelEvent::OnMessage(msg) = ev {
            for f in decoder.push(&msg.data).unwrap() {
                match hs.on_message(&f).unwrap() {
                    theta_client::handshake::ClientStep::Send(p) => {
                        raw.control.send(bytes::BytesMut::from(&theta_client::frame::encode(&p)[..])).await.unwrap()
                    }
                    theta_client::handshake::ClientStep::Done(_) => break 'hs,
                }
            }
        }
    }
    raw.commands.send(bytes::BytesMut::from(&[0u8, 0, 0, 0][..])).await.unwrap();
    let mut violated = false;
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(50)).await;
        if http_get(m, "/metrics").await.contains("theta_live_protocol_violations_total 1") {
            violated = true;
            break;
        }
    }
    assert!(violated, "an empty frame on the command channel is a protocol violation");
    // The good editor still works.
    good.submit(2, ComponentId::NONE, 0, Command::CreateEntity { shape: Shape::Cube, name: "still".into(), parent: 0 })
        .await
        .unwrap();
    loop {
        match tokio::time::timeout(Duration::from_secs(20), good.next_event()).await.unwrap().unwrap() {
            Event::Receipt(_) => break,
            Event::Rejected(x) => panic!("{x:?}"),
            _ => {}
        }
    }
    let text = http_get(m, "/metrics").await;
    assert!(text.contains("theta_live_handshake_refusals_total{code=\"5\"} 1"), "{text}");
    let _ = viewer;
    drop(good);
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_address_at_its_limit_of_half_open_connections_gets_429() {
    let dir = tempfile::tempdir().unwrap();
    let limits = theta_gateway::peers::AddressConfig { max_half_open_per_address: 1, max_connections_per_address: 4 };
    let (r, editor, _viewer) = server_with(dir.path(), limits).await;
    let url = r.webrtc_signal.clone().unwrap();
    // A peer that opens its channels and never says Hello holds the address's one half-open slot.
    let _raw = theta_client::webrtc::connect_raw(&url).await.unwrap();
    let resp = http_post(r.http_addr.unwrap(), "/webrtc/offer", b"{\"type\":\"offer\",\"sdp\":\"v=0\"}").await;
    assert!(resp.starts_with("HTTP/1.1 429"), "{resp}");
    assert!(
        http_get(r.metrics_addr.unwrap(), "/metrics")
            .await
            .contains("theta_live_address_refusals_total{transport=\"webrtc\",reason=\"half_open\"} 1\n")
    );
    // QUIC shares the limits: the same address may not start a QUIC handshake either.
    let refused = Client::connect(options(&r, &editor, TransportChoice::Quic)).await;
    assert!(refused.is_err(), "a QUIC handshake was accepted beyond the address's limit");
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peers_that_never_complete_ice_are_closed_and_counted_after_the_handshake_timeout() {
    let dir = tempfile::tempdir().unwrap();
    let limits = theta_gateway::peers::AddressConfig { max_half_open_per_address: 4, max_connections_per_address: 16 };
    let (r, editor, viewer) = server_timed(dir.path(), limits, 2_000).await;
    let rtc = r.webrtc.clone().unwrap();
    // A well-formed offer whose only candidate is the discard port: the server answers, and its
    // ICE checks never get a reply.
    let offer = include_str!("../../fuzz/seeds/signalling/offer.json").replace(" 50000 typ", " 9 typ");
    for _ in 0..4 {
        let resp = http_post(r.http_addr.unwrap(), "/webrtc/offer", offer.as_bytes()).await;
        assert!(resp.starts_with("HTTP/1.1 200"), "{resp}");
    }
    assert_eq!(rtc.peers(), 4);
    // They hold the address's four half-open slots: a fifth offer is refused.
    let resp = http_post(r.http_addr.unwrap(), "/webrtc/offer", offer.as_bytes()).await;
    assert!(resp.starts_with("HTTP/1.1 429"), "{resp}");
    // After the handshake timeout each is closed, counted, and its slot freed.
    let metrics = || async { http_get(r.metrics_addr.unwrap(), "/metrics").await };
    let mut closed = false;
    for _ in 0..100 {
        if rtc.peers() == 0 && metrics().await.contains("theta_live_handshake_refusals_total{code=\"6\"} 4\n") {
            closed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(closed, "peers open: {}\n{}", rtc.peers(), metrics().await);
    // The address is free again: an editor and a viewer connect over WebRTC and converge.
    let mut e = Client::connect(options(&r, &editor, TransportChoice::WebRtc)).await.unwrap();
    let mut v = Client::connect(options(&r, &viewer, TransportChoice::WebRtc)).await.unwrap();
    e.submit(1, ComponentId::NONE, 0, Command::CreateEntity { shape: Shape::Cube, name: "after".into(), parent: 0 })
        .await
        .unwrap();
    until_seq(&mut v, 4).await;
    let want = theta_gateway::history::project(r.store(), &S, 4).unwrap().projection.state_hash();
    assert_eq!(v.mirror().unwrap().state_hash(), want, "viewer mirror = server projection");
    r.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn peer_connections_of_clients_that_leave_are_freed() {
    let dir = tempfile::tempdir().unwrap();
    let (r, _editor, viewer) = server(dir.path()).await;
    let rtc = r.webrtc.clone().unwrap();
    for _ in 0..8 {
        let mut v = Client::connect(options(&r, &viewer, TransportChoice::WebRtc)).await.unwrap();
        until_seq(&mut v, 3).await;
        v.disconnect();
        drop(v);
    }
    let mut freed = false;
    for _ in 0..100 {
        if rtc.peers() == 0 && rtc.peers_in_memory() == 0 {
            freed = true;
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    assert!(freed, "open: {}, in memory: {}", rtc.peers(), rtc.peers_in_memory());
    r.shutdown().await;
}
