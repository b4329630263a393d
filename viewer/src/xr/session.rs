//! A running OpenXR session that draws the scene into the runtime's swapchain: one swapchain of
//! two array layers (one per eye), each eye rendered at its located pose and field of view for
//! the predicted display time, submitted as a projection layer. Frame pacing is the runtime's
//! (`xrWaitFrame`); state changes come from its events and drive [`Phase`].

use openxr as xr;

use super::actions::XrActions;
use super::vulkan::{self, XrGpu};
use super::{Action, Phase, XrError, XrSystem, eye};
use crate::render::{COLOR_FORMAT, Image, Renderer};
use crate::vr_input::{Command, Controls, Overlay, Pose, Rig, Timeline};
use crate::{Eye, Scene};

/// What one call of [`XrViewer::frame`] did.
#[derive(Debug)]
pub enum Frame {
    /// The session is not running (yet, or any more): nothing was submitted.
    Idle,
    /// The runtime asked for no rendering this frame (`should_render` false); an empty frame
    /// was submitted.
    Skipped,
    /// Both eyes were rendered and submitted.
    Rendered {
        /// The eyes in world space (the located stage poses through the controls' rig).
        eyes: [Eye; 2],
        /// What the controller input of this frame asks the viewer to do.
        commands: Vec<Command>,
        /// The eyes' swapchain images, read back, when asked for.
        images: Option<[Image; 2]>,
    },
    /// The session ended: leave the frame loop.
    Exit,
}

/// An OpenXR session with its swapchain, drawing through the renderer on the runtime's device.
/// Fields drop in order: the textures before the swapchain that owns their images, the session
/// before the device it runs on.
pub struct XrViewer {
    textures: Vec<wgpu::Texture>,
    swapchain: xr::Swapchain<xr::Vulkan>,
    actions: XrActions,
    space: xr::Space,
    stream: xr::FrameStream<xr::Vulkan>,
    waiter: xr::FrameWaiter,
    session: xr::Session<xr::Vulkan>,
    renderer: Renderer,
    gpu: XrGpu,
    system: XrSystem,
    phase: Phase,
    width: u32,
    height: u32,
    format: wgpu::TextureFormat,
    events: xr::EventDataBuffer,
    /// The headset controls (where the world sits, teleport, grab, scrub).
    pub controls: Controls,
    /// Where the timeline panel is, and the seqs it spans (history only).
    pub timeline: Option<Timeline>,
    /// The status panel's text, shown above the timeline.
    pub panel: Option<String>,
    /// Whether the headset's own panels, ray and markers are drawn (on by default; off shows
    /// the session's scene alone, to compare with other viewers).
    pub show_overlay: bool,
    /// Frames submitted with `xrEndFrame` (rendered or empty).
    pub frames_ended: u64,
    /// Where the last rendered frame's time went.
    pub last_times: FrameTimes,
}

/// Where one rendered frame's time went, for frame-pacing figures.
#[derive(Clone, Copy, Debug, Default)]
pub struct FrameTimes {
    /// Time blocked in `xrWaitFrame` (the runtime's pacing).
    pub waited: std::time::Duration,
    /// From `xrWaitFrame`'s return to `xrEndFrame`'s: input, both eyes recorded and submitted.
    pub work: std::time::Duration,
    /// When `xrWaitFrame` returned.
    pub woke: Option<std::time::Instant>,
    /// The runtime's predicted display time for the frame, nanoseconds on its clock.
    pub display_time_ns: i64,
    /// The runtime's predicted display period, nanoseconds.
    pub period_ns: i64,
}

impl std::fmt::Debug for XrViewer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("XrViewer")
            .field("phase", &self.phase)
            .field("size", &(self.width, self.height))
            .field("frames_ended", &self.frames_ended)
            .finish_non_exhaustive()
    }
}

fn call(what: &str, e: xr::sys::Result) -> XrError {
    XrError::Call(format!("{what}: {e}"))
}

impl XrViewer {
    /// Creates the Vulkan device through the runtime, the session, a reference space and the
    /// swapchain, at the runtime's recommended per-eye size.
    pub fn new(system: XrSystem) -> Result<XrViewer, XrError> {
        XrViewer::with_eye_size(system, None)
    }

