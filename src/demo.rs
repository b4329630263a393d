//! `theta demo`: the whole system on loopback in about a minute.
//!
//! Starts the service in-process with a fresh data directory (gRPC, QUIC, /metrics), then
//! scripted editors with their own keys connect over QUIC and build and edit a scene
//! concurrently (create objects, transform, select, change tools, edit a mesh, reparent); a
//! viewer-role key tries to edit and is refused, and one editor makes a conflicting edit. A
//! live viewer renders the scene headless to PNG frames as it changes. Afterwards the session
//! is replayed from history over gRPC: the replayed state hash must equal the live one, and the
//! scene rendered from history at a seq must look exactly as it did live at that seq.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering::SeqCst};
use std::time::{Duration, Instant};

use anyhow::{Context as _, ensure};
use ed25519_dalek::SigningKey;
use theta_client::compress::ZSTD_STREAM;
use theta_client::quic::{Client, Event, Options, Trust};
use theta_gateway::server::ServeConfig;
use theta_projector::Projection;
use theta_schemas::components::{Component, Material, Mesh, Name, Parent, Selection, ToolState, Transform};
use theta_schemas::ids::ComponentMeta;
use theta_schemas::signing::author_key;
use theta_schemas::wire::Capabilities;
use theta_schemas::{Command, CommandBody, ComponentId, Envelope, Role, SessionId, Shape};
use theta_store::{RejectionCode, StoreConfig};
use theta_viewer::{Image, Renderer, extract};

use crate::view::{eyes, hud, same_image};
use theta_client::history::{HistoryClient, Playback};

/// Options of `theta demo`.
#[derive(Debug, Clone, clap::Args)]
pub struct DemoArgs {
    /// Data directory (default: a fresh temporary directory, removed afterwards).
    #[arg(long, value_name = "DIR")]
    data: Option<PathBuf>,
    /// Where the rendered frames go.
    #[arg(long, value_name = "DIR", default_value = "theta-demo-frames")]
    out: PathBuf,
    /// Seconds of concurrent live editing.
    #[arg(long, default_value_t = 30.0)]
    seconds: f64,
    /// Frames rendered per second while editing (headless).
    #[arg(long, default_value_t = 10.0)]
    fps: f64,
    /// Width of the frames, pixels.
    #[arg(long, default_value_t = 640)]
    width: u32,
    /// Height of the frames, pixels.
    #[arg(long, default_value_t = 360)]
    height: u32,
    /// Render both eyes side by side.
    #[arg(long)]
    stereo: bool,
}

/// Objects in the ring the editors build.
const RING: u64 = 12;
const TABLE: u64 = 100;
const LAMP: u64 = 101;

/// A scripted editor over QUIC: submits with a bounded window and counts outcomes.
struct Editor {
    name: &'static str,
    client: Client,
    in_flight: usize,
    accepted: u64,
    rejected: Vec<String>,
}

impl Editor {
    async fn connect(
        name: &'static str,
        key: SigningKey,
        session: SessionId,
        server: &Server,
    ) -> anyhow::Result<Editor> {
        let client = Client::connect(server.options(key, session)).await.with_context(|| format!("{name} connects"))?;
        Ok(Editor { name, client, in_flight: 0, accepted: 0, rejected: Vec::new() })
    }

    async fn send(&mut self, entity: u64, component: ComponentId, base: u64, command: Command) -> anyhow::Result<()> {
        self.client.submit(entity, component, base, command).await?;
        self.in_flight += 1;
        while self.in_flight >= 32 {
            self.pump().await?;
        }
        Ok(())
    }

    async fn pump(&mut self) -> anyhow::Result<()> {
        match tokio::time::timeout(Duration::from_secs(10), self.client.next_event()).await {
            Ok(Ok(Event::Receipt(_))) => {
                self.in_flight -= 1;
                self.accepted += 1;
            }
            Ok(Ok(Event::Rejected(e))) => {
                self.in_flight -= 1;
                self.rejected.push(e.reason);
            }
            Ok(Ok(_)) => {}
            Ok(Err(e)) => return Err(e).with_context(|| format!("{}'s connection", self.name)),
            Err(_) => anyhow::bail!("{}: no answer from the server in 10 s", self.name),
        }
        Ok(())
    }

