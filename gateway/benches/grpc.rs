//! gRPC benchmark (a bench binary, not a timed test), server and client in one process over
//! loopback TCP:
//! - ReadLog throughput of a large session to a Rust (tonic) client;
//! - unary Append vs AppendStream throughput with 64 concurrent authors, durable (sync), next
//!   to the store's own ceiling (the same appends through `Store::submit` directly).
//!
//! `cargo bench -p theta-gateway --bench grpc -- [--entries N] [--appends N] [--read-runs N]`

#[path = "common.rs"]
mod common;

/// The allocator the `theta` binary uses.
#[global_allocator]
static ALLOCATOR: tikv_jemallocator::Jemalloc = tikv_jemallocator::Jemalloc;

use std::sync::Arc;
use std::time::Instant;

use ed25519_dalek::SigningKey;
use theta_gateway::{ServeConfig, start_with_store};
use theta_proto::v1 as pb;
use theta_proto::v1::log_service_client::LogServiceClient;
use theta_proto::v1::replay_service_client::ReplayServiceClient;
use theta_schemas::components::Transform;
use theta_schemas::ids::ComponentMeta;
use theta_schemas::signing::author_key;
use theta_schemas::{Command, ComponentId, Role, SessionId, Shape};
use theta_store::{Durability, Store, StoreConfig};
use tokio_stream::StreamExt;
use tonic::transport::Channel;

const READ: SessionId = SessionId([0x31; 16]);
const AUTHORS: usize = 64;

fn sign(
    session: SessionId,
    key: &SigningKey,
    lamport: u64,
    entity: u64,
    component: ComponentId,
    command: Command,
) -> Vec<u8> {
    theta_testkit::envelope(key, session, lamport, lamport, entity, component, command)
}

/// A session with 64 editors and one entity each; returns per-author envelope streams.
fn prepare(store: &Store, session: SessionId, per_author: usize) -> Vec<Vec<Vec<u8>>> {
    let owner = SigningKey::from_bytes(&[1; 32]);
    let keys: Vec<SigningKey> = (0..AUTHORS).map(|i| SigningKey::from_bytes(&[i as u8 + 10; 32])).collect();
    let n = ComponentId::NONE;
    let mut l = 1;
    store.append(&sign(session, &owner, l, 0, n, Command::CreateSession { name: "bench".into() })).unwrap();
    for (i, k) in keys.iter().enumerate() {
        l += 1;
        store
            .append(&sign(session, &owner, l, 0, n, Command::GrantRole { key: author_key(k), role: Role::Editor }))
            .unwrap();
        l += 1;
        store
            .append(&sign(
                session,
                &owner,
                l,
                i as u64 + 1,
                n,
                Command::CreateEntity { shape: Shape::Cube, name: String::new(), parent: 0 },
            ))
            .unwrap();
    }
    keys.iter()
        .enumerate()
        .map(|(i, k)| {
            (0..per_author as u64)
                .map(|j| {
                    let t = Transform { translation: [j as f32, 0.0, 0.0], ..Transform::default() };
                    sign(session, k, l + 1 + j, i as u64 + 1, Transform::id(), Command::SetTransform(t))
                })
                .collect()
        })
        .collect()
}

