//! Who may call what over gRPC: every read RPC against every kind of credential, admission of
//! session creators, and the per-key read limits, against a real server on loopback.

use std::collections::BTreeSet;

use ed25519_dalek::SigningKey;
use theta_gateway::auth::AccessConfig;
use theta_gateway::{Running, ServeConfig, start};
use theta_proto::v1 as pb;
use theta_proto::v1::admin_service_client::AdminServiceClient;
use theta_proto::v1::audit_service_client::AuditServiceClient;
use theta_proto::v1::log_service_client::LogServiceClient;
use theta_proto::v1::replay_service_client::ReplayServiceClient;
use theta_schemas::credential::Credential;
use theta_schemas::signing::author_key;
use theta_schemas::{Command, CommandBody, ComponentId, Envelope, Role, SessionId, Shape};
use theta_store::{Admission, StoreConfig};
use tonic::transport::Channel;
use tonic::{Code, Status};

const S: SessionId = SessionId([0x31; 16]);
const T: SessionId = SessionId([0x32; 16]);
const UNKNOWN: SessionId = SessionId([0x33; 16]);

use theta_testkit::key;

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap().as_millis() as u64
}

fn credential(k: &SigningKey, method: &str, session: Option<&SessionId>) -> String {
    Credential::sign(k, method, session, now_ms(), rand::random()).encode()
}

fn envelope(k: &SigningKey, session: SessionId, lamport: u64, entity: u64, command: Command) -> Vec<u8> {
    theta_testkit::envelope(k, session, lamport, rand::random(), entity, ComponentId::NONE, command)
}

async fn server(dir: &std::path::Path, access: AccessConfig, store: StoreConfig) -> (Running, Channel) {
    let config =
        ServeConfig { http_addr: None, quic_addr: None, webrtc: None, store, access, ..ServeConfig::loopback(dir) };
    let running = start(config).await.expect("server starts");
    let ch = Channel::from_shared(format!("http://{}", running.grpc_addr)).unwrap().connect().await.unwrap();
    (running, ch)
}

fn with<T>(msg: T, credential: Option<&str>) -> tonic::Request<T> {
    let mut req = tonic::Request::new(msg);
    if let Some(c) = credential {
        req.metadata_mut().insert("theta-auth", c.parse().unwrap());
    }
    req
}

/// Every read method with what it needs.
const METHODS: [(&str, Need); 13] = [
    ("/theta.v1.LogService/Head", Need::Member),
    ("/theta.v1.ReplayService/ReadLog", Need::Member),
    ("/theta.v1.ReplayService/ReadState", Need::Member),
    ("/theta.v1.ReplayService/Subscribe", Need::Member),
    ("/theta.v1.ReplayService/EntityHistory", Need::Member),
    ("/theta.v1.AuditService/SignedTreeHead", Need::Member),
    ("/theta.v1.AuditService/VerifyLog", Need::Auditor),
    ("/theta.v1.AuditService/InclusionProof", Need::Auditor),
    ("/theta.v1.AuditService/ConsistencyProof", Need::Auditor),
    ("/theta.v1.AuditService/Rejections", Need::Auditor),
    ("/theta.v1.AuditService/AuthorSummary", Need::Auditor),
    ("/theta.v1.AdminService/Stats", Need::Admin),
    ("global trail", Need::Admin),
];

#[derive(Clone, Copy, PartialEq, Debug)]
enum Need {
    Member,
    Auditor,
    Admin,
}

