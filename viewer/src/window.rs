//! The window backend (winit, X11): the same renderer drawing into a window surface, with a
//! mouse camera (drag to orbit, wheel to zoom) and keys for playback (space: pause, ← →: step,
//! + −: speed, s: stereo, Esc: quit). It runs under Xvfb too.
//!
//! The session side (live client or history playback) runs on another thread and publishes
//! [`Frame`]s; the window reads the newest one each redraw and hands back [`Controls`].

use std::sync::{Arc, Mutex};

use winit::application::ApplicationHandler;
use winit::event::{ElementState, MouseButton, MouseScrollDelta, WindowEvent};
use winit::event_loop::{ActiveEventLoop, ControlFlow, EventLoop};
use winit::keyboard::{Key, NamedKey};
use winit::window::{Window, WindowId};

use crate::camera::Orbit;
use crate::render::{RenderError, Renderer};
use crate::scene::Scene;

/// What the window shows: the newest scene and its HUD text.
#[derive(Debug, Clone, Default)]
pub struct Frame {
    /// The scene (shared: the session side publishes it, the frame loop draws it uncopied).
    pub scene: std::sync::Arc<Scene>,
    /// HUD text.
    pub hud: String,
    /// A short status for a headset's panel: what is shown (live, or the seq with the edit's
    /// time, kind and author) and the playback state.
    pub status: String,
    /// History: the seq shown and the head (the timeline's span is 1..=head).
    pub seqs: Option<(u64, u64)>,
}

/// What the user asked for with the keyboard, read by the session side.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Controls {
    /// Playback paused.
    pub paused: bool,
    /// Single steps requested (negative: back).
    pub steps: i64,
    /// Entries per tick while playing.
    pub speed: u64,
    /// Open this seq next (0: the head), as a headset's timeline scrub asks.
    pub seek: Option<u64>,
    /// The window closed.
    pub quit: bool,
}

impl Default for Controls {
    fn default() -> Self {
        Controls { paused: false, steps: 0, speed: 1, seek: None, quit: false }
    }
}

/// Window settings.
#[derive(Debug, Clone)]
pub struct WindowOptions {
    /// Title.
    pub title: String,
    /// Inner size, pixels.
    pub width: u32,
    /// Inner size, pixels.
    pub height: u32,
    /// Both eyes side by side.
    pub stereo: bool,
    /// Close after this many presented frames.
    pub frames: Option<u64>,
}

/// Why the window could not run.
#[derive(Debug, thiserror::Error)]
pub enum WindowError {
    /// No display (set DISPLAY, or run under Xvfb, or use --headless).
    #[error("cannot open a window: {0} (is DISPLAY set? use --headless without a display)")]
    Display(String),
    /// Surface or adapter setup failed.
    #[error(transparent)]
    Render(#[from] RenderError),
}

struct Gpu {
    window: Arc<Window>,
    surface: wgpu::Surface<'static>,
    config: wgpu::SurfaceConfiguration,
    renderer: Renderer,
}

struct App {
    options: WindowOptions,
    frame: Arc<Mutex<Frame>>,
    controls: Arc<Mutex<Controls>>,
    gpu: Option<Gpu>,
    error: Option<WindowError>,
    orbit: Orbit,
    dragging: bool,
    last_cursor: Option<(f64, f64)>,
    presented: u64,
}

impl App {
    fn start(&mut self, el: &ActiveEventLoop) -> Result<Gpu, WindowError> {
        let attrs = Window::default_attributes()
            .with_title(self.options.title.clone())
            .with_inner_size(winit::dpi::PhysicalSize::new(self.options.width, self.options.height));
        let window = Arc::new(el.create_window(attrs).map_err(|e| WindowError::Display(e.to_string()))?);
        let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
        if std::env::var_os("WGPU_BACKEND").is_none() {
            desc.backends = wgpu::Backends::VULKAN | wgpu::Backends::GL;
        }
        let instance = wgpu::Instance::new(desc);
        let surface =
            instance.create_surface(window.clone()).map_err(|e| WindowError::Display(format!("surface: {e}")))?;
        let adapter = pollster::block_on(instance.request_adapter(&wgpu::RequestAdapterOptions {
            compatible_surface: Some(&surface),
            ..Default::default()
        }))
        .map_err(|e| RenderError::NoAdapter(e.to_string()))?;
        let size = window.inner_size();
        let mut config = surface
            .get_default_config(&adapter, size.width.max(1), size.height.max(1))
            .ok_or_else(|| WindowError::Display("the adapter cannot present to this window".into()))?;
        let caps = surface.get_capabilities(&adapter);
        if let Some(srgb) = caps.formats.iter().find(|f| f.is_srgb()) {
            config.format = *srgb;
        }
        let renderer = Renderer::on_adapter_with_format(&adapter, config.format)?;
        surface.configure(renderer.device(), &config);
        println!("window: {}×{} on {}", config.width, config.height, renderer.adapter_name());
        Ok(Gpu { window, surface, config, renderer })
    }

