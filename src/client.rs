//! The `theta` client subcommands: talk to a running `theta serve` over gRPC.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context as _, bail};
use serde_json::Value as Json;
use theta_proto::v1 as pb;
use theta_proto::v1::admin_service_client::AdminServiceClient;
use theta_proto::v1::audit_service_client::AuditServiceClient;
use theta_proto::v1::log_service_client::LogServiceClient;
use theta_proto::v1::replay_service_client::ReplayServiceClient;
use theta_schemas::components::{Material, Transform};
use theta_schemas::merkle::{leaf_hash, verify_inclusion};
use theta_schemas::signing::author_key;
use theta_schemas::{AuthorKey, Command, CommandBody, ComponentId, ConflictStrategy, Envelope, Role, SessionId, Shape};
use tokio_stream::StreamExt;
use tonic::transport::{Certificate, Channel, ClientTlsConfig};

use crate::cli::read_key;

/// Where the server is.
#[derive(Debug, Clone, clap::Args)]
pub struct Server {
    /// gRPC address of `theta serve` (http:// or https://).
    #[arg(long, env = "THETA_SERVER", default_value = "http://127.0.0.1:50051", global = true)]
    server: String,
    /// CA certificate (PEM) to trust for an https:// server.
    #[arg(long, env = "THETA_CA", value_name = "FILE", global = true)]
    ca: Option<PathBuf>,
    /// Your secret key file (from `theta keygen`): signs commands, and signs every read with a
    /// fresh credential (reads need a role in the session; audits need auditor or owner;
    /// `theta stats` needs a service admin key).
    #[arg(long, env = "THETA_KEY", value_name = "FILE", global = true)]
    pub key: Option<PathBuf>,
}

impl Server {
    pub(crate) async fn connect(&self) -> anyhow::Result<Channel> {
        let mut ep = Channel::from_shared(self.server.clone())
            .with_context(|| format!("server address {:?}", self.server))?
            // Log reads come in batches of megabytes: windows that hold one avoid a round trip
            // per 64 KiB.
            .initial_stream_window_size(Some(8 << 20))
            .initial_connection_window_size(Some(16 << 20));
        if let Some(ca) = &self.ca {
            let pem = std::fs::read(ca).with_context(|| format!("read {}", ca.display()))?;
            ep = ep.tls_config(ClientTlsConfig::new().ca_certificate(Certificate::from_pem(pem)))?;
        }
        ep.connect().await.with_context(|| format!("connect to {} (is `theta serve` running?)", self.server))
    }

    /// The `--key` file, which `what` needs.
    pub(crate) fn signing_key(&self, what: &str) -> anyhow::Result<ed25519_dalek::SigningKey> {
        read_key(self.key.as_deref().with_context(|| format!("{what} needs --key FILE (or THETA_KEY)"))?)
    }

    /// A read request for `method` on `session`, with a fresh credential when `--key` is given
    /// (without one the server answers UNAUTHENTICATED unless it runs with --public-read).
    pub(crate) fn read<T>(
        &self,
        method: &str,
        session: Option<&SessionId>,
        msg: T,
    ) -> anyhow::Result<tonic::Request<T>> {
        match &self.key {
            Some(path) => Ok(signed(&read_key(path)?, method, session, msg)),
            None => Ok(tonic::Request::new(msg)),
        }
    }
}

/// A request carrying a fresh read credential of `key` for `method` on `session`
/// (docs/PROTOCOL.md, "Read credentials").
pub(crate) fn signed<T>(
    key: &ed25519_dalek::SigningKey,
    method: &str,
    session: Option<&SessionId>,
    msg: T,
) -> tonic::Request<T> {
    let credential = theta_schemas::credential::Credential::sign(key, method, session, now_ms(), rand::random());
    let mut req = tonic::Request::new(msg);
    req.metadata_mut().insert(
        theta_schemas::credential::CREDENTIAL_METADATA,
        credential.encode().parse().expect("a credential is ASCII"),
    );
    req
}

fn session_id(s: &str) -> anyhow::Result<SessionId> {
    SessionId::from_hex(s).with_context(|| format!("session id {s:?} must be 32 hex digits"))
}

pub(crate) fn status(e: tonic::Status) -> anyhow::Error {
    let hint = if e.code() == tonic::Code::Unauthenticated && e.message().contains("needs a credential") {
        " (pass --key FILE or set THETA_KEY: a key with a role in the session)"
    } else {
        ""
    };
    anyhow::anyhow!("{:?}: {}{hint}", e.code(), e.message())
}