    /// As [`XrViewer::new`], with per-eye images of `size` pixels instead of the recommended
    /// size (refused beyond the runtime's maximum).
    pub fn with_eye_size(system: XrSystem, size: Option<(u32, u32)>) -> Result<XrViewer, XrError> {
        let gpu = vulkan::create(&system.instance, system.system)?;
        let (session, waiter, stream) = vulkan::create_session(&system.instance, system.system, &gpu)?;
        let space = session
            .create_reference_space(xr::ReferenceSpaceType::STAGE, xr::Posef::IDENTITY)
            .or_else(|_| session.create_reference_space(xr::ReferenceSpaceType::LOCAL, xr::Posef::IDENTITY))
            .map_err(|e| call("xrCreateReferenceSpace", e))?;
        let view = system.views.first().ok_or_else(|| XrError::Call("the runtime reports no views".into()))?;
        let (width, height) = size.unwrap_or((view.recommended_image_rect_width, view.recommended_image_rect_height));
        let (max_w, max_h) = (view.max_image_rect_width, view.max_image_rect_height);
        if width == 0 || height == 0 || width > max_w || height > max_h {
            return Err(XrError::Call(format!(
                "an eye image of {width}x{height} pixels is outside what the runtime allows (1x1 to {max_w}x{max_h})"
            )));
        }
        let offered = session.enumerate_swapchain_formats().map_err(|e| call("xrEnumerateSwapchainFormats", e))?;
        let format = [COLOR_FORMAT, wgpu::TextureFormat::Bgra8UnormSrgb]
            .into_iter()
            .find(|f| vulkan::vk_format(*f).is_some_and(|v| offered.contains(&v)))
            .ok_or_else(|| {
                XrError::Call(format!("the runtime offers no sRGB RGBA/BGRA swapchain format ({offered:?})"))
            })?;
        let swapchain = session
            .create_swapchain(&xr::SwapchainCreateInfo {
                create_flags: xr::SwapchainCreateFlags::EMPTY,
                usage_flags: xr::SwapchainUsageFlags::COLOR_ATTACHMENT | xr::SwapchainUsageFlags::TRANSFER_SRC,
                format: vulkan::vk_format(format).expect("checked above"),
                sample_count: 1,
                width,
                height,
                face_count: 1,
                array_size: 2,
                mip_count: 1,
            })
            .map_err(|e| call("xrCreateSwapchain", e))?;
        let images = swapchain.enumerate_images().map_err(|e| call("xrEnumerateSwapchainImages", e))?;
        let textures =
            images.iter().map(|&i| vulkan::swapchain_texture(&gpu.device, i, format, width, height, 2)).collect();
        let renderer =
            Renderer::with_device_format(gpu.device.clone(), gpu.queue.clone(), gpu.adapter.get_info(), format);
        let actions = XrActions::new(&system.instance, &session)?;
        Ok(XrViewer {
            textures,
            swapchain,
            actions,
            space,
            stream,
            waiter,
            session,
            renderer,
            gpu,
            system,
            phase: Phase::Idle,
            width,
            height,
            format,
            events: xr::EventDataBuffer::new(),
            controls: Controls::new(Rig::default()),
            timeline: None,
            panel: None,
            show_overlay: true,
            frames_ended: 0,
            last_times: FrameTimes::default(),
        })
    }

    /// Where the session stands.
    pub fn phase(&self) -> Phase {
        self.phase
    }

    /// Shows the history timeline for `seqs` (the seq shown, the head), or hides it (`None`).
    /// The panel floats 1.2 m in front of the stage origin at waist height.
    pub fn set_timeline(&mut self, seqs: Option<(u64, u64)>) {
        self.timeline = seqs.map(|(current, head)| Timeline {
            center: glam::Vec3::new(0.0, 1.0, -1.2),
            size: glam::Vec2::new(1.2, 0.12),
            seqs: (1, head.max(1)),
            current,
        });
    }

    /// Interaction profiles the runtime accepted bindings for.
    pub fn profiles(&self) -> &[&'static str] {
        &self.actions.profiles
    }

    /// Per-eye image size, pixels.
    pub fn eye_size(&self) -> (u32, u32) {
        (self.width, self.height)
    }

    /// The renderer (on the runtime's device).
    pub fn renderer(&mut self) -> &mut Renderer {
        &mut self.renderer
    }

    /// Asks the runtime to end the session; the frame loop sees [`Frame::Exit`] soon after.
    pub fn request_exit(&self) -> Result<(), XrError> {
        self.session.request_exit().map_err(|e| call("xrRequestExitSession", e))
    }

