//! `theta view`: shows a session, live over QUIC or at any point of its history over gRPC,
//! rendered headless to PNG frames (the window and OpenXR backends share the same renderer).

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail, ensure};
use theta_client::compress::{ZSTD, ZSTD_DICT, ZSTD_STREAM};
use theta_client::history::{HistoryClient, Playback};
use theta_client::quic::{Client, Event, Options, Telemetry, TransportChoice, Trust};
use theta_projector::Projection;
use theta_schemas::SessionId;
use theta_schemas::wire::Capabilities;
use theta_viewer::{DEFAULT_IPD, Eye, Image, Orbit, Renderer, badges, extract};

/// Options of `theta view`.
#[derive(Debug, clap::Args)]
pub struct ViewArgs {
    /// Session id (32 hex digits).
    #[arg(long)]
    pub session: String,
    /// Open the session at this seq from history (gRPC ReadState + ReadLog) instead of live.
    #[arg(long, value_name = "SEQ")]
    pub at: Option<u64>,
    /// Historical playback: entries applied between two frames (the speed; 0 pauses).
    #[arg(long, default_value_t = 1)]
    pub step: u64,
    /// Live: the server's QUIC address.
    #[arg(long, default_value = "127.0.0.1:50052")]
    pub quic: std::net::SocketAddr,
    /// Live: SHA-256 fingerprint of the server's QUIC certificate (hex, as `theta serve` logs it).
    #[arg(long)]
    pub fingerprint: Option<String>,
    /// Live: transport: quic, webrtc, or auto (QUIC, falling back to WebRTC after 3 s).
    #[arg(long, default_value = "quic", value_parser = ["quic", "webrtc", "auto"])]
    pub transport: String,
    /// Live: the WebRTC signalling URL (as `theta serve` logs it, `http://HOST:PORT/webrtc/offer`).
    #[arg(long, value_name = "URL", default_value = "http://127.0.0.1:50053/webrtc/offer")]
    pub webrtc: String,
    /// Render headless into PNG files (works without a GPU through Mesa's lavapipe).
    #[arg(long)]
    pub headless: bool,
    /// Show the session in a headset through OpenXR (build with `--features vr-openxr`).
    #[arg(long)]
    pub xr: bool,
    /// Where headless frames go.
    #[arg(long, value_name = "DIR", default_value = "theta-frames")]
    pub out: PathBuf,
    /// Frames to render (headless: default 30; window: until it is closed).
    #[arg(long)]
    pub frames: Option<u32>,
    /// Render both eyes side by side (the path a headset uses).
    #[arg(long)]
    pub stereo: bool,
    /// Width of one eye's image, pixels.
    #[arg(long, default_value_t = 640)]
    pub width: u32,
    /// Image height, pixels.
    #[arg(long, default_value_t = 360)]
    pub height: u32,
    /// Headset: at the last frame (`--frames`), write what each eye saw without the headset's
    /// panels, ray and markers (`left.png`, `right.png`) and where the eyes were (`eyes.json`)
    /// into DIR.
    #[arg(long, value_name = "DIR", requires_all = ["xr", "frames"])]
    pub capture: Option<PathBuf>,
    /// Headless: render from the eyes of a headset capture (the `eyes.json` that `--capture`
    /// writes), at its size, instead of the default camera: the desktop's view of what the
    /// headset showed.
    #[arg(long, value_name = "FILE", conflicts_with = "xr")]
    pub eyes: Option<PathBuf>,
    /// Headless: leave the HUD out of the frames.
    #[arg(long)]
    pub no_hud: bool,
    #[command(flatten)]
    pub server: crate::client::Server,
}

/// The eyes to render from: mono, or a stereo pair around the same head pose.
pub fn eyes(stereo: bool, width: u32, height: u32) -> Vec<Eye> {
    let head = Orbit::default().eye(width as f32 / height as f32);
    if stereo { head.stereo(DEFAULT_IPD).to_vec() } else { vec![head] }
}

/// Live telemetry and counts for the HUD.
pub fn hud(fps: f64, frame_ms: f64, mirror: &Projection, t: Option<&Telemetry>, extra: &str) -> String {
    let mut s =
        format!("fps {fps:.0}  render {frame_ms:.1} ms  entities {}  seq {}\n", mirror.entity_count(), mirror.seq());
    if let Some(t) = t {
        let server = t.server.clone().unwrap_or_default();
        let rtt = t.rtt.map_or(server.rtt_us as f64 / 1e3, |r| r.as_secs_f64() * 1e3);
        s += &format!(
            "{}  rtt {rtt:.2} ms  in {:.1} KB/s  deltas {}/s\n",
            t.transport,
            server.bytes_out_per_sec as f64 / 1e3,
            server.deltas_per_sec
        );
    }
    s += extra;
    s
}