fn now_ms() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_millis() as u64)
}

/// Signs a command for `session` with a Lamport timestamp above the session clock.
async fn sign(
    ch: &Channel,
    key: &ed25519_dalek::SigningKey,
    session: SessionId,
    entity: u64,
    component: ComponentId,
    base: u64,
    command: Command,
) -> anyhow::Result<Vec<u8>> {
    let head =
        signed(key, "/theta.v1.LogService/Head", Some(&session), pb::HeadRequest { session: session.0.to_vec() });
    let clock = match LogServiceClient::new(ch.clone()).head(head).await {
        Ok(h) => h.into_inner().lamport_clock,
        Err(e) if e.code() == tonic::Code::NotFound && matches!(command, Command::CreateSession { .. }) => 0,
        Err(e) => return Err(status(e)),
    };
    let body = CommandBody {
        session,
        author: author_key(key),
        lamport: clock + 1,
        nonce: rand::random(),
        wall_clock_ms: now_ms(),
        entity,
        component,
        base_version: base,
        command,
    };
    Ok(Envelope::sign(&body, key).encode())
}

fn receipt_line(r: &pb::Receipt) -> String {
    format!(
        "accepted: seq {} lamport {} entry {} (tree size {}, root {})",
        r.seq,
        r.lamport,
        hex::encode(&r.entry_hash),
        r.tree_size,
        hex::encode(&r.tree_root)
    )
}

/// `theta session create`.
/// Prints the bare session id on stdout (so `S=$(theta session create ...)` works) and the
/// receipt on stderr; with `json`, one JSON object on stdout instead.
pub async fn create_session(server: &Server, name: String, json: bool) -> anyhow::Result<()> {
    let key = server.signing_key("creating a session")?;
    let ch = server.connect().await?;
    let session = SessionId(rand::random());
    let env = sign(&ch, &key, session, 0, ComponentId::NONE, 0, Command::CreateSession { name }).await?;
    let r = LogServiceClient::new(ch).create_session(pb::AppendRequest { envelope: env }).await.map_err(status)?;
    let receipt = r.into_inner().receipt.unwrap_or_default();
    if json {
        let mut j = receipt_json(&receipt);
        j["session"] = Json::from(session.to_string());
        println!("{j}");
    } else {
        println!("{session}");
        eprintln!("created session {session}");
        eprintln!("{}", receipt_line(&receipt));
    }
    Ok(())
}

fn receipt_json(r: &pb::Receipt) -> Json {
    serde_json::json!({
        "session": hex::encode(&r.session), "seq": r.seq, "lamport": r.lamport, "nonce": r.nonce,
        "entry_hash": hex::encode(&r.entry_hash), "tree_size": r.tree_size, "tree_root": hex::encode(&r.tree_root),
    })
}

fn f32s<const N: usize>(j: &Json, field: &str, default: [f32; N]) -> anyhow::Result<[f32; N]> {
    match j.get(field) {
        None => Ok(default),
        Some(v) => {
            let a = v.as_array().with_context(|| format!("{field} must be an array of {N} numbers"))?;
            if a.len() != N {
                bail!("{field} must have {N} numbers");
            }
            let mut out = [0f32; N];
            for (o, x) in out.iter_mut().zip(a) {
                *o = x.as_f64().with_context(|| format!("{field} must hold numbers"))? as f32;
            }
            Ok(out)
        }
    }
}

fn u32s(j: &Json, field: &str) -> anyhow::Result<Vec<u32>> {
    j.get(field)
        .and_then(Json::as_array)
        .with_context(|| format!("{field} must be an array of integers"))?
        .iter()
        .map(|x| x.as_u64().map(|v| v as u32).with_context(|| format!("{field} must hold integers")))
        .collect()
}

fn string(j: &Json, field: &str) -> anyhow::Result<String> {
    Ok(j.get(field).and_then(Json::as_str).with_context(|| format!("{field} must be a string"))?.to_string())
}

fn component_named(name: &str) -> anyhow::Result<ComponentId> {
    theta_schemas::registry()
        .iter()
        .find(|d| d.name == name || d.name.trim_start_matches("theta.") == name)
        .map(|d| d.id)
        .with_context(|| format!("unknown component {name:?}"))
}