    async fn settle(&mut self) -> anyhow::Result<()> {
        while self.in_flight > 0 {
            self.pump().await?;
        }
        Ok(())
    }
}

struct Server {
    addr: std::net::SocketAddr,
    pin: [u8; 32],
}

impl Server {
    fn options(&self, key: SigningKey, session: SessionId) -> Options {
        Options {
            server: self.addr,
            server_name: "localhost".into(),
            trust: Trust::Fingerprint(self.pin),
            key,
            session,
            capabilities: Capabilities {
                compression: vec![ZSTD_STREAM.into()],
                interest_management: false,
                max_chunk_bytes: 0,
                datagrams: false,
                compact_deltas: false,
            },
            transport: Default::default(),
            webrtc_signal: None,
        }
    }
}

fn transform(x: f32, y: f32, z: f32, angle: f32, scale: f32) -> Transform {
    Transform {
        translation: [x, y, z],
        rotation: [0.0, (angle / 2.0).sin(), 0.0, (angle / 2.0).cos()],
        scale: [scale; 3],
    }
}

fn ring_position(i: u64, t: f32) -> [f32; 3] {
    let a = i as f32 / RING as f32 * std::f32::consts::TAU + t * 0.4;
    [4.5 * a.cos(), 0.5 + 0.3 * (t * 2.0 + i as f32).sin().abs(), 4.5 * a.sin()]
}

/// Alice builds the scene: a ring of coloured objects, a table with a mesh top, a lamp on it.
async fn build(alice: &mut Editor) -> anyhow::Result<()> {
    let shapes = [Shape::Cube, Shape::Sphere, Shape::Cylinder, Shape::Cone];
    let none = ComponentId::NONE;
    for i in 0..RING {
        let e = i + 1;
        let shape = shapes[i as usize % shapes.len()];
        alice.send(e, none, 0, Command::CreateEntity { shape, name: format!("object {e}"), parent: 0 }).await?;
        let [x, y, z] = ring_position(i, 0.0);
        alice.send(e, Transform::id(), 0, Command::SetTransform(transform(x, y, z, 0.0, 0.8))).await?;
        let hue = i as f32 / RING as f32;
        let color = [
            0.5 + 0.5 * (hue * std::f32::consts::TAU).cos(),
            0.5 + 0.5 * (hue * std::f32::consts::TAU + 2.1).cos(),
            0.5 + 0.5 * (hue * std::f32::consts::TAU + 4.2).cos(),
            1.0,
        ];
        alice
            .send(
                e,
                Material::id(),
                0,
                Command::SetMaterial(Material { base_color: color, metallic: 0.0, roughness: 0.6 }),
            )
            .await?;
    }
    alice.send(TABLE, none, 0, Command::CreateEntity { shape: Shape::Cube, name: "table".into(), parent: 0 }).await?;
    let top = Mesh {
        positions: vec![[-1.5, 0.9, -1.0], [1.5, 0.9, -1.0], [1.5, 0.9, 1.0], [-1.5, 0.9, 1.0], [0.0, 0.0, 0.0]],
        indices: vec![0, 2, 1, 0, 3, 2],
    };
    alice.send(TABLE, Mesh::id(), 0, Command::SetComponent { data: top.encode() }).await?;
    // Legs as a pyramid under the top: faces added, then a vertex dragged.
    alice.send(TABLE, Mesh::id(), 0, Command::AddFaces { indices: vec![0, 1, 4, 1, 2, 4, 2, 3, 4, 3, 0, 4] }).await?;
    alice
        .send(TABLE, Mesh::id(), 0, Command::MoveVertices { indices: vec![4], positions: vec![[0.0, 0.05, 0.0]] })
        .await?;
    alice
        .send(
            TABLE,
            Material::id(),
            0,
            Command::SetMaterial(Material { base_color: [0.55, 0.35, 0.2, 1.0], metallic: 0.0, roughness: 0.8 }),
        )
        .await?;
    alice.send(LAMP, none, 0, Command::CreateEntity { shape: Shape::Sphere, name: "lamp".into(), parent: 0 }).await?;
    alice.send(LAMP, Parent::id(), 0, Command::Reparent { parent: TABLE }).await?;
    alice.send(LAMP, Transform::id(), 0, Command::SetTransform(transform(0.8, 1.3, 0.0, 0.0, 0.4))).await?;
    alice
        .send(
            LAMP,
            Material::id(),
            0,
            Command::SetMaterial(Material { base_color: [1.0, 0.95, 0.6, 1.0], metallic: 0.0, roughness: 0.2 }),
        )
        .await?;
    alice.send(LAMP, Name::id(), 0, Command::Rename { name: "desk lamp".into() }).await?;
    alice.send(TABLE, ToolState::id(), 0, Command::ChangeTool { tool: "mesh-edit".into() }).await?;
    alice.settle().await
}