#[cfg(feature = "vr-openxr")]
/// Writes a headset capture's eyes: size per eye, then each eye's position, orientation
/// (quaternion x, y, z, w) and field of view (left, right, up, down, radians).
fn write_eyes(path: &Path, width: u32, height: u32, eyes: &[Eye]) -> anyhow::Result<()> {
    let eyes: Vec<serde_json::Value> = eyes
        .iter()
        .map(|e| {
            serde_json::json!({
                "position": e.position.to_array(),
                "orientation": e.orientation.to_array(),
                "fov": [e.fov.left, e.fov.right, e.fov.up, e.fov.down],
            })
        })
        .collect();
    let doc = serde_json::json!({ "width": width, "height": height, "eyes": eyes });
    std::fs::write(path, serde_json::to_string_pretty(&doc)?).with_context(|| format!("write {}", path.display()))
}

/// Reads what [`write_eyes`] wrote.
fn read_eyes(path: &Path) -> anyhow::Result<(u32, u32, Vec<Eye>)> {
    #[derive(serde::Deserialize)]
    struct File {
        width: u32,
        height: u32,
        eyes: Vec<EyeJson>,
    }
    #[derive(serde::Deserialize)]
    struct EyeJson {
        position: [f32; 3],
        orientation: [f32; 4],
        fov: [f32; 4],
    }
    let text = std::fs::read_to_string(path).with_context(|| format!("read {}", path.display()))?;
    let f: File = serde_json::from_str(&text).with_context(|| format!("{} is not an eyes file", path.display()))?;
    ensure!(
        (1..=2).contains(&f.eyes.len()) && f.width > 0 && f.height > 0 && f.width <= 8_192 && f.height <= 8_192,
        "{}: one or two eyes and a size of 1..=8192 pixels expected",
        path.display()
    );
    let eyes = f
        .eyes
        .iter()
        .map(|e| Eye {
            position: glam::Vec3::from_array(e.position),
            orientation: glam::Quat::from_array(e.orientation).normalize(),
            fov: theta_viewer::Fov { left: e.fov[0], right: e.fov[1], up: e.fov[2], down: e.fov[3] },
        })
        .collect();
    Ok((f.width, f.height, eyes))
}

fn frame_path(dir: &Path, i: u32) -> PathBuf {
    dir.join(format!("frame-{i:05}.png"))
}

/// Runs `theta view`.
pub fn run(a: ViewArgs) -> anyhow::Result<()> {
    let session = SessionId::from_hex(&a.session).with_context(|| format!("session id {:?}", a.session))?;
    if a.xr {
        #[cfg(feature = "vr-openxr")]
        match theta_viewer::xr::start() {
            Ok(system) => return run_xr(a, session, system),
            Err(e) if a.headless => eprintln!("theta view: {e}\ncontinuing with the headless backend"),
            Err(e) => bail!("{e}"),
        }
        #[cfg(not(feature = "vr-openxr"))]
        bail!("this theta was built without OpenXR: rebuild with `cargo build --release --features vr-openxr`");
    }
    if !a.headless {
        return run_window(a, session);
    }
    let frames = a.frames.unwrap_or(30);
    std::fs::create_dir_all(&a.out).with_context(|| format!("create {}", a.out.display()))?;
    let mut renderer = Renderer::headless()?;
    println!("adapter: {}", renderer.adapter_name());
    let (width, height, eyes) = match &a.eyes {
        Some(path) => read_eyes(path)?,
        None => (a.width, a.height, eyes(a.stereo, a.width, a.height)),
    };
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    let mut last = Instant::now();
    let mut render = |mirror: &Projection, i: u32, telemetry: Option<&Telemetry>, extra: &str| -> anyhow::Result<()> {
        let frame_ms = last.elapsed().as_secs_f64() * 1e3;
        last = Instant::now();
        let text = hud(1e3 / frame_ms.max(1e-3), frame_ms, mirror, telemetry, extra);
        let text = (!a.no_hud).then_some(text.as_str());
        let img = renderer.render(&extract(mirror), &eyes, width, height, text)?;
        img.save_png(&frame_path(&a.out, i)).with_context(|| format!("write frame {i}"))
    };
    match a.at {
        Some(at) => rt.block_on(async {
            let mut h = Playback::open(a.server.connect().await?, session, at).await.map_err(crate::client::status)?;
            println!("opened session {session} at seq {} (head {})", h.mirror.seq(), h.head);
            for i in 0..frames {
                render(&h.mirror, i, None, &h.timeline())?;
                if h.step(a.step).await? == 0 && a.step > 0 {
                    println!("reached the head at seq {}", h.mirror.seq());
                    break;
                }
            }
            anyhow::Ok(())
        })?,
        None => rt.block_on(async {
            let mut c = connect_live(&a, session).await?;
            println!("connected as {:?}; following session {session} live", c.welcome().role);
            let mut counters = ServerCounters::connect(&a.server).await;
            let mut i = 0;
            let mut next_frame = Instant::now();
            while i < frames {
                match tokio::time::timeout(Duration::from_millis(33), c.next_event()).await {
                    Ok(Ok(Event::Resynced { reason })) => println!("resynced: {reason}"),
                    Ok(Ok(Event::Restarted { reason })) => println!("reconnected: {reason}"),
                    Ok(Ok(_)) | Err(_) => {}
                    Ok(Err(e)) => return Err(e.into()),
                }
                let line = counters.line().await.to_string();
                if Instant::now() >= next_frame
                    && let Some(m) = c.mirror()
                {
                    render(m, i, Some(&c.telemetry()), &line)?;
                    i += 1;
                    next_frame = Instant::now() + Duration::from_millis(33);
                }
            }
            anyhow::Ok(())
        })?,
    }
    println!("wrote {frames} frames to {}", a.out.display());
    Ok(())
}

