//! Frames through a real OpenXR runtime: the headset frame loop (`XrViewer::frame`: wait,
//! locate the eyes, read the controllers, draw both eyes into the swapchain's two layers,
//! release, end) with 1k, 10k and 100k instanced entities, 1 % of them moving every frame. The
//! scene is shrunk onto a table in front of the user (the controls' grab-scale), so every
//! entity is in view. The timeline panel and the controller ray are drawn too.
//!
//! For each size it prints the frames per second the loop held, the display periods it missed
//! (the runtime's predicted display times skipping a period), the time blocked in
//! `xrWaitFrame`, the loop's own work per frame, and the latency from `xrWaitFrame`'s return to
//! the GPU finishing the frame (a thread polls the device and stamps each frame's completion).
//!
//! ```sh
//! XR_RUNTIME_JSON=<manifest> XRT_COMPOSITOR_NULL=1 \
//!   cargo bench -p theta-viewer --features vr-openxr --bench xr
//! ```
//!
//! `THETA_BENCH_FRAMES` (default 600 per size), `THETA_BENCH_SIZES` (default
//! `1000,10000,100000`), `THETA_XR_EYE` (per-eye image, default `1280x720`),
//! `THETA_XR_CAPTURE=DIR` (writes each size's last frame, both eyes, as PNGs there).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use theta_viewer::vr_input::Rig;
use theta_viewer::xr::{Frame, XrViewer, start};

mod common;

use common::{move_some, scene};

fn env_or(name: &str, default: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| default.to_string())
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

/// The value at fraction `q` of sorted `v`.
fn at(v: &[f64], q: f64) -> f64 {
    v[((v.len() as f64 * q) as usize).min(v.len() - 1)]
}