/// What the live viewer saw.
struct Live {
    frames: u32,
    adapter: String,
    /// (seq, state hash, image without HUD) at a moment mid-session.
    middle: Option<(u64, [u8; 32], Option<Image>)>,
    /// The same at the head after editing.
    last: Option<(u64, [u8; 32], Option<Image>)>,
    bytes_in: u64,
    compressed: (u64, u64),
}

/// The live viewer: follows the session over QUIC and renders frames until `done` and caught up
/// with `head()`.
fn live_viewer(
    server: Server,
    key: SigningKey,
    session: SessionId,
    args: &DemoArgs,
    editing: Arc<AtomicBool>,
    final_head: Arc<std::sync::atomic::AtomicU64>,
    store: Arc<theta_store::Store>,
) -> anyhow::Result<Live> {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let mut renderer = match Renderer::headless() {
        Ok(r) => Some(r),
        Err(e) => {
            eprintln!(
                "theta demo: cannot render: {e}\n  continuing without frames (the replay check still compares state hashes)"
            );
            None
        }
    };
    let adapter = renderer.as_ref().map_or_else(|| "no adapter".to_string(), Renderer::adapter_name);
    let eyes = eyes(args.stereo, args.width, args.height);
    let (w, h) = (args.width, args.height);
    rt.block_on(async {
        let mut c = Client::connect(server.options(key, session)).await.context("viewer connects")?;
        let mut live = Live { frames: 0, adapter, middle: None, last: None, bytes_in: 0, compressed: (0, 0) };
        let period = Duration::from_secs_f64(1.0 / args.fps.max(0.1));
        let started = Instant::now();
        let mut next = Instant::now();
        let mut last_frame = Instant::now();
        let mut render_ms = 0.0;
        let mut rate = (Instant::now(), store.metrics().appends_accepted, 0.0);
        let mut heartbeat = Instant::now();
        loop {
            if heartbeat.elapsed() > Duration::from_secs(1) {
                heartbeat = Instant::now();
                c.heartbeat().await?;
            }
            match tokio::time::timeout(Duration::from_millis(10), c.next_event()).await {
                Ok(Ok(Event::Resynced { reason })) => println!("  viewer resynced: {reason}"),
                Ok(Ok(Event::Restarted { reason })) => println!("  viewer reconnected: {reason}"),
                Ok(Ok(_)) | Err(_) => {}
                Ok(Err(e)) => return Err(e).context("viewer connection"),
            }
            let Some(m) = c.mirror() else { continue };
            let head = final_head.load(SeqCst);
            let caught_up = head != 0 && m.seq() == head;
            if Instant::now() >= next || caught_up {
                next += period;
                let interval_ms = last_frame.elapsed().as_secs_f64() * 1e3;
                last_frame = Instant::now();
                let metrics = store.metrics();
                if rate.0.elapsed() > Duration::from_millis(500) {
                    let secs = rate.0.elapsed().as_secs_f64();
                    rate =
                        (Instant::now(), metrics.appends_accepted, (metrics.appends_accepted - rate.1) as f64 / secs);
                }
                let rejected: u64 = RejectionCode::ALL.iter().map(|c| metrics.rejected(*c)).sum();
                let extra = format!(
                    "appends {:.0}/s  conflicts {}  rejections {}",
                    rate.2,
                    metrics.rejected(RejectionCode::Conflict),
                    rejected
                );
                let text = hud(1e3 / interval_ms.max(1e-3), render_ms, m, Some(&c.telemetry()), &extra);
                let scene = extract(m);
                if let Some(renderer) = renderer.as_mut() {
                    let t = Instant::now();
                    let img = renderer.render(&scene, &eyes, w, h, Some(&text))?;
                    render_ms = t.elapsed().as_secs_f64() * 1e3;
                    let path = args.out.join(format!("frame-{:05}.png", live.frames));
                    img.save_png(&path).with_context(|| format!("write {}", path.display()))?;
                    live.frames += 1;
                }
                let mid = started.elapsed().as_secs_f64() > args.seconds / 2.0 && editing.load(SeqCst);
                if (mid && live.middle.is_none()) || caught_up {
                    let clean = match renderer.as_mut() {
                        Some(r) => Some(r.render(&scene, &eyes, w, h, None)?),
                        None => None,
                    };
                    let snap = Some((m.seq(), m.state_hash(), clean));
                    if caught_up {
                        live.last = snap;
                    } else {
                        live.middle = snap;
                    }
                }
            }
            if caught_up {
                let t = c.telemetry();
                live.bytes_in = t.bytes_in;
                live.compressed = t.compressed_bytes;
                return Ok(live);
            }
        }
    })
}