/// The server's append rate, conflicts and rejections for the HUD, polled over gRPC (`Stats`)
/// about once a second; silent when the gRPC endpoint cannot be reached.
struct ServerCounters {
    /// Stats needs a service admin key; with another key the HUD line stays empty.
    client: Option<HistoryClient>,
    last: Option<(Instant, u64)>,
    next: Instant,
    line: String,
}

impl ServerCounters {
    async fn connect(server: &crate::client::Server) -> ServerCounters {
        let client = tokio::time::timeout(Duration::from_millis(500), server.connect()).await.ok().and_then(Result::ok);
        ServerCounters { client, last: None, next: Instant::now(), line: String::new() }
    }

    /// The HUD line, refreshed when due.
    async fn line(&mut self) -> &str {
        if Instant::now() < self.next {
            return &self.line;
        }
        self.next = Instant::now() + Duration::from_secs(1);
        let Some(c) = self.client.as_ref() else { return &self.line };
        let reply = tokio::time::timeout(Duration::from_millis(300), c.stats()).await;
        let Ok(Ok(reply)) = reply else {
            self.client = None;
            return &self.line;
        };
        let counters = reply.counters;
        let get = |name: &str| counters.iter().find(|c| c.name == name).map_or(0, |c| c.value);
        let appends = get("appends_accepted");
        let rejections: u64 = theta_store::RejectionCode::ALL.iter().map(|c| get(c.counter())).sum();
        let rate = match self.last {
            Some((at, n)) => appends.saturating_sub(n) as f64 / at.elapsed().as_secs_f64().max(1e-3),
            None => 0.0,
        };
        self.last = Some((Instant::now(), appends));
        self.line = format!("appends {rate:.0}/s  conflicts {}  rejections {rejections}", get("conflicts"));
        &self.line
    }
}

/// Connects to the live session as `--key`, pinning `--fingerprint`.
async fn connect_live(a: &ViewArgs, session: SessionId) -> anyhow::Result<Client> {
    let key = a.server.signing_key("live viewing (a key with a role in the session)")?;
    let mut pin = [0u8; 32];
    match a.fingerprint.as_deref() {
        // Accept the value as logged (quoted) and the colon-separated form.
        Some(fp) => {
            let fp: String = fp.chars().filter(|c| c.is_ascii_hexdigit()).collect();
            hex::decode_to_slice(&fp, &mut pin).context("--fingerprint must be 64 hex digits (SHA-256)")?;
        }
        None if a.transport == "webrtc" => {}
        None => bail!("live viewing over QUIC needs --fingerprint (logged by theta serve)"),
    }
    Ok(Client::connect(Options {
        server: a.quic,
        server_name: "localhost".into(),
        trust: Trust::Fingerprint(pin),
        key,
        session,
        capabilities: Capabilities {
            compression: vec![ZSTD_STREAM.into(), ZSTD_DICT.into(), ZSTD.into()],
            interest_management: false,
            max_chunk_bytes: 0,
            datagrams: false,
            compact_deltas: false,
        },
        transport: match a.transport.as_str() {
            "webrtc" => TransportChoice::WebRtc,
            "auto" => TransportChoice::Auto { quic_timeout: Duration::from_secs(3) },
            _ => TransportChoice::Quic,
        },
        webrtc_signal: Some(a.webrtc.clone()),
    })
    .await?)
}