/// A command from its JSON description (docs/PROTOCOL.md, "CLI command JSON").
pub fn command_from_json(j: &Json) -> anyhow::Result<(u64, ComponentId, u64, Command)> {
    let kind = string(j, "kind")?;
    let kind = theta_schemas::CommandKind::parse(&kind).with_context(|| {
        let kinds: Vec<&str> = theta_schemas::CommandKind::ALL.iter().map(|k| k.name()).collect();
        format!("unknown kind {kind:?}; the kinds are {}", kinds.join(", "))
    })?;
    let entity = j.get("entity").and_then(Json::as_u64).unwrap_or(0);
    let base = j.get("base_version").and_then(Json::as_u64).unwrap_or(0);
    let scope = |kind| match theta_schemas::policy::scope_rule(kind) {
        theta_schemas::policy::ScopeRule::Component(c) => c,
        _ => ComponentId::NONE,
    };
    let key = |field: &str| -> anyhow::Result<AuthorKey> {
        let mut k = [0u8; 32];
        hex::decode_to_slice(string(j, field)?, &mut k).with_context(|| format!("{field} must be 64 hex digits"))?;
        Ok(AuthorKey(k))
    };
    use theta_schemas::CommandKind as K;
    let command = match kind {
        K::CreateSession => bail!("use `theta session create`"),
        K::GrantRole => {
            let role = string(j, "role")?;
            let role = Role::ALL
                .iter()
                .copied()
                .find(|r| r.name().eq_ignore_ascii_case(&role))
                .with_context(|| format!("unknown role {role:?}"))?;
            Command::GrantRole { key: key("key")?, role }
        }
        K::RevokeRole => Command::RevokeRole { key: key("key")? },
        K::SetConflictPolicy => {
            let strategy = string(j, "strategy")?.to_ascii_lowercase().replace(['-', '_'], "");
            let strategy = match strategy.as_str() {
                "lastwritewins" | "lww" => ConflictStrategy::LastWriteWins,
                "merge" => ConflictStrategy::Merge,
                "reject" => ConflictStrategy::Reject,
                other => bail!("unknown strategy {other:?}"),
            };
            Command::SetConflictPolicy { component: component_named(&string(j, "component")?)?, strategy }
        }
        K::CreateEntity => {
            let shape = j.get("shape").and_then(Json::as_str).unwrap_or("cube");
            let shape = Shape::ALL
                .iter()
                .copied()
                .find(|s| s.name().eq_ignore_ascii_case(shape))
                .with_context(|| format!("unknown shape {shape:?}"))?;
            Command::CreateEntity {
                shape,
                name: j.get("name").and_then(Json::as_str).unwrap_or("").to_string(),
                parent: j.get("parent").and_then(Json::as_u64).unwrap_or(0),
            }
        }
        K::DeleteEntity => Command::DeleteEntity,
        K::SetTransform => {
            let d = Transform::default();
            Command::SetTransform(Transform {
                translation: f32s(j, "translation", d.translation)?,
                rotation: f32s(j, "rotation", d.rotation)?,
                scale: f32s(j, "scale", d.scale)?,
            })
        }
        K::Select => Command::Select,
        K::Deselect => Command::Deselect,
        K::ChangeTool => Command::ChangeTool { tool: string(j, "tool")? },
        K::MoveVertices => {
            let indices = u32s(j, "indices")?;
            let positions = j
                .get("positions")
                .and_then(Json::as_array)
                .context("positions must be an array of [x, y, z]")?
                .iter()
                .map(|p| f32s::<3>(&serde_json::json!({ "p": p }), "p", [0.0; 3]))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Command::MoveVertices { indices, positions }
        }
        K::AddFaces => Command::AddFaces { indices: u32s(j, "indices")? },
        K::RemoveFaces => Command::RemoveFaces { faces: u32s(j, "faces")? },
        K::Rename => Command::Rename { name: string(j, "name")? },
        K::Reparent => Command::Reparent { parent: j.get("parent").and_then(Json::as_u64).unwrap_or(0) },
        K::SetMaterial => {
            let d = Material::default();
            Command::SetMaterial(Material {
                base_color: f32s(j, "base_color", d.base_color)?,
                metallic: j.get("metallic").and_then(Json::as_f64).map_or(d.metallic, |v| v as f32),
                roughness: j.get("roughness").and_then(Json::as_f64).map_or(d.roughness, |v| v as f32),
            })
        }
        K::RemoveComponent => {
            let c = component_named(&string(j, "component")?)?;
            return Ok((entity, c, base, Command::RemoveComponent));
        }
        K::SetComponent => bail!(
            "SetComponent is not available from JSON; use the specific command (SetTransform, Rename, SetMaterial, ...)"
        ),
    };
    Ok((entity, scope(kind), base, command))
}