/// Runs the demo.
pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    let started = Instant::now();
    let (dir, tmp) = match &args.data {
        Some(d) => (d.clone(), None),
        None => {
            let t = tempfile::tempdir().context("create a temporary data directory")?;
            (t.path().to_path_buf(), Some(t))
        }
    };
    std::fs::create_dir_all(&args.out).with_context(|| format!("create {}", args.out.display()))?;
    for old in std::fs::read_dir(&args.out)?.flatten() {
        if old.file_name().to_string_lossy().starts_with("frame-") {
            let _ = std::fs::remove_file(old.path());
        }
    }
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    // The owner is the service admin, so the default admission lets it create the session.
    let keys: Vec<SigningKey> = (0..5).map(|_| SigningKey::generate(&mut rand::rngs::OsRng)).collect();
    let (owner, alice, bob, vera, eye) = (&keys[0], &keys[1], &keys[2], &keys[3], &keys[4]);
    let admins: std::collections::BTreeSet<_> = [author_key(owner)].into();
    let config = ServeConfig {
        store: StoreConfig {
            rate_per_sec: 20_000.0,
            rate_burst: 5_000.0,
            admission: theta_store::Admission::Keys(admins.clone()),
            ..StoreConfig::default()
        },
        access: theta_gateway::auth::AccessConfig { admins, ..Default::default() },
        ..ServeConfig::loopback(dir.clone())
    };
    let running = rt.block_on(theta_gateway::server::start(config)).context("start the service")?;
    let quic = running.quic_addr.context("QUIC endpoint")?;
    let fingerprint = running.quic_fingerprint.clone().context("QUIC fingerprint")?;
    println!("theta demo: service on loopback (data directory {})", dir.display());
    println!("  gRPC    http://{}", running.grpc_addr);
    println!("  QUIC    {quic}  certificate sha256 {fingerprint}");
    if let Some(m) = running.metrics_addr {
        println!("  metrics http://{m}/metrics");
    }
    if let Some(w) = running.http_addr {
        println!("  web     http://{w}/ (browser viewer, WebRTC signalling)");
    }
    let mut pin = [0u8; 32];
    hex::decode_to_slice(&fingerprint, &mut pin)?;
    let server = || Server { addr: quic, pin };

    // The owner creates the session and grants roles.
    let session = SessionId(rand::random());
    let store = running.store().clone();
    let mut lamport = 0;
    let mut own = |command: Command| {
        lamport += 1;
        let body = CommandBody {
            session,
            author: author_key(owner),
            lamport,
            nonce: rand::random(),
            wall_clock_ms: 0,
            entity: 0,
            component: ComponentId::NONE,
            base_version: 0,
            command,
        };
        store.append(&Envelope::sign(&body, owner).encode())
    };
    own(Command::CreateSession { name: "demo scene".into() })?;
    for (k, role) in [(alice, Role::Editor), (bob, Role::Editor), (vera, Role::Viewer), (eye, Role::Viewer)] {
        own(Command::GrantRole { key: author_key(k), role })?;
    }
    println!("session {session}: owner, editors alice and bob, viewers vera and the live viewer");

    // The live viewer renders on its own thread.
    let editing = Arc::new(AtomicBool::new(true));
    let final_head = Arc::new(std::sync::atomic::AtomicU64::new(0));
    let viewer = {
        let (s, k, e, f, st) = (server(), eye.clone(), editing.clone(), final_head.clone(), store.clone());
        let a = DemoArgs { data: None, ..args.clone() };
        std::thread::spawn(move || live_viewer(s, k, session, &a, e, f, st))
    };

    let edit_started = Instant::now();
    let (alice_n, bob_n, vera_rejections) = rt.block_on(async {
        let mut a = Editor::connect("alice", alice.clone(), session, &server()).await?;
        let mut b = Editor::connect("bob", bob.clone(), session, &server()).await?;
        let mut v = Editor::connect("vera", vera.clone(), session, &server()).await?;
        build(&mut a).await?;
        println!("alice built the scene: {RING} objects in a ring, a table with a mesh top and legs, a lamp on it");
        // Vera holds only the viewer role: her edit is refused.
        v.send(500, ComponentId::NONE, 0, Command::CreateEntity { shape: Shape::Cube, name: "nope".into(), parent: 0 })
            .await?;
        v.settle().await?;
        // Bob selects, changes tool, and makes a stale reparent (the lamp's parent moved since).
        b.send(3, Selection::id(), 0, Command::Select).await?;
        b.send(7, Selection::id(), 0, Command::Select).await?;
        b.send(3, ToolState::id(), 0, Command::ChangeTool { tool: "move".into() }).await?;
        b.send(LAMP, Parent::id(), 0, Command::Reparent { parent: 0 }).await?;
        b.settle().await?;
        // Both animate concurrently: bob moves the ring, alice spins the table and lamp.
        let seconds = args.seconds;
        let bob_task = async {
            let t0 = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(16));
            while t0.elapsed().as_secs_f64() < seconds {
                tick.tick().await;
                let t = t0.elapsed().as_secs_f32();
                for i in (0..RING).filter(|i| i % 2 == 0) {
                    let [x, y, z] = ring_position(i, t);
                    b.send(i + 1, Transform::id(), 0, Command::SetTransform(transform(x, y, z, t, 0.8))).await?;
                }
            }
            b.settle().await?;
            anyhow::Ok(())
        };
        let alice_task = async {
            let t0 = Instant::now();
            let mut tick = tokio::time::interval(Duration::from_millis(16));
            while t0.elapsed().as_secs_f64() < seconds {
                tick.tick().await;
                let t = t0.elapsed().as_secs_f32();
                for i in (0..RING).filter(|i| i % 2 == 1) {
                    let [x, y, z] = ring_position(i, t);
                    a.send(i + 1, Transform::id(), 0, Command::SetTransform(transform(x, y, z, -t, 0.8))).await?;
                }
                a.send(TABLE, Transform::id(), 0, Command::SetTransform(transform(0.0, 0.0, 0.0, t * 0.3, 1.0)))
                    .await?;
            }
            a.send(LAMP, Name::id(), 0, Command::Rename { name: "lamp (done)".into() }).await?;
            a.settle().await?;
            anyhow::Ok(())
        };
        let (rb, ra) = tokio::join!(bob_task, alice_task);
        rb?;
        ra?;
        for e in [&a, &b] {
            for r in &e.rejected {
                println!("  {} rejected: {r}", e.name);
            }
        }
        for r in &v.rejected {
            println!("  vera rejected: {r}");
        }
        ensure!(v.rejected.len() == 1 && v.accepted == 0, "vera's edit must be refused");
        ensure!(
            b.rejected.iter().any(|r| r.contains("conflict")),
            "bob's stale reparent must conflict: {:?}",
            b.rejected
        );
        anyhow::Ok((a.accepted, b.accepted, v.rejected.len()))
    })?;
    let edit_secs = edit_started.elapsed().as_secs_f64();
    editing.store(false, SeqCst);
    let head = store.head(&session)?;
    final_head.store(head.seq, SeqCst);
    let live = viewer.join().expect("viewer thread")?;
    println!("rendered {} live frames into {} on {}", live.frames, args.out.display(), live.adapter);

    // Replay from history over gRPC and compare with what the viewer saw live.
    let (last_seq, live_hash, live_image) = live.last.as_ref().context("the viewer never reached the head")?;
    ensure!(*last_seq == head.seq, "viewer stopped at {last_seq}, head is {}", head.seq);
    let mut renderer = if live.frames > 0 { Renderer::headless().ok() } else { None };
    let eyes = eyes(args.stereo, args.width, args.height);
    let renderer_used = renderer.is_some();
    let replay = rt.block_on(async {
        // From the very start, every entry folded again.
        // Vera, a viewer, reads the history with her own credentials.
        let client = HistoryClient::connect(&format!("http://{}", running.grpc_addr), None, Some(vera.clone())).await?;
        let mut h = Playback::open(client, session, 1).await?;
        while h.step(4_096).await? > 0 {}
        let replayed: &Projection = &h.mirror;
        ensure!(replayed.seq() == head.seq, "replay reached {} of {}", replayed.seq(), head.seq);
        ensure!(replayed.state_hash() == *live_hash, "replayed state hash differs from the live one");
        if let (Some(r), Some(live_image)) = (renderer.as_mut(), live_image) {
            let image = r.render(&extract(replayed), &eyes, args.width, args.height, None)?;
            ensure!(same_image(&image, live_image), "the replayed scene looks different from the live one");
        }
        // Opened directly at the mid-session seq (checkpoint + replay on the server).
        let middle = match &live.middle {
            Some((seq, hash, img)) => {
                h.seek(*seq).await?;
                ensure!(h.mirror.state_hash() == *hash, "state at seq {seq} differs from live");
                if let (Some(r), Some(img)) = (renderer.as_mut(), img) {
                    let image = r.render(&extract(&h.mirror), &eyes, args.width, args.height, None)?;
                    ensure!(same_image(&image, img), "the scene at seq {seq} looks different from live");
                }
                Some(*seq)
            }
            None => None,
        };
        anyhow::Ok(middle)
    })?;
    println!(
        "replayed {} entries from history over gRPC: state hash {} = live",
        head.seq,
        hex::encode(&live_hash[..8])
    );
    if let Some(seq) = replay {
        let what = if renderer_used { "same state hash and same image" } else { "same state hash" };
        println!("opened at seq {seq} from history: {what} as live at seq {seq}");
    }

    let metrics = store.metrics();
    let edits = alice_n + bob_n;
    println!();
    println!("summary");
    println!("  entries            {}", head.seq);
    println!(
        "  edits accepted     {edits} ({:.0} appends/s over {edit_secs:.1} s, 2 editors over QUIC)",
        edits as f64 / edit_secs
    );
    println!("  rejections:");
    for code in RejectionCode::ALL {
        let n = metrics.rejected(code);
        if n > 0 {
            println!("    {:<22} {n}", code.counter());
        }
    }
    println!("  viewer refused     {vera_rejections} edit (viewer role)");
    let (c, r) = live.compressed;
    println!(
        "  streamed to viewer {:.1} KB ({:.1} KB before zstd-stream, {:.1}x)",
        live.bytes_in as f64 / 1e3,
        r as f64 / 1e3 + (live.bytes_in - c) as f64 / 1e3,
        (r + live.bytes_in - c) as f64 / live.bytes_in.max(1) as f64
    );
    println!("  frames             {} in {}", live.frames, args.out.display());
    let what = if renderer_used { "state hash and image equal live" } else { "state hash equals live; no frames" };
    println!("  replay check       passed ({what})");
    println!("  took               {:.1} s", started.elapsed().as_secs_f64());
    rt.block_on(running.shutdown());
    if tmp.is_some() {
        println!("  data directory     {} (temporary, removed now)", dir.display());
    }
    Ok(())
}