fn main() {
    let frames: usize = env_or("THETA_BENCH_FRAMES", "600").parse().expect("THETA_BENCH_FRAMES: a number");
    let sizes: Vec<usize> = env_or("THETA_BENCH_SIZES", "1000,10000,100000")
        .split(',')
        .map(|n| n.trim().parse().expect("THETA_BENCH_SIZES: numbers separated by commas"))
        .collect();
    let eye = env_or("THETA_XR_EYE", "1280x720");
    let (w, h) = eye.split_once('x').expect("THETA_XR_EYE: WIDTHxHEIGHT");
    let eye = (w.parse().expect("THETA_XR_EYE width"), h.parse().expect("THETA_XR_EYE height"));
    let capture = std::env::var("THETA_XR_CAPTURE").ok();

    let system = start().unwrap_or_else(|e| panic!("{e}"));
    let mut viewer = XrViewer::with_eye_size(system, Some(eye)).unwrap_or_else(|e| panic!("{e}"));
    viewer.set_timeline(Some((1, 100)));
    viewer.panel = Some("bench · frames through the runtime".into());
    println!("adapter: {}", viewer.renderer().adapter_name());
    println!("eye images: {}x{} pixels, two array layers", viewer.eye_size().0, viewer.eye_size().1);

    // Stamps each frame's GPU completion: a thread keeps polling the device, which runs the
    // work-done callbacks as soon as their submissions finish.
    let device = viewer.renderer().device().clone();
    let running = Arc::new(std::sync::atomic::AtomicBool::new(true));
    let poller = {
        let (device, running) = (device.clone(), running.clone());
        std::thread::spawn(move || {
            while running.load(std::sync::atomic::Ordering::Relaxed) {
                let _ = device.poll(wgpu::PollType::Wait { submission_index: None, timeout: None });
                std::thread::sleep(Duration::from_micros(50));
            }
        })
    };
    let done: Arc<Mutex<Vec<(usize, Instant)>>> = Arc::default();

    // Until the session runs.
    let empty = scene(0);
    let started = Instant::now();
    while !matches!(viewer.frame(&empty, false).unwrap_or_else(|e| panic!("{e}")), Frame::Rendered { .. }) {
        assert!(started.elapsed() < Duration::from_secs(30), "the session did not reach FOCUSED in 30 s");
    }

    println!(
        "| entities | frames | fps held | periods missed | display period | waited in xrWaitFrame, mean | loop work p50 / p99 | wait → GPU done p50 / p99 / max |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    let mut clock = 0usize;
    for n in sizes {
        let mut s = scene(n);
        let side = (n as f32).sqrt().ceil() * 1.5;
        // The whole grid as a 1.6 m model on a table 1.1 m in front, a little below the eyes.
        viewer.controls.rig = Rig { translation: glam::Vec3::new(0.0, 1.2, -1.1), yaw: 0.0, scale: 1.6 / side };
        for _ in 0..60 {
            clock += 1;
            move_some(&mut s, clock);
            viewer.frame(&s, false).unwrap_or_else(|e| panic!("{e}"));
        }
        done.lock().unwrap().clear();
        let (mut times, mut displays) = (Vec::with_capacity(frames), Vec::with_capacity(frames));
        let t = Instant::now();
        for i in 0..frames {
            clock += 1;
            move_some(&mut s, clock);
            match viewer.frame(&s, false).unwrap_or_else(|e| panic!("{e}")) {
                Frame::Rendered { .. } => {}
                other => panic!("frame {i}: the runtime stopped rendering ({other:?})"),
            }
            let ft = viewer.last_times;
            times.push(ft);
            displays.push(ft.display_time_ns);
            let done = done.clone();
            viewer.renderer().queue().on_submitted_work_done(move || done.lock().unwrap().push((i, Instant::now())));
        }
        let _ = device.poll(wgpu::PollType::Wait { submission_index: None, timeout: None });
        let elapsed = t.elapsed();
        std::thread::sleep(Duration::from_millis(20));
        // The runtime's nominal period: the shortest it predicted (it lengthens the period it
        // reports while frames come late).
        // After the timed frames: one more, read back, to show what was drawn.
        if let Some(dir) = &capture
            && let Frame::Rendered { images: Some(images), .. } =
                viewer.frame(&s, true).unwrap_or_else(|e| panic!("{e}"))
        {
            for (k, img) in images.iter().enumerate() {
                img.save_png(&std::path::Path::new(dir).join(format!("xr-{n}-eye{k}.png")))
                    .expect("write the captured eye");
            }
        }
        let period = times.iter().map(|f| f.period_ns).filter(|&p| p > 0).min().unwrap_or(1);
        let missed: i64 = displays.windows(2).map(|d| ((d[1] - d[0]) + period / 2) / period - 1).sum();
        let waited = times.iter().map(|f| ms(f.waited)).sum::<f64>() / frames as f64;
        let mut work: Vec<f64> = times.iter().map(|f| ms(f.work)).collect();
        work.sort_by(f64::total_cmp);
        let stamps = done.lock().unwrap().clone();
        let mut latency: Vec<f64> =
            stamps.iter().filter_map(|&(i, at)| Some(ms(at.duration_since(times.get(i)?.woke?)))).collect();
        latency.sort_by(f64::total_cmp);
        assert!(!latency.is_empty(), "no frame's GPU completion was seen");
        println!(
            "| {n} | {frames} | {:.1} | {missed} | {:.2} ms | {waited:.2} ms | {:.2} / {:.2} ms | {:.2} / {:.2} / {:.2} ms |",
            frames as f64 / elapsed.as_secs_f64(),
            period as f64 / 1e6,
            at(&work, 0.5),
            at(&work, 0.99),
            at(&latency, 0.5),
            at(&latency, 0.99),
            latency[latency.len() - 1],
        );
    }
    running.store(false, std::sync::atomic::Ordering::Relaxed);
    viewer.request_exit().unwrap_or_else(|e| panic!("{e}"));
    let asked = Instant::now();
    while !matches!(viewer.frame(&empty, false).unwrap_or_else(|e| panic!("{e}")), Frame::Exit) {
        assert!(asked.elapsed() < Duration::from_secs(10), "the session did not end within 10 s");
    }
    poller.join().unwrap();
    println!("session ended cleanly after {} frames", viewer.frames_ended);
}