    fn redraw(&mut self, el: &ActiveEventLoop) {
        let Some(gpu) = self.gpu.as_mut() else { return };
        let texture = match gpu.surface.get_current_texture() {
            wgpu::CurrentSurfaceTexture::Success(t) | wgpu::CurrentSurfaceTexture::Suboptimal(t) => t,
            _ => {
                gpu.surface.configure(gpu.renderer.device(), &gpu.config);
                return;
            }
        };
        let view = texture.texture.create_view(&Default::default());
        let frame = self.frame.lock().expect("frame lock").clone();
        let (w, h) = (gpu.config.width, gpu.config.height);
        let eye_w = if self.options.stereo { (w / 2).max(1) } else { w };
        let head = self.orbit.eye(eye_w as f32 / h.max(1) as f32);
        let eyes = if self.options.stereo { head.stereo(crate::DEFAULT_IPD).to_vec() } else { vec![head] };
        gpu.renderer.draw_to(&view, &frame.scene, &eyes, eye_w, h, Some(&frame.hud));
        gpu.renderer.queue().present(texture);
        self.presented += 1;
        if self.options.frames.is_some_and(|n| self.presented >= n) {
            self.controls.lock().expect("controls lock").quit = true;
            el.exit();
        }
    }
}

impl ApplicationHandler for App {
    fn resumed(&mut self, el: &ActiveEventLoop) {
        if self.gpu.is_none() {
            match self.start(el) {
                Ok(g) => self.gpu = Some(g),
                Err(e) => {
                    self.error = Some(e);
                    el.exit();
                }
            }
        }
    }

    fn window_event(&mut self, el: &ActiveEventLoop, _id: WindowId, event: WindowEvent) {
        match event {
            WindowEvent::CloseRequested => {
                self.controls.lock().expect("controls lock").quit = true;
                el.exit();
            }
            WindowEvent::Resized(size) => {
                if let Some(gpu) = self.gpu.as_mut() {
                    gpu.config.width = size.width.max(1);
                    gpu.config.height = size.height.max(1);
                    gpu.surface.configure(gpu.renderer.device(), &gpu.config);
                }
            }
            WindowEvent::RedrawRequested => self.redraw(el),
            WindowEvent::MouseInput { state, button: MouseButton::Left, .. } => {
                self.dragging = state == ElementState::Pressed;
            }
            WindowEvent::CursorMoved { position, .. } => {
                if let (true, Some((x, y))) = (self.dragging, self.last_cursor) {
                    self.orbit.yaw -= ((position.x - x) * 0.005) as f32;
                    self.orbit.pitch = (self.orbit.pitch + ((position.y - y) * 0.005) as f32).clamp(-1.5, 1.5);
                }
                self.last_cursor = Some((position.x, position.y));
            }
            WindowEvent::MouseWheel { delta, .. } => {
                let lines = match delta {
                    MouseScrollDelta::LineDelta(_, y) => y,
                    MouseScrollDelta::PixelDelta(p) => (p.y / 40.0) as f32,
                };
                self.orbit.distance = (self.orbit.distance * 0.9f32.powf(lines)).clamp(1.0, 2_000.0);
            }
            WindowEvent::KeyboardInput { event, .. } if event.state == ElementState::Pressed => {
                let mut c = self.controls.lock().expect("controls lock");
                match event.logical_key.as_ref() {
                    Key::Named(NamedKey::Escape) => {
                        c.quit = true;
                        el.exit();
                    }
                    Key::Named(NamedKey::Space) => c.paused = !c.paused,
                    Key::Named(NamedKey::ArrowRight) => c.steps += 1,
                    Key::Named(NamedKey::ArrowLeft) => c.steps -= 1,
                    Key::Character("+") | Key::Character("=") => c.speed = (c.speed * 2).min(1 << 16),
                    Key::Character("-") => c.speed = (c.speed / 2).max(1),
                    Key::Character("s") => self.options.stereo = !self.options.stereo,
                    _ => {}
                }
            }
            _ => {}
        }
    }

    fn about_to_wait(&mut self, _el: &ActiveEventLoop) {
        if let Some(gpu) = &self.gpu {
            gpu.window.request_redraw();
        }
    }
}

/// Opens the window and runs until it closes (on this thread, which must be the main one).
pub fn run(
    options: WindowOptions,
    frame: Arc<Mutex<Frame>>,
    controls: Arc<Mutex<Controls>>,
) -> Result<(), WindowError> {
    let el = EventLoop::new().map_err(|e| WindowError::Display(e.to_string()))?;
    el.set_control_flow(ControlFlow::Poll);
    let mut app = App {
        options,
        frame,
        controls: controls.clone(),
        gpu: None,
        error: None,
        orbit: Orbit::default(),
        dragging: false,
        last_cursor: None,
        presented: 0,
    };
    let result = el.run_app(&mut app);
    controls.lock().expect("controls lock").quit = true;
    if let Some(e) = app.error {
        return Err(e);
    }
    result.map_err(|e| WindowError::Display(e.to_string()))
}