    /// Handles the runtime's pending events; true when the viewer must leave.
    fn poll_events(&mut self) -> Result<bool, XrError> {
        while let Some(event) = self.system.instance.poll_event(&mut self.events).map_err(|e| call("xrPollEvent", e))? {
            match event {
                xr::Event::SessionStateChanged(e) => {
                    if e.state() == xr::SessionState::LOSS_PENDING {
                        return Err(XrError::SessionLost);
                    }
                    let (phase, action) = self.phase.on(e.state());
                    self.phase = phase;
                    match action {
                        Action::Begin => self
                            .session
                            .begin(xr::ViewConfigurationType::PRIMARY_STEREO)
                            .map(drop)
                            .map_err(|e| call("xrBeginSession", e))?,
                        Action::End => self.session.end().map(drop).map_err(|e| call("xrEndSession", e))?,
                        Action::Exit => return Ok(true),
                        Action::None => {}
                    }
                }
                xr::Event::InstanceLossPending(_) => {
                    return Err(XrError::Call("the OpenXR runtime is going away (instance loss pending)".into()));
                }
                _ => {}
            }
        }
        Ok(false)
    }

    /// Runs one frame: events, then (while the session runs) wait, render both eyes, submit.
    /// With `capture`, the eyes' images are read back from the swapchain before release.
    pub fn frame(&mut self, scene: &Scene, capture: bool) -> Result<Frame, XrError> {
        if self.poll_events()? {
            return Ok(Frame::Exit);
        }
        if !self.phase.renders() {
            std::thread::sleep(std::time::Duration::from_millis(10));
            return Ok(Frame::Idle);
        }
        let asleep = std::time::Instant::now();
        let state = self.waiter.wait().map_err(|e| call("xrWaitFrame", e))?;
        let woke = std::time::Instant::now();
        self.stream.begin().map_err(|e| call("xrBeginFrame", e))?;
        if !state.should_render {
            self.stream
                .end(state.predicted_display_time, xr::EnvironmentBlendMode::OPAQUE, &[])
                .map_err(|e| call("xrEndFrame", e))?;
            self.frames_ended += 1;
            return Ok(Frame::Skipped);
        }
        let (_, views) = self
            .session
            .locate_views(xr::ViewConfigurationType::PRIMARY_STEREO, state.predicted_display_time, &self.space)
            .map_err(|e| call("xrLocateViews", e))?;
        if views.len() < 2 {
            return Err(XrError::Call(format!("the runtime located {} views, not 2", views.len())));
        }
        let stage_eyes = [eye(&views[0]), eye(&views[1])];
        let head = Pose {
            position: (stage_eyes[0].position + stage_eyes[1].position) / 2.0,
            orientation: stage_eyes[0].orientation,
        };
        let input = self.actions.read(&self.session, &self.space, state.predicted_display_time)?;
        let commands = self.controls.update(&input, &head, self.timeline.as_ref());
        let rig = self.controls.rig;
        let eyes = stage_eyes.map(|e| Eye {
            position: rig.to_world(e.position),
            orientation: rig.orientation_to_world(e.orientation),
            fov: e.fov,
        });
        let index = self.swapchain.acquire_image().map_err(|e| call("xrAcquireSwapchainImage", e))? as usize;
        self.swapchain.wait_image(xr::Duration::INFINITE).map_err(|e| call("xrWaitSwapchainImage", e))?;
        let overlay = if self.show_overlay {
            Overlay {
                timeline: self.timeline.as_ref(),
                panel: self.panel.as_deref(),
                ray: input.right.aim,
                teleport: self.controls.teleport_aim(),
            }
        } else {
            Overlay::default()
        };
        let overlay = overlay.draw(&rig);
        let texture = &self.textures[index];
        let layer = |i: u32| {
            texture.create_view(&wgpu::TextureViewDescriptor {
                dimension: Some(wgpu::TextureViewDimension::D2),
                base_array_layer: i,
                array_layer_count: Some(1),
                ..Default::default()
            })
        };
        let (left, right) = (layer(0), layer(1));
        let both = texture.create_view(&wgpu::TextureViewDescriptor {
            dimension: Some(wgpu::TextureViewDimension::D2Array),
            array_layer_count: Some(2),
            ..Default::default()
        });
        // One multiview pass for both eyes where the device has it, else a pass per eye.
        self.renderer.draw_array(&both, [&left, &right], &[scene, &overlay], &eyes, self.width, self.height);
        let images = if capture { Some([self.read_layer(index, 0)?, self.read_layer(index, 1)?]) } else { None };
        // The runtime wants the image back in COLOR_ATTACHMENT_OPTIMAL, with our work submitted.
        let mut encoder = self.gpu.device.create_command_encoder(&Default::default());
        encoder.transition_resources(
            std::iter::empty(),
            std::iter::once(wgpu::TextureTransition {
                texture,
                selector: None,
                state: wgpu::TextureUses::COLOR_TARGET,
            }),
        );
        self.gpu.queue.submit([encoder.finish()]);
        self.swapchain.release_image().map_err(|e| call("xrReleaseSwapchainImage", e))?;
        let rect = xr::Rect2Di {
            offset: xr::Offset2Di { x: 0, y: 0 },
            extent: xr::Extent2Di { width: self.width as i32, height: self.height as i32 },
        };
        let projection: Vec<xr::CompositionLayerProjectionView<'_, xr::Vulkan>> = views
            .iter()
            .take(2)
            .enumerate()
            .map(|(i, v)| {
                xr::CompositionLayerProjectionView::new().pose(v.pose).fov(v.fov).sub_image(
                    xr::SwapchainSubImage::new()
                        .swapchain(&self.swapchain)
                        .image_array_index(i as u32)
                        .image_rect(rect),
                )
            })
            .collect();
        let layer = xr::CompositionLayerProjection::new().space(&self.space).views(&projection);
        self.stream
            .end(state.predicted_display_time, xr::EnvironmentBlendMode::OPAQUE, &[&layer])
            .map_err(|e| call("xrEndFrame", e))?;
        self.frames_ended += 1;
        self.last_times = FrameTimes {
            waited: woke - asleep,
            work: woke.elapsed(),
            woke: Some(woke),
            display_time_ns: state.predicted_display_time.as_nanos(),
            period_ns: state.predicted_display_period.as_nanos(),
        };
        Ok(Frame::Rendered { eyes, commands, images })
    }