/// The session side of the window and headset backends, on its own thread: follows the session
/// live or plays its history (as `controls` say) and publishes each new scene and HUD text into
/// `frame`, until `controls.quit`.
fn spawn_session_side(
    a: ViewArgs,
    session: SessionId,
    frame: std::sync::Arc<std::sync::Mutex<theta_viewer::window::Frame>>,
    controls: std::sync::Arc<std::sync::Mutex<theta_viewer::window::Controls>>,
) -> std::thread::JoinHandle<anyhow::Result<()>> {
    use theta_viewer::window::Frame;
    let (f, c) = (frame, controls);
    std::thread::spawn(move || -> anyhow::Result<()> {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
        let quit = || c.lock().expect("controls").quit;
        let publish = |m: &Projection, hud_text: String, status: String, seqs: Option<(u64, u64)>| {
            let mut scene = extract(m);
            scene.labels = badges(m, BADGES);
            *f.lock().expect("frame") = Frame { scene: std::sync::Arc::new(scene), hud: hud_text, status, seqs };
        };
        rt.block_on(async {
            match a.at {
                Some(at) => {
                    let mut h =
                        Playback::open(a.server.connect().await?, session, at).await.map_err(crate::client::status)?;
                    let mut last = Instant::now();
                    while !quit() {
                        let ctl = *c.lock().expect("controls");
                        if let Some(seq) = ctl.seek {
                            c.lock().expect("controls").seek = None;
                            h.seek(seq).await?;
                            if seq == 0 {
                                h.head = h.mirror.seq();
                            }
                        } else if ctl.steps != 0 {
                            c.lock().expect("controls").steps = 0;
                            if ctl.steps > 0 {
                                h.step(ctl.steps as u64).await?;
                            } else {
                                let to = h.mirror.seq().saturating_sub(ctl.steps.unsigned_abs()).max(1);
                                h.seek(to).await?;
                            }
                        } else if !ctl.paused {
                            h.step(ctl.speed * a.step).await?;
                        }
                        let state = if ctl.paused { "paused" } else { "playing" };
                        let extra =
                            format!("{}\n{state} x{}  space: pause  arrows: step  +/-: speed", h.timeline(), ctl.speed);
                        let status = format!("{}\nhistory: {state} x{}", h.timeline(), ctl.speed);
                        let ms = last.elapsed().as_secs_f64() * 1e3;
                        last = Instant::now();
                        let seqs = Some((h.mirror.seq(), h.head));
                        publish(&h.mirror, hud(1e3 / ms.max(1e-3), ms, &h.mirror, None, &extra), status, seqs);
                        tokio::time::sleep(Duration::from_millis(33)).await;
                    }
                }
                None => {
                    let mut client = connect_live(&a, session).await?;
                    let mut counters = ServerCounters::connect(&a.server).await;
                    let mut next = Instant::now();
                    let mut last = Instant::now();
                    while !quit() {
                        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_millis(16), client.next_event()).await {
                            return Err(e.into());
                        }
                        let line = counters.line().await.to_string();
                        if Instant::now() >= next
                            && let Some(m) = client.mirror()
                        {
                            next = Instant::now() + Duration::from_millis(16);
                            let ms = last.elapsed().as_secs_f64() * 1e3;
                            last = Instant::now();
                            let status = format!("live  seq {}  entities {}", m.seq(), m.entity_count());
                            let text = hud(1e3 / ms.max(1e-3), ms, m, Some(&client.telemetry()), &line);
                            publish(m, text, status, None);
                        }
                    }
                }
            }
            anyhow::Ok(())
        })
    })
}

/// Entities labelled with their last editor in the window and the headset.
const BADGES: usize = 8;
/// The controls, as the headset's status panel lists them.
#[cfg(feature = "vr-openxr")]
const XR_HINTS_HISTORY: &str =
    "trigger on bar: scrub  R stick: step/speed\nA: play/pause  B: live  L stick: turn/teleport  grips: grab";
#[cfg(feature = "vr-openxr")]
const XR_HINTS_LIVE: &str = "L stick: turn/teleport  grips: move/scale the world";