/// `theta append`.
pub async fn append(server: &Server, session: &str, json: &str, json_out: bool) -> anyhow::Result<()> {
    let key = server.signing_key("appending")?;
    let session = session_id(session)?;
    let j: Json = serde_json::from_str(json)
        .context("the command must be JSON, e.g. {\"kind\":\"Rename\",\"entity\":1,\"name\":\"x\"}")?;
    let (entity, component, base, command) = command_from_json(&j)?;
    let ch = server.connect().await?;
    let env = sign(&ch, &key, session, entity, component, base, command).await?;
    let r = LogServiceClient::new(ch).append(pb::AppendRequest { envelope: env }).await.map_err(status)?;
    let receipt = r.into_inner().receipt.unwrap_or_default();
    if json_out {
        println!("{}", receipt_json(&receipt));
    } else {
        println!("{}", receipt_line(&receipt));
    }
    Ok(())
}

/// Options of `theta log`.
#[derive(Debug, clap::Args)]
pub struct LogArgs {
    /// Session id (32 hex digits).
    #[arg(long)]
    session: String,
    /// First seq.
    #[arg(long, default_value_t = 1)]
    from: u64,
    /// Last seq (default: the head).
    #[arg(long)]
    to: Option<u64>,
    /// Only entries signed by this key (64 hex digits).
    #[arg(long)]
    author: Option<String>,
    /// Only entries whose scope is this entity.
    #[arg(long)]
    entity: Option<u64>,
    /// Only these command kinds (repeatable), e.g. --kind SetTransform.
    #[arg(long = "kind")]
    kinds: Vec<String>,
    /// Print JSON lines instead of text.
    #[arg(long)]
    json: bool,
}

/// `theta log`.
pub async fn log(server: &Server, a: LogArgs) -> anyhow::Result<()> {
    let session = session_id(&a.session)?;
    let author = match &a.author {
        Some(h) => {
            let mut k = [0u8; 32];
            hex::decode_to_slice(h, &mut k).context("--author must be 64 hex digits")?;
            k.to_vec()
        }
        None => Vec::new(),
    };
    let ch = server.connect().await?;
    let req = pb::ReadLogRequest {
        session: session.0.to_vec(),
        from_seq: a.from,
        to_seq: a.to.unwrap_or(0),
        author,
        entity: a.entity.unwrap_or(0),
        kinds: a.kinds,
        batch_size: 4096,
        envelope_only: false,
    };
    let req = server.read("/theta.v1.ReplayService/ReadLog", Some(&session), req)?;
    let mut stream = ReplayServiceClient::new(ch).read_log(req).await.map_err(status)?.into_inner();
    let started = Instant::now();
    let mut n = 0u64;
    let mut next_report = 100_000;
    use std::io::Write as _;
    let stdout = std::io::stdout();
    let mut out = std::io::BufWriter::new(stdout.lock());
    while let Some(batch) = stream.next().await {
        for e in batch.map_err(status)?.entries {
            n += 1;
            if a.json {
                let line = serde_json::json!({
                    "seq": e.seq, "kind": e.kind, "author": hex::encode(&e.author), "lamport": e.lamport, "nonce": e.nonce,
                    "entity": e.entity, "component": format!("{:#018x}", e.component), "receipt_time_ms": e.receipt_time_ms,
                    "entry_hash": hex::encode(&e.entry_hash), "envelope": hex::encode(&e.envelope),
                });
                writeln!(out, "{line}")?;
            } else {
                writeln!(
                    out,
                    "{:>8}  {:<17} entity {:<6} by {}  lamport {}  {}",
                    e.seq,
                    e.kind,
                    e.entity,
                    &hex::encode(&e.author)[..16],
                    e.lamport,
                    &hex::encode(&e.entry_hash)[..16]
                )?;
            }
            if n == next_report {
                next_report += 100_000;
                eprintln!("theta log: {n} entries ({:.0}/s)", n as f64 / started.elapsed().as_secs_f64());
            }
        }
    }
    out.flush()?;
    eprintln!("theta log: {n} entries in {:.2} s", started.elapsed().as_secs_f64());
    Ok(())
}

