//! Frame time of the renderer for 1k, 10k and 100k instanced entities, mono, stereo side by
//! side, and stereo into the two layers of one image (what the OpenXR path does with a
//! swapchain image; here without a runtime) with a pass per eye and with one multiview pass,
//! 1280×720 per eye: instance upload, draw, submit and GPU completion; no read-back. Prints the
//! adapter so the figures can be attributed.
//!
//! `cargo bench -p theta-viewer --bench frame` (`THETA_BENCH_FRAMES`, default 30;
//! `THETA_BENCH_SIZES`, default `1000,10000,100000`).

use std::time::Instant;

mod common;

use common::{move_some, scene};

use theta_viewer::scene::Scene;
use theta_viewer::{DEFAULT_IPD, Orbit, Renderer};

const W: u32 = 1280;
const H: u32 = 720;

fn main() {
    let frames: usize = std::env::var("THETA_BENCH_FRAMES").ok().and_then(|s| s.parse().ok()).unwrap_or(30);
    let mut r = Renderer::headless().expect("a graphics adapter");
    println!("adapter: {}", r.adapter_name());
    let layered = r.device().create_texture(&wgpu::TextureDescriptor {
        label: Some("two-layer eye image"),
        size: wgpu::Extent3d { width: W, height: H, depth_or_array_layers: 2 },
        mip_level_count: 1,
        sample_count: 1,
        dimension: wgpu::TextureDimension::D2,
        format: theta_viewer::render::COLOR_FORMAT,
        usage: wgpu::TextureUsages::RENDER_ATTACHMENT,
        view_formats: &[],
    });
    let both = layered.create_view(&wgpu::TextureViewDescriptor {
        dimension: Some(wgpu::TextureViewDimension::D2Array),
        array_layer_count: Some(2),
        ..Default::default()
    });
    let layers = [0, 1].map(|i| {
        layered.create_view(&wgpu::TextureViewDescriptor {
            dimension: Some(wgpu::TextureViewDimension::D2),
            base_array_layer: i,
            array_layer_count: Some(1),
            ..Default::default()
        })
    });
    // Draws one frame of `label`'s kind.
    let draw = |r: &mut Renderer, s: &Scene, label: &str, eyes: &[theta_viewer::Eye]| {
        if label == "stereo, layers" {
            r.draw_layers([&layers[0], &layers[1]], &[s], &[eyes[0], eyes[1]], W, H);
        } else if label == "stereo, multiview layers" {
            r.draw_array(&both, [&layers[0], &layers[1]], &[s], &[eyes[0], eyes[1]], W, H);
        } else {
            r.draw(s, eyes, W, H, None);
        }
    };
    let mut clock = 0usize;
    println!(
        "| entities | view | frame time, pipelined | fps | latency (one frame alone), mean | p90 | CPU part | of which preparing instances | instances uploaded per frame |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- | --- |");
    let sizes: Vec<usize> = std::env::var("THETA_BENCH_SIZES")
        .unwrap_or_else(|_| "1000,10000,100000".into())
        .split(',')
        .map(|n| n.trim().parse().expect("THETA_BENCH_SIZES: numbers separated by commas"))
        .collect();
    for n in sizes {
        let mut s = scene(n);
        let side = (n as f32).sqrt() * 1.5;
        let head = Orbit { distance: side * 0.9, pitch: 0.6, ..Orbit::default() }.eye(W as f32 / H as f32);
        let stereo = head.stereo(DEFAULT_IPD).to_vec();
        let mut views = vec![("mono", vec![head]), ("stereo", stereo.clone()), ("stereo, layers", stereo.clone())];
        if r.has_multiview() {
            views.push(("stereo, multiview layers", stereo));
        }
        for (label, eyes) in views {
            for _ in 0..3 {
                draw(&mut r, &s, label, &eyes);
            }
            let mut times = Vec::with_capacity(frames);
            let (mut cpu, mut prep, mut uploads) = (0.0, 0.0, 0);
            for _ in 0..frames {
                clock += 1;
                let f = clock;
                // A live scene: 1 % of the objects move every frame.
                move_some(&mut s, f);
                let t = Instant::now();
                draw(&mut r, &s, label, &eyes);
                r.finish();
                times.push(t.elapsed().as_secs_f64() * 1e3);
                cpu += r.stats.cpu.as_secs_f64() * 1e3;
                prep += r.stats.prepare.as_secs_f64() * 1e3;
                uploads += r.stats.instance_uploads;
            }
            // Throughput: frames submitted back to back, the CPU preparing the next frame while
            // the GPU draws the previous one (how a frame loop runs).
            let t = Instant::now();
            for _ in 0..frames {
                clock += 1;
                let i = clock % n;
                let list = &mut s.instances[i % 5];
                let j = (i / 5).min(list.len() - 1);
                list[j].model[3][1] += 0.001;
                draw(&mut r, &s, label, &eyes);
            }
            r.finish();
            let pipelined = t.elapsed().as_secs_f64() * 1e3 / frames as f64;
            times.sort_by(|a, b| a.total_cmp(b));
            let mean = times.iter().sum::<f64>() / times.len() as f64;
            let p90 = times[(times.len() * 9 / 10).min(times.len() - 1)];
            println!(
                "| {n} | {label} | {pipelined:.2} ms | {:.0} | {mean:.2} ms | {p90:.2} ms | {:.2} ms | {:.2} ms | {} |",
                1e3 / pipelined,
                cpu / frames as f64,
                prep / frames as f64,
                uploads / frames
            );
        }
    }
}