/// Calls `method` on `session` with `credential`; a stream counts as answered once its first
/// message (or its end) arrives.
async fn call(ch: &Channel, method: &str, session: SessionId, credential: Option<&str>) -> Result<(), Status> {
    let s = session.0.to_vec();
    match method {
        "/theta.v1.LogService/Head" => {
            LogServiceClient::new(ch.clone()).head(with(pb::HeadRequest { session: s }, credential)).await.map(drop)
        }
        "/theta.v1.ReplayService/ReadLog" => {
            let r = pb::ReadLogRequest { session: s, ..Default::default() };
            let mut st = ReplayServiceClient::new(ch.clone()).read_log(with(r, credential)).await?.into_inner();
            st.message().await.map(drop)
        }
        "/theta.v1.ReplayService/ReadState" => {
            let r = pb::ReadStateRequest { session: s, at_seq: 0, max_chunk_bytes: 0 };
            let mut st = ReplayServiceClient::new(ch.clone()).read_state(with(r, credential)).await?.into_inner();
            st.message().await.map(drop)
        }
        "/theta.v1.ReplayService/Subscribe" => {
            let r = pb::SubscribeRequest { session: s, from_seq: 1, batch_size: 0 };
            let mut st = ReplayServiceClient::new(ch.clone()).subscribe(with(r, credential)).await?.into_inner();
            st.message().await.map(drop)
        }
        "/theta.v1.ReplayService/EntityHistory" => {
            let r = pb::EntityHistoryRequest { session: s, entity: 1, from_seq: 0, to_seq: 0 };
            let mut st = ReplayServiceClient::new(ch.clone()).entity_history(with(r, credential)).await?.into_inner();
            st.message().await.map(drop)
        }
        "/theta.v1.AuditService/SignedTreeHead" => AuditServiceClient::new(ch.clone())
            .signed_tree_head(with(pb::SignedTreeHeadRequest { session: s }, credential))
            .await
            .map(drop),
        "/theta.v1.AuditService/VerifyLog" => AuditServiceClient::new(ch.clone())
            .verify_log(with(pb::VerifyLogRequest { session: s, from_seq: 0, to_seq: 0 }, credential))
            .await
            .map(drop),
        "/theta.v1.AuditService/InclusionProof" => AuditServiceClient::new(ch.clone())
            .inclusion_proof(with(pb::InclusionProofRequest { session: s, seq: 1, tree_size: 0 }, credential))
            .await
            .map(drop),
        "/theta.v1.AuditService/ConsistencyProof" => AuditServiceClient::new(ch.clone())
            .consistency_proof(with(pb::ConsistencyProofRequest { session: s, old_size: 1, new_size: 0 }, credential))
            .await
            .map(drop),
        "/theta.v1.AuditService/Rejections" => AuditServiceClient::new(ch.clone())
            .rejections(with(pb::RejectionsRequest { session: s }, credential))
            .await
            .map(drop),
        "/theta.v1.AuditService/AuthorSummary" => AuditServiceClient::new(ch.clone())
            .author_summary(with(pb::AuthorSummaryRequest { session: s }, credential))
            .await
            .map(drop),
        "/theta.v1.AdminService/Stats" => {
            AdminServiceClient::new(ch.clone()).stats(with(pb::StatsRequest {}, credential)).await.map(drop)
        }
        "global trail" => AuditServiceClient::new(ch.clone())
            .rejections(with(pb::RejectionsRequest { session: Vec::new() }, credential))
            .await
            .map(drop),
        other => panic!("no such method {other}"),
    }
}

/// The gRPC path a credential for `method` names, and the session it binds.
fn signed_for(method: &str, session: SessionId, need: Need) -> (&str, Option<SessionId>) {
    match method {
        "global trail" => ("/theta.v1.AuditService/Rejections", None),
        m if need == Need::Admin => (m, None),
        m => (m, Some(session)),
    }
}

fn cred(k: &SigningKey, method: &str, session: SessionId, need: Need) -> String {
    let (path, s) = signed_for(method, session, need);
    credential(k, path, s.as_ref())
}