/// The headset backend: the session side on a background thread; the OpenXR frame loop on this
/// one (the runtime submits on our queue inside `xrEndFrame`, so frame calls and queue
/// submissions stay on one thread). Live, or history from `--at` played at `--step` entries a
/// frame; `--frames` ends the session after that many frames.
#[cfg(feature = "vr-openxr")]
fn run_xr(a: ViewArgs, session: SessionId, system: theta_viewer::xr::XrSystem) -> anyhow::Result<()> {
    use std::sync::{Arc, Mutex};
    use theta_viewer::vr_input::Command;
    use theta_viewer::window::{Controls, Frame};
    use theta_viewer::xr::{Frame as XrFrame, XrViewer};

    let mut viewer = XrViewer::new(system)?;
    let (w, h) = viewer.eye_size();
    let passes = if viewer.renderer().has_multiview() { "both eyes per draw" } else { "a pass per eye" };
    println!(
        "OpenXR session started on {} ({w}×{h} per eye, {passes}); put the headset on",
        viewer.renderer().adapter_name()
    );
    let frame = Arc::new(Mutex::new(Frame::default()));
    let controls = Arc::new(Mutex::new(Controls::default()));
    let limit = a.frames.map(u64::from);
    let mut capture = a.capture.clone();
    if let Some(dir) = &capture {
        std::fs::create_dir_all(dir).with_context(|| format!("create {}", dir.display()))?;
    }
    let producer = spawn_session_side(a, session, frame.clone(), controls.clone());
    let mut exit_requested = false;
    let result = loop {
        if producer.is_finished() {
            break Ok(());
        }
        let (scene, seqs, status) = {
            let f = frame.lock().expect("frame");
            (f.scene.clone(), f.seqs, f.status.clone())
        };
        let hints = if seqs.is_some() { XR_HINTS_HISTORY } else { XR_HINTS_LIVE };
        viewer.panel = Some(format!("{status}\n{hints}"));
        viewer.set_timeline(seqs);
        let last = limit.is_some_and(|n| viewer.frames_ended + 1 >= n);
        let capturing = capture.is_some() && last;
        viewer.show_overlay = !capturing;
        match viewer.frame(&scene, capturing) {
            Ok(XrFrame::Exit) => break Ok(()),
            Ok(XrFrame::Rendered { commands, eyes, images }) => {
                if let (Some(dir), Some([left, right])) = (capture.take_if(|_| images.is_some()), images) {
                    left.save_png(&dir.join("left.png"))?;
                    right.save_png(&dir.join("right.png"))?;
                    write_eyes(&dir.join("eyes.json"), w, h, &eyes)?;
                    let shown = status.lines().next().unwrap_or_default();
                    println!("captured both eyes ({shown}) into {}", dir.display());
                }
                let mut ctl = controls.lock().expect("controls");
                for c in commands {
                    match c {
                        Command::Seek(seq) => ctl.seek = Some(seq),
                        Command::Step(n) => ctl.steps += n,
                        Command::TogglePause => ctl.paused = !ctl.paused,
                        Command::Speed(d) => ctl.speed = if d > 0 { ctl.speed * 2 } else { (ctl.speed / 2).max(1) },
                        Command::Live => ctl.seek = Some(0),
                    }
                }
            }
            Ok(_) => {}
            Err(e) => break Err(anyhow::Error::from(e)),
        }
        if !exit_requested && limit.is_some_and(|n| viewer.frames_ended >= n) {
            viewer.request_exit()?;
            exit_requested = true;
        }
    };
    controls.lock().expect("controls").quit = true;
    let produced = producer.join().map_err(|_| anyhow::anyhow!("the session thread panicked"))?;
    println!("OpenXR session ended after {} frames", viewer.frames_ended);
    if let Some(dir) = capture
        && result.is_ok()
    {
        bail!("the session ended before a frame was rendered to capture into {}", dir.display());
    }
    result.and(produced)
}

/// The window backend: the session side on a background thread, the window on this one.
fn run_window(a: ViewArgs, session: SessionId) -> anyhow::Result<()> {
    use std::sync::{Arc, Mutex};
    use theta_viewer::window::{self, Controls, Frame, WindowOptions};

    let frame = Arc::new(Mutex::new(Frame::default()));
    let controls = Arc::new(Mutex::new(Controls::default()));
    let options = WindowOptions {
        title: format!("theta · session {session}"),
        width: a.width * if a.stereo { 2 } else { 1 },
        height: a.height,
        stereo: a.stereo,
        frames: a.frames.map(u64::from),
    };
    let producer = spawn_session_side(a, session, frame.clone(), controls.clone());
    let shown = window::run(options, frame, controls.clone());
    controls.lock().expect("controls").quit = true;
    let produced = producer.join().map_err(|_| anyhow::anyhow!("the session thread panicked"))?;
    shown?;
    produced
}

/// Whether two images of the same scene match (historical vs live): at most 0.5 % of pixels
/// differ by more than 8/255 in a channel.
pub fn same_image(a: &Image, b: &Image) -> bool {
    a.diff_fraction(b, 8) <= 0.005
}