    /// Copies one layer of swapchain image `index` into memory.
    fn read_layer(&self, index: usize, layer: u32) -> Result<Image, XrError> {
        let (w, h) = (self.width, self.height);
        let row = (w * 4).div_ceil(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT) * wgpu::COPY_BYTES_PER_ROW_ALIGNMENT;
        let device = &self.gpu.device;
        let buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("xr read-back"),
            size: u64::from(row) * u64::from(h),
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
            mapped_at_creation: false,
        });
        let mut encoder = device.create_command_encoder(&Default::default());
        encoder.copy_texture_to_buffer(
            wgpu::TexelCopyTextureInfo {
                texture: &self.textures[index],
                mip_level: 0,
                origin: wgpu::Origin3d { x: 0, y: 0, z: layer },
                aspect: wgpu::TextureAspect::All,
            },
            wgpu::TexelCopyBufferInfo {
                buffer: &buffer,
                layout: wgpu::TexelCopyBufferLayout { offset: 0, bytes_per_row: Some(row), rows_per_image: Some(h) },
            },
            wgpu::Extent3d { width: w, height: h, depth_or_array_layers: 1 },
        );
        self.gpu.queue.submit([encoder.finish()]);
        let slice = buffer.slice(..);
        slice.map_async(wgpu::MapMode::Read, |_| {});
        device
            .poll(wgpu::PollType::Wait { submission_index: None, timeout: None })
            .map_err(|e| XrError::Call(format!("read back the eye image: {e}")))?;
        let data = slice.get_mapped_range().map_err(|e| XrError::Call(format!("map the eye image: {e}")))?;
        let bgra = self.format == wgpu::TextureFormat::Bgra8UnormSrgb;
        let mut rgba = Vec::with_capacity((w * h * 4) as usize);
        for y in 0..h as usize {
            let line = &data[y * row as usize..y * row as usize + w as usize * 4];
            if bgra {
                for px in line.chunks_exact(4) {
                    rgba.extend_from_slice(&[px[2], px[1], px[0], px[3]]);
                }
            } else {
                rgba.extend_from_slice(line);
            }
        }
        Ok(Image { width: w, height: h, rgba })
    }
}