fn expect(r: Result<(), Status>, code: Code, prefix: &str, what: &str) -> String {
    let e = r.expect_err(what);
    assert_eq!(e.code(), code, "{what}: {e:?}");
    assert!(e.message().starts_with(prefix), "{what}: {e:?}");
    e.message().to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_read_rpc_against_every_kind_of_credential() {
    let dir = tempfile::tempdir().unwrap();
    let (owner, auditor, viewer, other, stranger, admin) = (key(1), key(2), key(3), key(4), key(5), key(6));
    let access = AccessConfig { admins: [author_key(&admin)].into(), ..AccessConfig::default() };
    let (running, ch) = server(dir.path(), access, StoreConfig::default()).await;
    let store = running.store().clone();
    // Session S: owner, auditor, viewer. Session T: `other` is its owner, with no role in S.
    store.append(&envelope(&owner, S, 1, 0, Command::CreateSession { name: "s".into() })).unwrap();
    store
        .append(&envelope(&owner, S, 2, 0, Command::GrantRole { key: author_key(&auditor), role: Role::Auditor }))
        .unwrap();
    store
        .append(&envelope(&owner, S, 3, 0, Command::GrantRole { key: author_key(&viewer), role: Role::Viewer }))
        .unwrap();
    let create = Command::CreateEntity { shape: Shape::Cube, name: "box".into(), parent: 0 };
    store.append(&envelope(&owner, S, 4, 1, create)).unwrap();
    store.append(&envelope(&other, T, 1, 0, Command::CreateSession { name: "t".into() })).unwrap();

    for (method, need) in METHODS {
        let right = match need {
            Need::Member => &viewer,
            Need::Auditor => &auditor,
            Need::Admin => &admin,
        };
        let good = cred(right, method, S, need);
        // No credential.
        expect(call(&ch, method, S, None).await, Code::Unauthenticated, "auth_failures: ", &format!("{method}: none"));
        // A bad signature: one bit of the right key's credential flipped.
        let mut bad = good.clone().into_bytes();
        let last = bad.len() - 1;
        bad[last] = if bad[last] == b'0' { b'1' } else { b'0' };
        let bad = String::from_utf8(bad).unwrap();
        expect(call(&ch, method, S, Some(&bad)).await, Code::Unauthenticated, "auth_failures: ", method);
        // Expired: made ten minutes ago.
        let (path, s) = signed_for(method, S, need);
        let old = Credential::sign(right, path, s.as_ref(), now_ms() - 600_000, rand::random()).encode();
        let m = expect(call(&ch, method, S, Some(&old)).await, Code::Unauthenticated, "auth_failures: ", method);
        assert!(m.contains("outside"), "{m}");
        // The right role: answered; the same credential again: refused as replayed.
        call(&ch, method, S, Some(&good)).await.unwrap_or_else(|e| panic!("{method} with the right role: {e:?}"));
        let m = expect(call(&ch, method, S, Some(&good)).await, Code::Unauthenticated, "auth_failures: ", method);
        assert!(m.contains("already used"), "{m}");
        // A credential made for another method is refused.
        let elsewhere = credential(right, "/theta.v1.AdminService/Other", Some(&S));
        expect(call(&ch, method, S, Some(&elsewhere)).await, Code::Unauthenticated, "auth_failures: ", method);
        match need {
            Need::Admin => {
                // Any key that is not an admin's, the session's owner included.
                for k in [&stranger, &other, &owner] {
                    let c = cred(k, method, S, need);
                    expect(call(&ch, method, S, Some(&c)).await, Code::PermissionDenied, "auth_failures: ", method);
                }
            }
            Need::Member | Need::Auditor => {
                // No role, a role in another session, and an unknown session: the same answer.
                let unknown = call(&ch, method, UNKNOWN, Some(&cred(&owner, method, UNKNOWN, need))).await;
                let unknown = expect(unknown, Code::NotFound, "auth_failures: ", method);
                for k in [&stranger, &other] {
                    let m = expect(
                        call(&ch, method, S, Some(&cred(k, method, S, need))).await,
                        Code::NotFound,
                        "auth_failures: ",
                        method,
                    );
                    assert_eq!(
                        m.replace(&S.to_string(), "<session>"),
                        unknown.replace(&UNKNOWN.to_string(), "<session>")
                    );
                }
                if need == Need::Auditor {
                    // Too low a role: a viewer, and an editor-less owner's viewer.
                    let c = cred(&viewer, method, S, need);
                    expect(call(&ch, method, S, Some(&c)).await, Code::PermissionDenied, "auth_failures: ", method);
                    // The owner may audit too.
                    call(&ch, method, S, Some(&cred(&owner, method, S, need))).await.unwrap();
                }
            }
        }
    }

    // The counters, by reason, in /metrics.
    let metrics = http_get(running.metrics_addr.unwrap(), "/metrics").await;
    for (reason, n) in [
        ("missing", 13),
        ("bad_signature", 26),
        ("expired", 13),
        ("replayed", 13),
        ("unknown_session", 11),
        ("no_role", 22),
        ("role", 5),
        ("admin", 6),
    ] {
        let line = format!("theta_auth_failures_total{{reason=\"{reason}\"}} {n}\n");
        assert!(metrics.contains(&line), "missing {line:?} in\n{metrics}");
    }
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn public_read_serves_without_credentials() {
    let dir = tempfile::tempdir().unwrap();
    let access = AccessConfig { public_read: true, ..AccessConfig::default() };
    let (running, ch) = server(dir.path(), access, StoreConfig::default()).await;
    running.store().append(&envelope(&key(1), S, 1, 0, Command::CreateSession { name: "s".into() })).unwrap();
    call(&ch, "/theta.v1.ReplayService/ReadLog", S, None).await.unwrap();
    call(&ch, "/theta.v1.AuditService/VerifyLog", S, None).await.unwrap();
    let e = call(&ch, "/theta.v1.LogService/Head", UNKNOWN, None).await.unwrap_err();
    assert_eq!(e.code(), Code::NotFound);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admission_and_the_session_creation_rate() {
    let dir = tempfile::tempdir().unwrap();
    let (admin, stranger) = (key(6), key(7));
    let admins: BTreeSet<_> = [author_key(&admin)].into();
    let store = StoreConfig {
        admission: Admission::Keys(admins.clone()),
        session_creations_per_min: 2,
        ..StoreConfig::default()
    };
    let (running, ch) = server(dir.path(), AccessConfig { admins, ..AccessConfig::default() }, store).await;
    let mut log = LogServiceClient::new(ch.clone());
    let create = |k: &SigningKey, s: SessionId| pb::AppendRequest {
        envelope: envelope(k, s, 1, 0, Command::CreateSession { name: "x".into() }),
    };
    let e = log.create_session(create(&stranger, SessionId([1; 16]))).await.unwrap_err();
    assert_eq!(e.code(), Code::PermissionDenied, "{e:?}");
    assert!(e.message().starts_with("admission_denials: "), "{e:?}");
    // The admin creates two, then is rate limited; an Append of a CreateSession is the same path.
    log.create_session(create(&admin, SessionId([2; 16]))).await.unwrap();
    log.append(create(&admin, SessionId([3; 16]))).await.unwrap();
    let e = log.create_session(create(&admin, SessionId([4; 16]))).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().starts_with("rate_limit_drops: "), "{e:?}");
    let m = running.store().metrics();
    assert_eq!(m.counter("admission_denials"), Some(1));
    assert_eq!(m.counter("rate_limit_drops"), Some(1));
    // The refusals are in the global trail (no session exists for them), which only an admin reads.
    let trail = AuditServiceClient::new(ch.clone())
        .rejections(with(
            pb::RejectionsRequest { session: Vec::new() },
            Some(&credential(&admin, "/theta.v1.AuditService/Rejections", None)),
        ))
        .await
        .unwrap()
        .into_inner();
    let counters: Vec<&str> = trail.records.iter().map(|r| r.counter.as_str()).collect();
    assert_eq!(counters, ["admission_denials", "rate_limit_drops"]);
    running.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn per_key_stream_and_rate_limits() {
    let dir = tempfile::tempdir().unwrap();
    let (owner, viewer) = (key(1), key(3));
    let access =
        AccessConfig { max_streams_per_key: 2, reads_per_sec: 0.5, reads_burst: 6.0, ..AccessConfig::default() };
    let (running, ch) = server(dir.path(), access, StoreConfig::default()).await;
    let store = running.store().clone();
    store.append(&envelope(&owner, S, 1, 0, Command::CreateSession { name: "s".into() })).unwrap();
    store
        .append(&envelope(&owner, S, 2, 0, Command::GrantRole { key: author_key(&viewer), role: Role::Viewer }))
        .unwrap();
    let subscribe = |k: &SigningKey| {
        let r = pb::SubscribeRequest { session: S.0.to_vec(), from_seq: 1, batch_size: 0 };
        let c = credential(k, "/theta.v1.ReplayService/Subscribe", Some(&S));
        let mut client = ReplayServiceClient::new(ch.clone());
        async move { client.subscribe(with(r, Some(&c))).await }
    };
    // Two open streams; a third is refused; another key is unaffected.
    let first = subscribe(&owner).await.unwrap();
    let _second = subscribe(&owner).await.unwrap();
    let e = subscribe(&owner).await.unwrap_err();
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().starts_with("read_limit_drops: "), "{e:?}");
    let _viewer = subscribe(&viewer).await.unwrap();
    // Closing one frees its slot.
    drop(first);
    let mut freed = false;
    for _ in 0..50 {
        tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        if let Ok(s) = subscribe(&owner).await {
            drop(s);
            freed = true;
            break;
        }
    }
    assert!(freed, "a closed stream's slot was never freed");
    // The rate: the owner's burst of 6 is spent by now; the viewer still reads.
    let mut limited = None;
    for _ in 0..10 {
        if let Err(e) =
            call(&ch, "/theta.v1.LogService/Head", S, Some(&credential(&owner, "/theta.v1.LogService/Head", Some(&S))))
                .await
        {
            limited = Some(e);
            break;
        }
    }
    let e = limited.expect("the owner is rate limited");
    assert_eq!(e.code(), Code::ResourceExhausted, "{e:?}");
    assert!(e.message().contains("reads/s"), "{e:?}");
    call(&ch, "/theta.v1.LogService/Head", S, Some(&credential(&viewer, "/theta.v1.LogService/Head", Some(&S))))
        .await
        .unwrap();
    let metrics = http_get(running.metrics_addr.unwrap(), "/metrics").await;
    assert!(metrics.contains("theta_read_limit_drops_total{reason=\"streams\"}"), "{metrics}");
    assert!(metrics.contains("theta_read_limit_drops_total{reason=\"rate\"} 1\n"), "{metrics}");
    running.shutdown().await;
}

/// The value of an unlabelled metric line `name N`.
fn metric(metrics: &str, name: &str) -> u64 {
    metrics
        .lines()
        .find_map(|l| l.strip_prefix(name)?.strip_prefix(' ')?.parse().ok())
        .unwrap_or_else(|| panic!("no {name} in\n{metrics}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_opening_thousands_of_streams_is_held_to_its_connection_limit_while_honest_ones_work() {
    let dir = tempfile::tempdir().unwrap();
    let (running, honest) = server(dir.path(), AccessConfig::default(), StoreConfig::default()).await;
    let store = running.store().clone();
    let (owner, viewer, member) = (key(1), key(3), key(4));
    store.append(&envelope(&owner, S, 1, 0, Command::CreateSession { name: "s".into() })).unwrap();
    for (lamport, k) in [(2, &viewer), (3, &member)] {
        store
            .append(&envelope(&owner, S, lamport, 0, Command::GrantRole { key: author_key(k), role: Role::Viewer }))
            .unwrap();
    }
    let tasks_before = tokio::runtime::Handle::current().metrics().num_alive_tasks();
    let metrics_addr = running.metrics_addr.unwrap();
    // The hostile client, on one HTTP/2 connection: 1,500 AppendStream calls that never send a
    // command, and 1,500 subscriptions by a member of the session (16 may be open per key).
    let hostile = Channel::from_shared(format!("http://{}", running.grpc_addr)).unwrap().connect().await.unwrap();
    let mut calls = tokio::task::JoinSet::new();
    for i in 0..3_000 {
        let ch = hostile.clone();
        let member = member.clone();
        calls.spawn(async move {
            if i % 2 == 0 {
                let held = LogServiceClient::new(ch).append_stream(tokio_stream::pending::<pb::AppendRequest>()).await;
                std::future::pending::<()>().await;
                drop(held);
                Ok(())
            } else {
                let c = credential(&member, "/theta.v1.ReplayService/Subscribe", Some(&S));
                let r = pb::SubscribeRequest { session: S.0.to_vec(), from_seq: 1, batch_size: 0 };
                match ReplayServiceClient::new(ch).subscribe(with(r, Some(&c))).await {
                    Ok(held) => {
                        std::future::pending::<()>().await;
                        drop(held);
                        Ok(())
                    }
                    Err(e) => Err(e),
                }
            }
        });
    }
    // The server holds at most 256 of its calls at once; the rest wait on the client's side.
    let mut in_flight = 0;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        in_flight = metric(&http_get(metrics_addr, "/metrics").await, "theta_grpc_calls_in_flight");
        if in_flight >= 200 {
            break;
        }
    }
    assert!(
        (200..=theta_gateway::server::GRPC_STREAMS_PER_CONNECTION as u64).contains(&in_flight),
        "calls in flight: {in_flight}"
    );
    // An honest editor appends and an honest viewer follows, on their own connection.
    let c = credential(&viewer, "/theta.v1.ReplayService/Subscribe", Some(&S));
    let r = pb::SubscribeRequest { session: S.0.to_vec(), from_seq: 4, batch_size: 0 };
    let mut follow = ReplayServiceClient::new(honest.clone()).subscribe(with(r, Some(&c))).await.unwrap().into_inner();
    let e = envelope(&owner, S, 4, 1, Command::CreateEntity { shape: Shape::Cube, name: "honest".into(), parent: 0 });
    let receipt = LogServiceClient::new(honest.clone()).append(pb::AppendRequest { envelope: e }).await.unwrap();
    assert_eq!(receipt.into_inner().receipt.unwrap().seq, 4);
    let batch = tokio::time::timeout(std::time::Duration::from_secs(10), follow.message()).await.unwrap().unwrap();
    assert_eq!(batch.unwrap().entries[0].seq, 4, "the honest subscriber sees the new entry");
    let metrics = http_get(metrics_addr, "/metrics").await;
    assert!(
        metric(&metrics, "theta_grpc_calls_in_flight") <= theta_gateway::server::GRPC_STREAMS_PER_CONNECTION as u64 + 1
    );
    // The member's subscriptions past its 16 are refused and counted.
    let refused = metrics
        .lines()
        .find_map(|l| l.strip_prefix("theta_read_limit_drops_total{reason=\"streams\"} ")?.parse::<u64>().ok())
        .unwrap_or(0);
    assert!(refused > 0, "{metrics}");
    // Gone: the server holds nothing of the hostile client (only the honest subscription).
    calls.abort_all();
    while calls.join_next().await.is_some() {}
    drop(hostile);
    let mut settled = false;
    for _ in 0..100 {
        tokio::time::sleep(std::time::Duration::from_millis(50)).await;
        let tasks = tokio::runtime::Handle::current().metrics().num_alive_tasks();
        if metric(&http_get(metrics_addr, "/metrics").await, "theta_grpc_calls_in_flight") == 1
            && tasks <= tasks_before + 16
        {
            settled = true;
            break;
        }
    }
    assert!(
        settled,
        "calls in flight: {}, tasks: {} (were {tasks_before})",
        metric(&http_get(metrics_addr, "/metrics").await, "theta_grpc_calls_in_flight"),
        tokio::runtime::Handle::current().metrics().num_alive_tasks()
    );
    drop(follow);
    running.shutdown().await;
}

async fn http_get(addr: std::net::SocketAddr, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(addr).await.unwrap();
    s.write_all(format!("GET {path} HTTP/1.1\r\nHost: x\r\n\r\n").as_bytes()).await.unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).await.unwrap();
    out
}

/// The signature edge cases, each alone and at random positions inside batches of concurrent
/// valid traffic: the store's verdict equals the rule's, and the audit re-verifies every
/// accepted entry clean.
#[test]
fn signature_edges_get_one_verdict_alone_and_inside_concurrent_batches() {
    use theta_schemas::signing::edge::{Edge, edge_key, sign_edge};
    let store = theta_store::Store::open_in_memory(StoreConfig {
        rate_per_sec: 1e9,
        rate_burst: 1e9,
        ..StoreConfig::default()
    });
    let honest = key(40);
    store.append(&envelope(&honest, S, 1, 0, Command::CreateSession { name: "traffic".into() })).unwrap();
    let create = Command::CreateEntity { shape: Shape::Cube, name: "box".into(), parent: 0 };
    store.append(&envelope(&honest, S, 2, 1, create)).unwrap();
    let mut lamport = 2;
    let mut accepted_sessions = Vec::new();
    let mut rng_state = 0x9e37_79b9_7f4a_7c15u64;
    let mut next = || {
        rng_state ^= rng_state << 13;
        rng_state ^= rng_state >> 7;
        rng_state ^= rng_state << 17;
        rng_state
    };
    for (round, alone) in [(0u8, true), (1, false), (2, false), (3, false)] {
        for (i, edge) in Edge::all().into_iter().enumerate() {
            let secret = SigningKey::from_bytes(&[100 + i as u8; 32]);
            let session = SessionId([round * 64 + i as u8 + 1; 16]);
            let body = CommandBody {
                session,
                author: theta_schemas::AuthorKey(edge_key(&secret, edge)),
                lamport: 1,
                nonce: 1,
                wall_clock_ms: 0,
                entity: 0,
                component: ComponentId::NONE,
                base_version: 0,
                command: Command::CreateSession { name: format!("{edge:?}") },
            };
            let bytes = body.encode();
            let signature = sign_edge(&secret, &theta_schemas::signing::command_message(&bytes), edge);
            let edge_envelope = Envelope { body: bytes, signature }.encode();
            let mut batch: Vec<Vec<u8>> = Vec::new();
            if !alone {
                for _ in 0..(next() % 200) {
                    lamport += 1;
                    let t = theta_schemas::components::Transform::default();
                    let b = CommandBody {
                        session: S,
                        author: author_key(&honest),
                        lamport,
                        nonce: lamport,
                        wall_clock_ms: 0,
                        entity: 1,
                        component: <theta_schemas::components::Transform as theta_schemas::ids::ComponentMeta>::id(),
                        base_version: 0,
                        command: Command::SetTransform(t),
                    };
                    batch.push(Envelope::sign(&b, &honest).encode());
                }
            }
            let at = if batch.is_empty() { 0 } else { (next() as usize) % (batch.len() + 1) };
            batch.insert(at, edge_envelope);
            let results = store.append_batch(batch);
            let expected = theta_schemas::signing::edge::reference_verdict(
                &edge_key(&secret, edge),
                &theta_schemas::signing::command_message(&body.encode()),
                &signature,
            );
            assert_eq!(results[at].is_ok(), expected, "{edge:?} (round {round}): {:?}", results[at]);
            for (j, r) in results.iter().enumerate() {
                assert!(j == at || r.is_ok(), "valid traffic refused next to {edge:?}: {r:?}");
            }
            if expected {
                accepted_sessions.push(session);
            }
        }
    }
    assert!(!accepted_sessions.is_empty());
    for s in accepted_sessions.iter().chain([&S]) {
        let report = theta_gateway::grpc::verify_log(&store, s, 0, 0).unwrap();
        assert!(report.signatures_ok && report.chain_ok && report.tree_ok, "{s}: {report:?}");
        assert_eq!(report.first_bad_seq, 0);
    }
}

/// The small print of docs/PROTOCOL.md's gRPC table: ranges beyond the head, the chunk-size
/// range, the 2 MiB batch cap, the counter name in every message.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_grpc_surface_matches_the_protocol_doc() {
    use prost::Message as _;
    let dir = tempfile::tempdir().unwrap();
    let owner = key(1);
    let (running, ch) = server(dir.path(), AccessConfig::default(), StoreConfig::default()).await;
    let store = running.store().clone();
    store.append(&envelope(&owner, S, 1, 0, Command::CreateSession { name: "s".into() })).unwrap();
    store
        .append(&envelope(
            &owner,
            S,
            2,
            1,
            Command::CreateEntity { shape: Shape::Cube, name: String::new(), parent: 0 },
        ))
        .unwrap();
    // 40 renames of ~60 KB: 2.4 MB of entries.
    for i in 0..40u64 {
        let body = CommandBody {
            session: S,
            author: author_key(&owner),
            lamport: 3 + i,
            nonce: 1_000 + i,
            wall_clock_ms: 0,
            entity: 1,
            component: <theta_schemas::components::Name as theta_schemas::ids::ComponentMeta>::id(),
            base_version: 0,
            command: Command::Rename { name: "x".repeat(60_000) },
        };
        store.append(&Envelope::sign(&body, &owner).encode()).unwrap();
    }
    let head = store.head(&S).unwrap().seq;
    let mut replay = ReplayServiceClient::new(ch.clone()).max_decoding_message_size(8 << 20);
    let read = |from_seq: u64, to_seq: u64| {
        let r = pb::ReadLogRequest { session: S.0.to_vec(), from_seq, to_seq, batch_size: 8_192, ..Default::default() };
        with(r, Some(credential(&owner, "/theta.v1.ReplayService/ReadLog", Some(&S)).as_str()))
    };
    // Every batch within 2 MiB encoded, all entries there.
    let mut stream = replay.read_log(read(0, 0)).await.unwrap().into_inner();
    let (mut n, mut batches) = (0, 0);
    while let Some(b) = stream.message().await.unwrap() {
        assert!(b.encoded_len() <= 2 * 1024 * 1024, "batch of {} bytes", b.encoded_len());
        n += b.entries.len() as u64;
        batches += 1;
    }
    assert_eq!(n, head);
    assert!(batches >= 2);
    // from_seq or to_seq beyond the head: OUT_OF_RANGE, with the counter's name.
    for (from, to) in [(head + 1, 0), (1, head + 1)] {
        let e = replay.read_log(read(from, to)).await.unwrap_err();
        assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
        assert!(e.message().starts_with("request_errors: "), "{e:?}");
    }
    let history = |to_seq: u64| {
        let r = pb::EntityHistoryRequest { session: S.0.to_vec(), entity: 1, from_seq: 0, to_seq };
        with(r, Some(credential(&owner, "/theta.v1.ReplayService/EntityHistory", Some(&S)).as_str()))
    };
    let e = replay.entity_history(history(head + 1)).await.unwrap_err();
    assert_eq!(e.code(), Code::OutOfRange, "{e:?}");
    // max_chunk_bytes: 0 or 1,024..=65,536.
    for (max, ok) in [(0u32, true), (512, false), (1_024, true), (65_536, true), (65_537, false)] {
        let r = pb::ReadStateRequest { session: S.0.to_vec(), at_seq: 2, max_chunk_bytes: max };
        let c = credential(&owner, "/theta.v1.ReplayService/ReadState", Some(&S));
        let got = replay.read_state(with(r, Some(&c))).await;
        match (got, ok) {
            (Ok(_), true) => {}
            (Err(e), false) => {
                assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
                assert!(e.message().starts_with("request_errors: max_chunk_bytes"), "{e:?}");
            }
            (got, _) => panic!("max_chunk_bytes {max}: {got:?}"),
        }
    }
    // A bad session id and a CreateSession of another kind: INVALID_ARGUMENT, counted.
    let e = LogServiceClient::new(ch.clone())
        .create_session(pb::AppendRequest {
            envelope: envelope(&owner, S, 100, 1, Command::Rename { name: "y".into() }),
        })
        .await
        .unwrap_err();
    assert_eq!(e.code(), Code::InvalidArgument, "{e:?}");
    assert!(e.message().starts_with("request_errors: "), "{e:?}");
    let metrics = http_get(running.metrics_addr.unwrap(), "/metrics").await;
    for line in [
        "theta_request_errors_total{method=\"ReadLog\",code=\"11\"} 2\n",
        "theta_request_errors_total{method=\"EntityHistory\",code=\"11\"} 1\n",
        "theta_request_errors_total{method=\"ReadState\",code=\"3\"} 2\n",
        "theta_request_errors_total{method=\"CreateSession\",code=\"3\"} 1\n",
    ] {
        assert!(metrics.contains(line), "missing {line:?} in\n{metrics}");
    }
    running.shutdown().await;
}