/// `theta audit verify`.
pub async fn verify(server: &Server, session: &str, from: u64, to: u64) -> anyhow::Result<()> {
    let session = session_id(session)?;
    let ch = server.connect().await?;
    let req = server.read(
        "/theta.v1.AuditService/VerifyLog",
        Some(&session),
        pb::VerifyLogRequest { session: session.0.to_vec(), from_seq: from, to_seq: to },
    )?;
    let r = AuditServiceClient::new(ch).verify_log(req).await.map_err(status)?.into_inner();
    println!("entries checked  {}", r.entries_checked);
    println!("signatures       {}", if r.signatures_ok { "ok" } else { "FAILED" });
    println!("hash chain       {}", if r.chain_ok { "ok" } else { "FAILED" });
    println!(
        "Merkle tree      {} (size {}, root {})",
        if r.tree_ok { "ok" } else { "FAILED" },
        r.tree_size,
        hex::encode(&r.tree_root)
    );
    if r.first_bad_seq != 0 {
        bail!("first bad entry: seq {}: {}", r.first_bad_seq, r.first_bad_reason);
    }
    Ok(())
}

/// `theta audit prove`: fetch an entry and its inclusion proof, and check them here.
pub async fn prove(server: &Server, session: &str, seq: u64) -> anyhow::Result<()> {
    let session = session_id(session)?;
    let ch = server.connect().await?;
    let mut replay = ReplayServiceClient::new(ch.clone());
    let req = server.read(
        "/theta.v1.ReplayService/ReadLog",
        Some(&session),
        pb::ReadLogRequest { session: session.0.to_vec(), from_seq: seq, to_seq: seq, ..Default::default() },
    )?;
    let mut entries = replay.read_log(req).await.map_err(status)?.into_inner();
    let entry = entries
        .next()
        .await
        .context("no such entry")?
        .map_err(status)?
        .entries
        .into_iter()
        .next()
        .context("no such entry")?;
    let req = server.read(
        "/theta.v1.AuditService/InclusionProof",
        Some(&session),
        pb::InclusionProofRequest { session: session.0.to_vec(), seq, tree_size: 0 },
    )?;
    let p = AuditServiceClient::new(ch).inclusion_proof(req).await.map_err(status)?.into_inner();
    let entry_hash: [u8; 32] = entry.entry_hash[..].try_into().context("entry hash length")?;
    let recomputed = theta_schemas::merkle::entry_hash(
        &session,
        entry.seq,
        entry.receipt_time_ms,
        &entry.prev_hash[..].try_into()?,
        &entry.envelope,
    );
    let path: Vec<[u8; 32]> = p.path.iter().map(|h| h.as_slice().try_into()).collect::<Result<_, _>>()?;
    let root: [u8; 32] = p.root.as_slice().try_into()?;
    let ok =
        recomputed == entry_hash && verify_inclusion(&leaf_hash(&entry_hash), p.leaf_index, p.tree_size, &path, &root);
    println!(
        "entry {seq}: {} by {} (entry hash {})",
        entry.kind,
        &hex::encode(&entry.author)[..16],
        hex::encode(entry_hash)
    );
    println!(
        "inclusion in tree of size {} with root {}: {} ({} hashes)",
        p.tree_size,
        hex::encode(root),
        if ok { "verified" } else { "FAILED" },
        path.len()
    );
    if !ok {
        bail!("the proof does not verify");
    }
    Ok(())
}

/// `theta stats`.
pub async fn stats(server: &Server) -> anyhow::Result<()> {
    let ch = server.connect().await?;
    let req = server.read("/theta.v1.AdminService/Stats", None, pb::StatsRequest {})?;
    let s = AdminServiceClient::new(ch).stats(req).await.map_err(status)?.into_inner();
    println!("service key {}", hex::encode(&s.service_public_key));
    println!("sessions:");
    for x in &s.sessions {
        println!("  {}  {:>10} entries  {}", hex::encode(&x.session), x.seq, x.name);
    }
    println!("counters:");
    for c in &s.counters {
        println!("  {:<28} {}", c.name, c.value);
    }
    Ok(())
}