fn main() {
    let mut entries = 500_000u64;
    let mut appends = 32_000usize;
    let mut read_runs = 2usize;
    let mut args = std::env::args().skip(1);
    while let Some(a) = args.next() {
        match a.as_str() {
            "--entries" => entries = args.next().and_then(|v| v.parse().ok()).expect("--entries N"),
            "--appends" => appends = args.next().and_then(|v| v.parse().ok()).expect("--appends N"),
            "--read-runs" => read_runs = args.next().and_then(|v| v.parse().ok()).expect("--read-runs N"),
            _ => {}
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    let dir = std::env::temp_dir().join("theta-bench-grpc");
    let _ = std::fs::remove_dir_all(&dir);
    let config =
        StoreConfig { rate_per_sec: 1e12, rate_burst: 1e12, durability: Durability::Sync, ..StoreConfig::default() };
    let store = Arc::new(Store::open(&dir, config).expect("open store"));
    println!("theta gRPC bench: 2 runtime threads, loopback TCP, sync durability");
    let t = Instant::now();
    common::build_log(&store, READ, entries);
    println!("built a {entries}-entry session in {:.1} s", t.elapsed().as_secs_f64());
    // Let the background indexer finish the fresh session before the reads are timed.
    store.sync_indexes();

    let per_author = appends / AUTHORS;
    let unary_session = SessionId([0x32; 16]);
    let stream_session = SessionId([0x33; 16]);
    let direct_session = SessionId([0x34; 16]);
    let unary = prepare(&store, unary_session, per_author);
    let stream = prepare(&store, stream_session, per_author);
    let direct = prepare(&store, direct_session, per_author);

    rt.block_on(async {
        let serve = ServeConfig {
            grpc_addr: "127.0.0.1:0".parse().unwrap(),
            metrics_addr: None,
            http_addr: None,
            quic_addr: None,
            // Reads measured without credentials (one signature check per call is not the subject).
            access: theta_gateway::auth::AccessConfig { public_read: true, ..Default::default() },
            // The server's background checkpointing of the fresh session would fold it while the
            // reads run; it is measured in docs/PERFORMANCE.md ("Time travel"), not here.
            checkpoint_interval_ms: 3_600_000,
            ..ServeConfig::default()
        };
        let running = start_with_store(store.clone(), &serve).await.expect("server");
        // HTTP/2 windows as the theta CLI sets them: a ReadLog batch is megabytes.
        let ch = Channel::from_shared(format!("http://{}", running.grpc_addr))
            .unwrap()
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(16 << 20))
            .connect()
            .await
            .unwrap();

        // ReadLog: the whole session, big batches, counted on the client.
        for envelope_only in [false, true].into_iter().cycle().take(2 * read_runs) {
            let t = Instant::now();
            let mut replay = ReplayServiceClient::new(ch.clone()).max_decoding_message_size(64 << 20);
            let req =
                pb::ReadLogRequest { session: READ.0.to_vec(), batch_size: 8_192, envelope_only, ..Default::default() };
            let mut s = replay.read_log(req).await.unwrap().into_inner();
            let mut n = 0u64;
            while let Some(b) = s.next().await {
                n += b.unwrap().entries.len() as u64;
            }
            assert_eq!(n, entries);
            println!(
                "ReadLog{}: {n} entries in {:.2} s = {:.0} entries/s",
                if envelope_only { " (envelope_only)" } else { "" },
                t.elapsed().as_secs_f64(),
                n as f64 / t.elapsed().as_secs_f64()
            );
        }

        // Store ceiling: the same kind of appends through Store::submit, 64 authors × 32 in flight.
        let t = Instant::now();
        let total: usize = direct.iter().map(Vec::len).sum();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        let sem = Arc::new(tokio::sync::Semaphore::new(AUTHORS * 32));
        for env in direct.into_iter().flatten() {
            let permit = sem.clone().acquire_owned().await.unwrap();
            let tx = tx.clone();
            store.submit(env, move |r| {
                r.expect("accepted");
                drop(permit);
                let _ = tx.send(());
            });
        }
        for _ in 0..total {
            rx.recv().await.unwrap();
        }
        let ceiling = total as f64 / t.elapsed().as_secs_f64();
        println!("store directly (64 authors x 32 in flight): {ceiling:.0} appends/s");

        // Unary Append: 64 concurrent authors, one call in flight each.
        let t = Instant::now();
        let tasks: Vec<_> = unary
            .into_iter()
            .map(|envs| {
                let mut c = LogServiceClient::new(ch.clone());
                tokio::spawn(async move {
                    for e in envs {
                        c.append(pb::AppendRequest { envelope: e }).await.expect("append");
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let unary_rate = (per_author * AUTHORS) as f64 / t.elapsed().as_secs_f64();
        println!("unary Append, 64 authors: {unary_rate:.0} appends/s ({:.2} x store)", unary_rate / ceiling);

        // AppendStream: 64 concurrent authors, one stream each.
        let t = Instant::now();
        let tasks: Vec<_> = stream
            .into_iter()
            .map(|envs| {
                let mut c = LogServiceClient::new(ch.clone());
                tokio::spawn(async move {
                    let n = envs.len();
                    let reqs = tokio_stream::iter(envs.into_iter().map(|e| pb::AppendRequest { envelope: e }));
                    let mut out = c.append_stream(reqs).await.expect("stream").into_inner();
                    let mut got = 0;
                    while let Some(r) = out.next().await {
                        let r = r.expect("response");
                        assert!(matches!(r.result, Some(pb::append_stream_response::Result::Receipt(_))), "{r:?}");
                        got += 1;
                    }
                    assert_eq!(got, n);
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let stream_rate = (per_author * AUTHORS) as f64 / t.elapsed().as_secs_f64();
        println!("AppendStream, 64 authors: {stream_rate:.0} appends/s ({:.2} x store)", stream_rate / ceiling);
        running.shutdown().await;
    });
    drop(store);
    let _ = std::fs::remove_dir_all(&dir);
}
