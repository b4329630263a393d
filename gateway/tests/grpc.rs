//! The real gRPC server on a loopback port, called by a real tonic client.

use std::time::Duration;

use ed25519_dalek::SigningKey;
use theta_gateway::{Running, ServeConfig, start};
use theta_proto::v1 as pb;
use theta_proto::v1::audit_service_client::AuditServiceClient;
use theta_proto::v1::log_service_client::LogServiceClient;
use theta_proto::v1::replay_service_client::ReplayServiceClient;
use theta_schemas::components::{Name, Parent, Transform};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::{Command, ComponentId, Envelope, Role, SessionId, Shape};
use theta_store::StoreConfig;
use theta_store::merkle::{leaf_hash, verify_consistency, verify_inclusion};
use tokio_stream::StreamExt;
use tonic::Code;
use tonic::transport::Channel;

use theta_testkit::Author;

const S: SessionId = SessionId([0x11; 16]);

/// `msg` with a fresh read credential of `key` for `method` on `session`.
fn signed<T>(key: &SigningKey, method: &str, session: &SessionId, msg: T) -> tonic::Request<T> {
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64;
    let c = theta_schemas::credential::Credential::sign(key, method, Some(session), now, rand::random());
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert("theta-auth", c.encode().parse().unwrap());
    req
}

/// The session owner of every test here (seed 1).
fn owner_key() -> SigningKey {
    SigningKey::from_bytes(&[1; 32])
}

async fn server(dir: &std::path::Path) -> Running {
    let config = ServeConfig {
        store: StoreConfig { rate_per_sec: 1e6, rate_burst: 1e6, ..StoreConfig::default() },
        checkpoint_every_entries: 10,
        checkpoint_interval_ms: 100,
        ..ServeConfig::loopback(dir)
    };
    start(config).await.expect("server starts")
}

async fn channel(r: &Running) -> Channel {
    Channel::from_shared(format!("http://{}", r.grpc_addr)).unwrap().connect().await.unwrap()
}

fn req(envelope: Vec<u8>) -> pb::AppendRequest {
    pb::AppendRequest { envelope }
}

async fn read_all(replay: &mut ReplayServiceClient<Channel>, r: pb::ReadLogRequest) -> Vec<pb::Entry> {
    let session = SessionId(r.session.clone().try_into().unwrap());
    let r = signed(&owner_key(), "/theta.v1.ReplayService/ReadLog", &session, r);
    let mut stream = replay.read_log(r).await.unwrap().into_inner();
    let mut out = Vec::new();
    while let Some(b) = stream.next().await {
        out.extend(b.unwrap().entries);
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_replay_subscribe_and_audit_over_grpc() {
    let dir = tempfile::tempdir().unwrap();
    let running = server(dir.path()).await;
    let ch = channel(&running).await;
    let mut log = LogServiceClient::new(ch.clone());
    let mut replay = ReplayServiceClient::new(ch.clone());
    let mut audit = AuditServiceClient::new(ch.clone());
    let n = ComponentId::NONE;

    let mut owner = Author::new(1);
    let mut alice = Author::new(2);
    let mut bob = Author::new(3);
    let created =
        log.create_session(req(owner.cmd(S, 0, n, 0, Command::CreateSession { name: "grpc".into() }))).await.unwrap();
    assert_eq!(created.into_inner().receipt.unwrap().seq, 1);
    for a in [&alice, &bob] {
        let key = theta_schemas::AuthorKey(a.id().0);
        log.append(req(owner.cmd(S, 0, n, 0, Command::GrantRole { key, role: Role::Editor }))).await.unwrap();
    }

    // A live subscriber from seq 1.
    let mut sub = replay
        .subscribe(signed(
            &owner.key,
            "/theta.v1.ReplayService/Subscribe",
            &S,
            pb::SubscribeRequest { session: S.0.to_vec(), from_seq: 1, batch_size: 0 },
        ))
        .await
        .unwrap()
        .into_inner();

    // Both editors build and edit, through unary Append and through AppendStream.
    for e in 1..=3u64 {
        log.append(req(alice.cmd(
            S,
            e,
            n,
            0,
            Command::CreateEntity { shape: Shape::Cube, name: format!("a{e}"), parent: 0 },
        )))
        .await
        .unwrap();
    }
    let mut batch = Vec::new();
    for i in 0..20u64 {
        let t = Transform { translation: [i as f32, 0.0, 0.0], ..Transform::default() };
        batch.push(req(bob.cmd(S, 1 + i % 3, Transform::id(), 0, Command::SetTransform(t))));
    }
    // A bad one in the middle: a stale reparent (reject scope at version 0, base 5).
    batch.insert(10, req(bob.cmd(S, 2, Parent::id(), 5, Command::Reparent { parent: 1 })));
    let responses: Vec<pb::AppendStreamResponse> =
        log.append_stream(tokio_stream::iter(batch)).await.unwrap().into_inner().map(|r| r.unwrap()).collect().await;
    assert_eq!(responses.len(), 21);
    for (i, r) in responses.iter().enumerate() {
        assert_eq!(r.index, i as u64);
        match (&r.result, i) {
            (Some(pb::append_stream_response::Result::Rejection(rej)), 10) => {
                assert_eq!(rej.grpc_code, Code::FailedPrecondition as u32);
                assert_eq!(rej.counter, "conflict_rejections");
            }
            (Some(pb::append_stream_response::Result::Receipt(_)), _) => {}
            other => panic!("response {i}: {other:?}"),
        }
    }
    log.append(req(alice.cmd(S, 2, Name::id(), 0, Command::Rename { name: "renamed".into() }))).await.unwrap();
    let head = log
        .head(signed(&alice.key, "/theta.v1.LogService/Head", &S, pb::HeadRequest { session: S.0.to_vec() }))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(head.seq, 3 + 3 + 20 + 1);

    // The subscriber sees every entry, in order, live.
    let mut seen = Vec::new();
    while seen.len() < head.seq as usize {
        let b =
            tokio::time::timeout(Duration::from_secs(10), sub.next()).await.expect("live entries").unwrap().unwrap();
        seen.extend(b.entries.into_iter().map(|e| e.seq));
    }
    assert_eq!(seen, (1..=head.seq).collect::<Vec<_>>());

    // ReadLog with each filter.
    let base = pb::ReadLogRequest { session: S.0.to_vec(), batch_size: 7, ..Default::default() };
    let all = read_all(&mut replay, base.clone()).await;
    assert_eq!(all.iter().map(|e| e.seq).collect::<Vec<_>>(), (1..=head.seq).collect::<Vec<_>>());
    let by_bob = read_all(&mut replay, pb::ReadLogRequest { author: bob.id().0.to_vec(), ..base.clone() }).await;
    assert_eq!(by_bob.len(), 20);
    assert!(by_bob.iter().all(|e| e.author == bob.id().0.to_vec()));
    let entity2 = read_all(&mut replay, pb::ReadLogRequest { entity: 2, ..base.clone() }).await;
    assert!(entity2.iter().all(|e| e.entity == 2) && entity2.len() == 1 + 7 + 1);
    let renames = read_all(&mut replay, pb::ReadLogRequest { kinds: vec!["rename".into()], ..base.clone() }).await;
    assert_eq!(renames.len(), 1);
    let window = read_all(&mut replay, pb::ReadLogRequest { from_seq: 5, to_seq: 9, ..base.clone() }).await;
    assert_eq!(window.iter().map(|e| e.seq).collect::<Vec<_>>(), vec![5, 6, 7, 8, 9]);
    let history: Vec<u64> = replay
        .entity_history(signed(
            &bob.key,
            "/theta.v1.ReplayService/EntityHistory",
            &S,
            pb::EntityHistoryRequest { session: S.0.to_vec(), entity: 2, from_seq: 0, to_seq: 0 },
        ))
        .await
        .unwrap()
        .into_inner()
        .map(|b| b.unwrap().entries.into_iter().map(|e| e.seq).collect::<Vec<_>>())
        .collect::<Vec<_>>()
        .await
        .concat();
    assert_eq!(history, entity2.iter().map(|e| e.seq).collect::<Vec<_>>());

    // ReadState: chunks that assemble to the projection at that seq.
    let mut asm = theta_projector::Assembler::new();
    let mut state = replay
        .read_state(signed(
            &alice.key,
            "/theta.v1.ReplayService/ReadState",
            &S,
            pb::ReadStateRequest { session: S.0.to_vec(), at_seq: 10, max_chunk_bytes: 0 },
        ))
        .await
        .unwrap()
        .into_inner();
    let mut world = None;
    while let Some(c) = state.next().await {
        let c = c.unwrap();
        let theta_schemas::Message::SnapshotChunk(chunk) = theta_schemas::Message::decode(&c.frame).unwrap() else {
            panic!("chunk")
        };
        world = asm.add(chunk).unwrap();
    }
    let world = world.expect("assembled");
    assert_eq!(world.seq(), 10);
    assert_eq!(world.entity_count(), 3);

    // Audit: verify, proofs, signed tree head, rejection trail, author summary.
    let v = audit
        .verify_log(signed(
            &owner.key,
            "/theta.v1.AuditService/VerifyLog",
            &S,
            pb::VerifyLogRequest { session: S.0.to_vec(), from_seq: 0, to_seq: 0 },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(
        (v.entries_checked, v.signatures_ok, v.chain_ok, v.tree_ok, v.first_bad_seq),
        (head.seq, true, true, true, 0)
    );
    let partial = audit
        .verify_log(signed(
            &owner.key,
            "/theta.v1.AuditService/VerifyLog",
            &S,
            pb::VerifyLogRequest { session: S.0.to_vec(), from_seq: 7, to_seq: 20 },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!((partial.entries_checked, partial.tree_ok), (14, true));
    for seq in [1, 13, head.seq] {
        let p = audit
            .inclusion_proof(signed(
                &owner.key,
                "/theta.v1.AuditService/InclusionProof",
                &S,
                pb::InclusionProofRequest { session: S.0.to_vec(), seq, tree_size: 0 },
            ))
            .await
            .unwrap()
            .into_inner();
        let path: Vec<[u8; 32]> = p.path.iter().map(|h| h.as_slice().try_into().unwrap()).collect();
        let entry = &all[seq as usize - 1];
        let leaf = leaf_hash(&entry.entry_hash[..].try_into().unwrap());
        assert!(verify_inclusion(&leaf, p.leaf_index, p.tree_size, &path, &p.root.as_slice().try_into().unwrap()));
    }
    let c = audit
        .consistency_proof(signed(
            &owner.key,
            "/theta.v1.AuditService/ConsistencyProof",
            &S,
            pb::ConsistencyProofRequest { session: S.0.to_vec(), old_size: 9, new_size: 0 },
        ))
        .await
        .unwrap()
        .into_inner();
    let proof: Vec<[u8; 32]> = c.proof.iter().map(|h| h.as_slice().try_into().unwrap()).collect();
    assert!(verify_consistency(
        9,
        c.new_size,
        &c.old_root.as_slice().try_into().unwrap(),
        &c.new_root.as_slice().try_into().unwrap(),
        &proof
    ));
    let sth = audit
        .signed_tree_head(signed(
            &alice.key,
            "/theta.v1.AuditService/SignedTreeHead",
            &S,
            pb::SignedTreeHeadRequest { session: S.0.to_vec() },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(sth.tree_size, head.seq);
    let trail = audit
        .rejections(signed(
            &owner.key,
            "/theta.v1.AuditService/Rejections",
            &S,
            pb::RejectionsRequest { session: S.0.to_vec() },
        ))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(trail.records.len(), 1);
    assert_eq!(trail.records[0].counter, "conflict_rejections");
    let summary = audit
        .author_summary(signed(
            &owner.key,
            "/theta.v1.AuditService/AuthorSummary",
            &S,
            pb::AuthorSummaryRequest { session: S.0.to_vec() },
        ))
        .await
        .unwrap()
        .into_inner();
    let bob_row = summary.authors.iter().find(|a| a.author == bob.id().0.to_vec()).unwrap();
    assert_eq!((bob_row.role.as_str(), bob_row.granted_at_seq, bob_row.entries), ("Editor", 3, 20));

    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_gets_exact_status_codes_and_counters() {
    let dir = tempfile::tempdir().unwrap();
    let running = server(dir.path()).await;
    let ch = channel(&running).await;
    let mut log = LogServiceClient::new(ch.clone());
    let n = ComponentId::NONE;
    let mut owner = Author::new(1);
    log.create_session(req(owner.cmd(S, 0, n, 0, Command::CreateSession { name: "bad".into() }))).await.unwrap();
    owner.lamport += 0;

    let code = |r: Result<tonic::Response<pb::AppendResponse>, tonic::Status>| r.expect_err("rejected").code();
    // Garbage bytes.
    assert_eq!(code(log.append(req(b"garbage".to_vec())).await), Code::InvalidArgument);
    // A wrong signature.
    let mut env = Envelope::decode(&owner.cmd(
        S,
        1,
        n,
        0,
        Command::CreateEntity { shape: Shape::Cube, name: "x".into(), parent: 0 },
    ))
    .unwrap();
    env.signature[3] ^= 1;
    assert_eq!(code(log.append(req(env.encode())).await), Code::Unauthenticated);
    // A replayed nonce.
    let once = owner.cmd(S, 1, n, 0, Command::CreateEntity { shape: Shape::Cube, name: "x".into(), parent: 0 });
    log.append(req(once.clone())).await.unwrap();
    assert_eq!(code(log.append(req(once)).await), Code::AlreadyExists);
    // An oversized envelope (guard at 64 KiB; gRPC allows a little headroom so the guard sees it).
    let mut big = owner.cmd(S, 1, Name::id(), 0, Command::Rename { name: "x".into() });
    big.resize(65_537, 0);
    assert_eq!(code(log.append(req(big)).await), Code::ResourceExhausted);
    // Far larger than gRPC's limit: refused by the transport before the store sees it, with the
    // payload guard's code and counter name.
    let err = log.append(req(vec![0; 200_000])).await.unwrap_err();
    assert_eq!(err.code(), Code::ResourceExhausted, "{err:?}");
    assert!(err.message().starts_with("payload_guard_drops: "), "{err:?}");
    // An unknown session.
    let mut stranger = Author::new(9);
    assert_eq!(
        code(log.append(req(stranger.cmd(SessionId([0x22; 16]), 1, n, 0, Command::DeleteEntity))).await),
        Code::NotFound
    );
    // A missing role.
    assert_eq!(
        code(log.append(req(stranger.cmd(S, 1, Name::id(), 0, Command::Rename { name: "y".into() }))).await),
        Code::PermissionDenied
    );
    // A malformed session id in a read.
    let mut replay = ReplayServiceClient::new(ch.clone());
    let err = replay.read_log(pb::ReadLogRequest { session: vec![1, 2, 3], ..Default::default() }).await.unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument);
    let err = AuditServiceClient::new(ch.clone())
        .inclusion_proof(signed(
            &owner.key,
            "/theta.v1.AuditService/InclusionProof",
            &S,
            pb::InclusionProofRequest { session: S.0.to_vec(), seq: 99, tree_size: 0 },
        ))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::OutOfRange);

    // The counters moved, and the server still serves.
    let m = running.store().metrics();
    for (name, want) in [
        ("schema_rejections", 1),
        ("signature_failures", 1),
        ("replay_rejections", 1),
        ("payload_guard_drops", 1),
        ("session_rejections", 1),
        ("permission_denials", 1),
    ] {
        assert_eq!(m.counter(name), Some(want), "{name}");
    }
    let ok = log.append(req(owner.cmd(S, 1, Name::id(), 0, Command::Rename { name: "still here".into() }))).await;
    assert!(ok.is_ok());

    // /metrics parses as Prometheus text and names the seed counters.
    let body = http_get(running.metrics_addr.unwrap(), "/metrics").await;
    for name in [
        "theta_replay_rejections_total 1",
        "theta_rate_limit_drops_total 0",
        "theta_payload_guard_drops_total 1",
        "theta_conflicts_total 0",
        "theta_queue_depth 0",
    ] {
        assert!(body.contains(name), "missing {name:?}");
    }
    assert!(body.contains("theta_grpc_requests_total{method=\"Append\"}"));
    running.shutdown().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    assert!(out.starts_with("HTTP/1.1 200"), "{out}");
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_over_tls_with_a_pinned_certificate() {
    let dir = tempfile::tempdir().unwrap();
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let (cert_pem, key_pem) = (cert.cert.pem(), cert.signing_key.serialize_pem());
    std::fs::write(dir.path().join("cert.pem"), &cert_pem).unwrap();
    std::fs::write(dir.path().join("key.pem"), &key_pem).unwrap();
    let config = ServeConfig {
        metrics_addr: None,
        http_addr: None,
        quic_addr: None,
        tls: Some(theta_gateway::TlsFiles { cert: dir.path().join("cert.pem"), key: dir.path().join("key.pem") }),
        ..ServeConfig::loopback(dir.path().join("data"))
    };
    let running = start(config).await.unwrap();
    let port = running.grpc_addr.port();
    let tls = tonic::transport::ClientTlsConfig::new()
        .ca_certificate(tonic::transport::Certificate::from_pem(cert_pem))
        .domain_name("localhost");
    let ch = Channel::from_shared(format!("https://localhost:{port}"))
        .unwrap()
        .tls_config(tls)
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut owner = Author::new(1);
    let r = LogServiceClient::new(ch)
        .create_session(req(owner.cmd(S, 0, ComponentId::NONE, 0, Command::CreateSession { name: "tls".into() })))
        .await
        .unwrap();
    assert_eq!(r.into_inner().receipt.unwrap().seq, 1);
    // A plaintext client is refused.
    let plain = Channel::from_shared(format!("http://127.0.0.1:{port}")).unwrap().connect().await;
    if let Ok(ch) = plain {
        let e = LogServiceClient::new(ch).head(pb::HeadRequest { session: S.0.to_vec() }).await;
        assert!(e.is_err(), "plaintext call over a TLS port must fail");
    }
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subscriber_that_stops_reading_is_told_where_to_resume() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServeConfig {
        metrics_addr: None,
        http_addr: None,
        quic_addr: None,
        store: StoreConfig { rate_per_sec: 1e6, rate_burst: 1e6, ..StoreConfig::default() },
        slow_subscriber_ms: 300,
        ..ServeConfig::loopback(dir.path().join("data"))
    };
    let running = start(config).await.unwrap();
    let ch = channel(&running).await;
    let mut log = LogServiceClient::new(ch.clone());
    let n = ComponentId::NONE;
    let mut owner = Author::new(1);
    log.create_session(req(owner.cmd(S, 0, n, 0, Command::CreateSession { name: "slow".into() }))).await.unwrap();
    log.append(req(owner.cmd(S, 1, n, 0, Command::CreateEntity { shape: Shape::Cube, name: "x".into(), parent: 0 })))
        .await
        .unwrap();
    // Subscribe with one entry per batch, and do not read.
    let mut sub = ReplayServiceClient::new(ch.clone())
        .subscribe(signed(
            &owner.key,
            "/theta.v1.ReplayService/Subscribe",
            &S,
            pb::SubscribeRequest { session: S.0.to_vec(), from_seq: 1, batch_size: 1 },
        ))
        .await
        .unwrap()
        .into_inner();
    let batch: Vec<_> =
        (0..2_000).map(|_| req(owner.cmd(S, 1, Name::id(), 0, Command::Rename { name: "n".repeat(8_000) }))).collect();
    let mut responses = log.append_stream(tokio_stream::iter(batch)).await.unwrap().into_inner();
    let mut acked = 0;
    while let Some(r) = responses.next().await {
        assert!(matches!(r.unwrap().result, Some(pb::append_stream_response::Result::Receipt(_))));
        acked += 1;
    }
    assert_eq!(acked, 2_000);
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    // Now read: buffered entries arrive in order, then the stream ends with the resume seq.
    let mut last = 0;
    let err = loop {
        match tokio::time::timeout(Duration::from_secs(10), sub.next())
            .await
            .unwrap_or_else(|_| panic!("stalled after seq {last}"))
        {
            Some(Ok(b)) => {
                for e in b.entries {
                    assert_eq!(e.seq, last + 1);
                    last = e.seq;
                }
            }
            Some(Err(status)) => break status,
            None => panic!("stream ended without telling the client (last seq {last})"),
        }
    };
    assert_eq!(err.code(), Code::ResourceExhausted);
    assert!(err.message().contains(&format!("from_seq={}", last + 1)), "{} (last {last})", err.message());
    assert!(last < 2_002, "the server did not buffer everything for a stalled client");
    running.shutdown().await;
}
