//! The wgpu renderer: instanced primitives, mesh entities (buffers cached per entity and
//! replaced only when the mesh changes), a ground grid, directional light with depth, selection
//! highlights, text labels in the world (`labels`), and the HUD. Mono or stereo (side by side,
//! one pass per frame with a viewport and camera per eye). It draws a [`Scene`]; it never talks to the network.

use std::collections::BTreeMap;

use theta_schemas::EntityId;
use wgpu::util::DeviceExt;

use crate::camera::Eye;
use crate::geometry::{self, Vertex};
use crate::scene::{Instance, SHAPES, Scene};

/// Colour format of every target.
pub const COLOR_FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Rgba8UnormSrgb;
const DEPTH_FORMAT: wgpu::TextureFormat = wgpu::TextureFormat::Depth32Float;
/// Distances from the viewer beyond which objects use the next coarser mesh, metres.
pub const LOD_DISTANCES: [f32; 2] = [30.0, 120.0];
/// Levels of detail per primitive.
const LODS: usize = 3;
/// Vertices of the ground grid (20 × 20 tiles, two triangles each).
const GRID_VERTICES: u32 = 20 * 20 * 6;
/// Uniform slot size (dynamic offsets must be 256-aligned).
const CAMERA_SLOT: u64 = 256;

/// Why rendering could not start.
#[derive(Debug, thiserror::Error)]
pub enum RenderError {
    /// No GPU or software adapter.
    #[error(
        "no graphics adapter found ({0}); on Debian install a Vulkan driver (`apt-get install mesa-vulkan-drivers`) or GL (`libegl1 libgl1-mesa-dri`)"
    )]
    NoAdapter(String),
    /// The device could not be created.
    #[error("graphics device: {0}")]
    Device(String),
    /// Reading the image back failed.
    #[error("reading the frame back: {0}")]
    Readback(String),
}

/// An RGBA8 (sRGB) image.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Image {
    /// Width, pixels.
    pub width: u32,
    /// Height, pixels.
    pub height: u32,
    /// Rows of RGBA bytes, top first.
    pub rgba: Vec<u8>,
}

impl Image {
    /// Writes the image as a PNG file.
    pub fn save_png(&self, path: &std::path::Path) -> std::io::Result<()> {
        let file = std::io::BufWriter::new(std::fs::File::create(path)?);
        let mut enc = png::Encoder::new(file, self.width, self.height);
        enc.set_color(png::ColorType::Rgba);
        enc.set_depth(png::BitDepth::Eight);
        let mut w = enc.write_header().map_err(std::io::Error::other)?;
        w.write_image_data(&self.rgba).map_err(std::io::Error::other)
    }

    /// Reads an 8-bit PNG file (RGBA, or RGB made opaque).
    pub fn load_png(path: &std::path::Path) -> std::io::Result<Image> {
        let dec = png::Decoder::new(std::io::BufReader::new(std::fs::File::open(path)?));
        let mut reader = dec.read_info().map_err(std::io::Error::other)?;
        let mut buf = vec![0; reader.output_buffer_size().unwrap_or(0)];
        let info = reader.next_frame(&mut buf).map_err(std::io::Error::other)?;
        if info.bit_depth != png::BitDepth::Eight {
            return Err(std::io::Error::other("expected an 8-bit RGB or RGBA PNG"));
        }
        buf.truncate(info.buffer_size());
        let rgba = match info.color_type {
            png::ColorType::Rgba => buf,
            png::ColorType::Rgb => buf.chunks_exact(3).flat_map(|p| [p[0], p[1], p[2], 255]).collect(),
            _ => return Err(std::io::Error::other("expected an 8-bit RGB or RGBA PNG")),
        };
        Ok(Image { width: info.width, height: info.height, rgba })
    }

    /// The left or right half (side-by-side stereo images).
    pub fn half(&self, right: bool) -> Image {
        let w = self.width / 2;
        let mut rgba = Vec::with_capacity((w * self.height * 4) as usize);
        for y in 0..self.height as usize {
            let row = &self.rgba[y * self.width as usize * 4..][..self.width as usize * 4];
            let start = if right { w as usize * 4 } else { 0 };
            rgba.extend_from_slice(&row[start..start + w as usize * 4]);
        }
        Image { width: w, height: self.height, rgba }
    }

    /// Compares with `other`: the fraction of pixels whose largest channel difference exceeds
    /// `tolerance` (1.0 when the sizes differ).
    pub fn diff_fraction(&self, other: &Image, tolerance: u8) -> f64 {
        if (self.width, self.height) != (other.width, other.height) {
            return 1.0;
        }
        let differing = self
            .rgba
            .chunks_exact(4)
            .zip(other.rgba.chunks_exact(4))
            .filter(|(a, b)| a.iter().zip(b.iter()).any(|(x, y)| x.abs_diff(*y) > tolerance))
            .count();
        differing as f64 / (self.width as f64 * self.height as f64)
    }
}

/// The shaders, with the camera source left open: one camera per draw (a viewport per eye) or,
/// for multiview, both cameras indexed by the view being rendered.
const SCENE_WGSL: &str = include_str!("shaders/scene.wgsl");

/// The shader source for one camera per draw, or for multiview.
fn shader_source(multiview: bool) -> String {
    let (camera, arg, view) = if multiview {
        (
            "@group(0) @binding(0) var<uniform> cams: array<Camera, 2>;\nfn camera(view: u32) -> Camera { return cams[view]; }",
            ", @builtin(view_index) view_index: u32",
            "view_index",
        )
    } else {
        ("@group(0) @binding(0) var<uniform> cam: Camera;\nfn camera(view: u32) -> Camera { return cam; }", "", "0u")
    };
    SCENE_WGSL.replace("/*CAMERA*/", camera).replace("/*VIEW_ARG*/", arg).replace("/*VIEW*/", view)
}

#[repr(C)]
#[derive(Clone, Copy, bytemuck::Pod, bytemuck::Zeroable)]
struct CameraUniform {
    view_proj: [[f32; 4]; 4],
    eye: [f32; 4],
    light: [f32; 4],
}

struct Mesh {
    vertices: wgpu::Buffer,
    indices: wgpu::Buffer,
    count: u32,
}

/// Pipelines and cameras of the multiview path.
struct Multiview {
    scene: wgpu::RenderPipeline,
    grid: wgpu::RenderPipeline,
    cameras: wgpu::Buffer,
    group: wgpu::BindGroup,
    /// The two-layer depth of [`Renderer::draw_array`], by size.
    depth: Option<(u32, u32, wgpu::TextureView)>,
}

struct CachedMesh {
    key: (usize, u64),
    mesh: Mesh,
}

struct Target {
    width: u32,
    height: u32,
    color: wgpu::Texture,
    depth: wgpu::TextureView,
    readback: wgpu::Buffer,
    padded_row: u32,
}

/// Counters of what the last frame drew and uploaded.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct FrameStats {
    /// Instances and meshes drawn.
    pub entities: usize,
    /// Mesh buffers (re)built this frame.
    pub mesh_uploads: usize,
    /// Instances uploaded this frame (only the changed range).
    pub instance_uploads: usize,
    /// CPU time to prepare, encode and submit the frame.
    pub cpu: std::time::Duration,
    /// The part of `cpu` spent preparing the instances (level of detail, change detection,
    /// upload).
    pub prepare: std::time::Duration,
}

/// A renderer on one device.
pub struct Renderer {
    device: wgpu::Device,
    queue: wgpu::Queue,
    adapter: wgpu::AdapterInfo,
    scene_pipeline: wgpu::RenderPipeline,
    grid_pipeline: wgpu::RenderPipeline,
    hud_pipeline: wgpu::RenderPipeline,
    camera_buffer: wgpu::Buffer,
    camera_group: wgpu::BindGroup,
    hud_layout: wgpu::BindGroupLayout,
    sampler: wgpu::Sampler,
    primitives: Vec<Mesh>,
    instances: Option<(wgpu::Buffer, u64)>,
    /// A copy of the instances on the GPU, to upload only what changed.
    uploaded: Vec<Instance>,
    staging: Vec<Instance>,
    levels: Vec<u8>,
    meshes: BTreeMap<EntityId, CachedMesh>,
    target: Option<Target>,
    window_depth: Option<(u32, u32, wgpu::TextureView)>,
    format: wgpu::TextureFormat,
    multiview: Option<Multiview>,
    hud: Option<(String, u32, u32, wgpu::BindGroup)>,
    labels: crate::labels::Labels,
    /// What the last frame did.
    pub stats: FrameStats,
}

fn vertex_layouts() -> [Option<wgpu::VertexBufferLayout<'static>>; 2] {
    const V: [wgpu::VertexAttribute; 2] = wgpu::vertex_attr_array![0 => Float32x3, 1 => Float32x3];
    const I: [wgpu::VertexAttribute; 6] = wgpu::vertex_attr_array![
        2 => Float32x4, 3 => Float32x4, 4 => Float32x4, 5 => Float32x4, 6 => Float32x4, 7 => Float32x4
    ];
    [
        Some(wgpu::VertexBufferLayout {
            array_stride: std::mem::size_of::<Vertex>() as u64,
            step_mode: wgpu::VertexStepMode::Vertex,
            attributes: &V,
        }),
        Some(wgpu::VertexBufferLayout {
            array_stride: std::mem::size_of::<Instance>() as u64,
            step_mode: wgpu::VertexStepMode::Instance,
            attributes: &I,
        }),
    ]
}

impl Renderer {
    /// A renderer on the best adapter available without a window (a GPU, or Mesa's lavapipe /
    /// llvmpipe). `WGPU_BACKEND` and `WGPU_ADAPTER_NAME` select one explicitly.
    pub fn headless() -> Result<Renderer, RenderError> {
        // Vulkan first (a GPU, or lavapipe), then GL; `WGPU_BACKEND` overrides.
        let chosen = std::env::var_os("WGPU_BACKEND").is_some();
        let tries: &[wgpu::Backends] =
            if chosen { &[wgpu::Backends::empty()] } else { &[wgpu::Backends::VULKAN, wgpu::Backends::GL] };
        let mut last = String::from("no backend tried");
        for backends in tries {
            let mut desc = wgpu::InstanceDescriptor::new_without_display_handle_from_env();
            if !chosen {
                desc.backends = *backends;
            }
            let instance = wgpu::Instance::new(desc);
            match pollster::block_on(wgpu::util::initialize_adapter_from_env_or_default(&instance, None)) {
                Ok(adapter) => return Renderer::on_adapter(&adapter),
                Err(e) => last = e.to_string(),
            }
        }
        Err(RenderError::NoAdapter(last))
    }

    /// A renderer on `adapter`.
    pub fn on_adapter(adapter: &wgpu::Adapter) -> Result<Renderer, RenderError> {
        Renderer::on_adapter_with_format(adapter, COLOR_FORMAT)
    }

    /// A renderer on `adapter` drawing into `format` (a window surface's).
    pub fn on_adapter_with_format(
        adapter: &wgpu::Adapter,
        format: wgpu::TextureFormat,
    ) -> Result<Renderer, RenderError> {
        let limits = wgpu::Limits::downlevel_defaults().using_resolution(adapter.limits());
        let (device, queue) = pollster::block_on(adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("theta-viewer"),
            required_features: adapter.features() & wgpu::Features::MULTIVIEW,
            required_limits: wgpu::Limits {
                max_buffer_size: adapter.limits().max_buffer_size,
                max_multiview_view_count: adapter.limits().max_multiview_view_count,
                ..limits
            },
            ..Default::default()
        }))
        .map_err(|e| RenderError::Device(e.to_string()))?;
        Ok(Renderer::with_device_format(device, queue, adapter.get_info(), format))
    }

    /// A renderer on an existing device (the OpenXR path passes the runtime's device), drawing
    /// into [`COLOR_FORMAT`] images.
    pub fn with_device(device: wgpu::Device, queue: wgpu::Queue, adapter: wgpu::AdapterInfo) -> Renderer {
        Renderer::with_device_format(device, queue, adapter, COLOR_FORMAT)
    }

    /// A renderer on an existing device drawing into `format` (a window surface's format);
    /// read-back ([`Renderer::render`]) needs an RGBA8 format.
    pub fn with_device_format(
        device: wgpu::Device,
        queue: wgpu::Queue,
        adapter: wgpu::AdapterInfo,
        format: wgpu::TextureFormat,
    ) -> Renderer {
        let shader = device.create_shader_module(wgpu::ShaderModuleDescriptor {
            label: Some("theta scene"),
            source: wgpu::ShaderSource::Wgsl(shader_source(false).into()),
        });
        let camera_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("camera"),
            entries: &[wgpu::BindGroupLayoutEntry {
                binding: 0,
                visibility: wgpu::ShaderStages::VERTEX_FRAGMENT,
                ty: wgpu::BindingType::Buffer {
                    ty: wgpu::BufferBindingType::Uniform,
                    has_dynamic_offset: true,
                    min_binding_size: wgpu::BufferSize::new(std::mem::size_of::<CameraUniform>() as u64),
                },
                count: None,
            }],
        });
        let camera_buffer = device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("cameras"),
            size: CAMERA_SLOT * 2,
            usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
            mapped_at_creation: false,
        });
        let camera_group = device.create_bind_group(&wgpu::BindGroupDescriptor {
            label: Some("camera"),
            layout: &camera_layout,
            entries: &[wgpu::BindGroupEntry {
                binding: 0,
                resource: wgpu::BindingResource::Buffer(wgpu::BufferBinding {
                    buffer: &camera_buffer,
                    offset: 0,
                    size: wgpu::BufferSize::new(std::mem::size_of::<CameraUniform>() as u64),
                }),
            }],
        });
        let hud_layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
            label: Some("hud"),
            entries: &[
                wgpu::BindGroupLayoutEntry {
                    binding: 0,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Texture {
                        sample_type: wgpu::TextureSampleType::Float { filterable: true },
                        view_dimension: wgpu::TextureViewDimension::D2,
                        multisampled: false,
                    },
                    count: None,
                },
                wgpu::BindGroupLayoutEntry {
                    binding: 1,
                    visibility: wgpu::ShaderStages::FRAGMENT,
                    ty: wgpu::BindingType::Sampler(wgpu::SamplerBindingType::Filtering),
                    count: None,
                },
            ],
        });
        let layout = |groups: &[&wgpu::BindGroupLayout]| {
            device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: None,
                bind_group_layouts: &groups.iter().map(|g| Some(*g)).collect::<Vec<_>>(),
                immediate_size: 0,
            })
        };
        let scene_layout = layout(&[&camera_layout]);
        let hud_pipeline_layout = layout(&[&hud_layout]);
        let depth = |write: bool| {
            Some(wgpu::DepthStencilState {
                format: DEPTH_FORMAT,
                depth_write_enabled: Some(write),
                depth_compare: Some(wgpu::CompareFunction::Less),
                stencil: Default::default(),
                bias: Default::default(),
            })
        };
        let pipeline_in = |module: &wgpu::ShaderModule,
                           views: Option<std::num::NonZeroU32>,
                           label: &str,
                           layout: &wgpu::PipelineLayout,
                           vs: &str,
                           fs: &str,
                           buffers: &[Option<wgpu::VertexBufferLayout<'_>>],
                           depth_stencil: Option<wgpu::DepthStencilState>,
                           blend: Option<wgpu::BlendState>,
                           cull: Option<wgpu::Face>| {
            device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
                label: Some(label),
                layout: Some(layout),
                vertex: wgpu::VertexState {
                    module,
                    entry_point: Some(vs),
                    compilation_options: Default::default(),
                    buffers,
                },
                primitive: wgpu::PrimitiveState { cull_mode: cull, ..Default::default() },
                depth_stencil,
                multisample: Default::default(),
                fragment: Some(wgpu::FragmentState {
                    module,
                    entry_point: Some(fs),
                    compilation_options: Default::default(),
                    targets: &[Some(wgpu::ColorTargetState { format, blend, write_mask: wgpu::ColorWrites::ALL })],
                }),
                multiview_mask: views,
                cache: None,
            })
        };
        let pipeline = |label: &str,
                        layout: &wgpu::PipelineLayout,
                        vs: &str,
                        fs: &str,
                        buffers: &[Option<wgpu::VertexBufferLayout<'_>>],
                        depth_stencil: Option<wgpu::DepthStencilState>,
                        blend: Option<wgpu::BlendState>,
                        cull: Option<wgpu::Face>| {
            pipeline_in(&shader, None, label, layout, vs, fs, buffers, depth_stencil, blend, cull)
        };
        // Multiview (both eyes in one draw, into a two-layer texture) where the device has it.
        let mut mv_camera_layout = None;
        let multiview = (device.features().contains(wgpu::Features::MULTIVIEW)
            && device.limits().max_multiview_view_count >= 2)
            .then(|| {
                let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                    label: Some("theta scene multiview"),
                    source: wgpu::ShaderSource::Wgsl(shader_source(true).into()),
                });
                let layout = device.create_bind_group_layout(&wgpu::BindGroupLayoutDescriptor {
                    label: Some("cameras"),
                    entries: &[wgpu::BindGroupLayoutEntry {
                        binding: 0,
                        visibility: wgpu::ShaderStages::VERTEX,
                        ty: wgpu::BindingType::Buffer {
                            ty: wgpu::BufferBindingType::Uniform,
                            has_dynamic_offset: false,
                            min_binding_size: None,
                        },
                        count: None,
                    }],
                });
                let cameras = device.create_buffer(&wgpu::BufferDescriptor {
                    label: Some("multiview cameras"),
                    size: 2 * std::mem::size_of::<CameraUniform>() as u64,
                    usage: wgpu::BufferUsages::UNIFORM | wgpu::BufferUsages::COPY_DST,
                    mapped_at_creation: false,
                });
                let group = device.create_bind_group(&wgpu::BindGroupDescriptor {
                    label: Some("multiview cameras"),
                    layout: &layout,
                    entries: &[wgpu::BindGroupEntry { binding: 0, resource: cameras.as_entire_binding() }],
                });
                let pl = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                    label: None,
                    bind_group_layouts: &[Some(&layout)],
                    immediate_size: 0,
                });
                mv_camera_layout = Some(layout.clone());
                let views = std::num::NonZeroU32::new(0b11);
                Multiview {
                    scene: pipeline_in(
                        &module,
                        views,
                        "scene mv",
                        &pl,
                        "vs",
                        "fs",
                        &vertex_layouts(),
                        depth(true),
                        None,
                        Some(wgpu::Face::Back),
                    ),
                    grid: pipeline_in(
                        &module,
                        views,
                        "grid mv",
                        &pl,
                        "grid_vs",
                        "grid_fs",
                        &[],
                        depth(true),
                        None,
                        None,
                    ),
                    cameras,
                    group,
                    depth: None,
                }
            });
        let scene_pipeline =
            pipeline("scene", &scene_layout, "vs", "fs", &vertex_layouts(), depth(true), None, Some(wgpu::Face::Back));
        let grid_pipeline = pipeline("grid", &scene_layout, "grid_vs", "grid_fs", &[], depth(true), None, None);
        let hud_pipeline = pipeline(
            "hud",
            &hud_pipeline_layout,
            "hud_vs",
            "hud_fs",
            &[],
            depth(false).map(|mut d| {
                d.depth_compare = Some(wgpu::CompareFunction::Always);
                d
            }),
            Some(wgpu::BlendState::ALPHA_BLENDING),
            None,
        );
        let primitives = SHAPES
            .iter()
            .flat_map(|s| [0, 1, 2].map(|lod| geometry::primitive_lod(*s, lod)))
            .map(|g| upload(&device, &g.vertices, &g.indices))
            .collect();
        let sampler = device.create_sampler(&wgpu::SamplerDescriptor::default());
        let labels = crate::labels::Labels::new(
            &device,
            &camera_layout,
            &hud_layout,
            mv_camera_layout.as_ref(),
            format,
            DEPTH_FORMAT,
        );
        Renderer {
            device,
            queue,
            adapter,
            scene_pipeline,
            grid_pipeline,
            hud_pipeline,
            camera_buffer,
            camera_group,
            hud_layout,
            sampler,
            primitives,
            instances: None,
            uploaded: Vec::new(),
            staging: Vec::new(),
            levels: Vec::new(),
            meshes: BTreeMap::new(),
            target: None,
            window_depth: None,
            format,
            multiview,
            hud: None,
            labels,
            stats: FrameStats::default(),
        }
    }

    /// The device (a window creates its surface for it).
    pub fn device(&self) -> &wgpu::Device {
        &self.device
    }

    /// The queue (a window presents its surface texture on it).
    pub fn queue(&self) -> &wgpu::Queue {
        &self.queue
    }

    /// The adapter's name and backend, e.g. `llvmpipe (LLVM 15.0.6, 256 bits) (Vulkan)`.
    pub fn adapter_name(&self) -> String {
        format!("{} ({:?})", self.adapter.name, self.adapter.backend)
    }

    fn ensure_depth(&mut self, width: u32, height: u32) {
        if self.target.is_none() {
            self.ensure_target(1, 1);
        }
        if self.window_depth.as_ref().is_some_and(|(w, h, _)| (*w, *h) == (width, height)) {
            return;
        }
        let view = self
            .device
            .create_texture(&wgpu::TextureDescriptor {
                label: Some("window depth"),
                size: wgpu::Extent3d { width, height, depth_or_array_layers: 1 },
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: DEPTH_FORMAT,
                usage: wgpu::TextureUsages::RENDER_ATTACHMENT,
                view_formats: &[],
            })
            .create_view(&Default::default());
        self.window_depth = Some((width, height, view));
    }

    fn ensure_target(&mut self, width: u32, height: u32) {
        if self.target.as_ref().is_some_and(|t| (t.width, t.height) == (width, height)) {
            return;
        }
        let size = wgpu::Extent3d { width, height, depth_or_array_layers: 1 };
        let color = self.device.create_texture(&wgpu::TextureDescriptor {
            label: Some("frame"),
            size,
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: self.format,
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        let depth = self
            .device
            .create_texture(&wgpu::TextureDescriptor {
                label: Some("depth"),
                size,
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: DEPTH_FORMAT,
                usage: wgpu::TextureUsages::RENDER_ATTACHMENT,
                view_formats: &[],
            })
            .create_view(&Default::default());
        let padded_row = (width * 4).div_ceil(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT) * wgpu::COPY_BYTES_PER_ROW_ALIGNMENT;
        let readback = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("readback"),
            size: padded_row as u64 * height as u64,
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
            mapped_at_creation: false,
        });
        self.target = Some(Target { width, height, color, depth, readback, padded_row });
    }

    fn set_hud(&mut self, text: &str, width: u32, height: u32) {
        if self.hud.as_ref().is_some_and(|(t, w, h, _)| t == text && (*w, *h) == (width, height)) {
            return;
        }
        let pixels = crate::hud::rasterize(text, width as usize, height as usize);
        let group =
            image_group(&self.device, &self.queue, &self.hud_layout, &self.sampler, "hud", width, height, &pixels);
        self.hud = Some((text.to_string(), width, height, group));
    }

    /// Uploads the instance data of `scenes` (drawn together, in order) and changed meshes;
    /// drops meshes of entities no longer drawn; prepares the labels.
    fn prepare(&mut self, scenes: &[&Scene], eye: glam::Vec3) -> Vec<(usize, u32, u32)> {
        let started = std::time::Instant::now();
        let total: usize = scenes.iter().flat_map(|s| s.instances.iter()).map(Vec::len).sum();
        let needed = (total.max(1) * std::mem::size_of::<Instance>()) as u64;
        let mut fresh = false;
        if self.instances.as_ref().is_none_or(|(_, cap)| *cap < needed) {
            let buffer = self.device.create_buffer(&wgpu::BufferDescriptor {
                label: Some("instances"),
                size: needed.next_power_of_two(),
                usage: wgpu::BufferUsages::VERTEX | wgpu::BufferUsages::COPY_DST,
                mapped_at_creation: false,
            });
            self.instances = Some((buffer, needed.next_power_of_two()));
            fresh = true;
        }
        // Near objects use the detailed meshes, far ones the coarse ones: instances are laid
        // out per (shape, level of detail). Only the range that changed since the last frame
        // is uploaded (a live edit moves a few objects; a static scene uploads nothing).
        let mut staging = std::mem::take(&mut self.staging);
        staging.clear();
        let mut ranges = Vec::with_capacity(SHAPES.len() * LODS);
        let bounds = LOD_DISTANCES.map(|d| d * d);
        let level = |i: &Instance| {
            let d = (glam::Vec3::new(i.model[3][0], i.model[3][1], i.model[3][2]) - eye).length_squared();
            bounds.iter().filter(|b| d > **b).count()
        };
        let mut levels = std::mem::take(&mut self.levels);
        for shape in 0..SHAPES.len() {
            let list = || scenes.iter().flat_map(|s| s.instances[shape].iter());
            levels.clear();
            levels.extend(list().map(|i| level(i) as u8));
            for lod in 0..LODS {
                let start = staging.len() as u32;
                staging.extend(list().zip(&levels).filter(|(_, l)| **l as usize == lod).map(|(i, _)| *i));
                ranges.push((shape * LODS + lod, start, staging.len() as u32 - start));
            }
        }
        self.levels = levels;
        let buffer = &self.instances.as_ref().expect("instances").0;
        if fresh || self.uploaded.len() != staging.len() {
            if !staging.is_empty() {
                self.queue.write_buffer(buffer, 0, bytemuck::cast_slice(&staging));
            }
            self.stats.instance_uploads = staging.len();
        } else {
            let first = staging.iter().zip(&self.uploaded).position(|(a, b)| a != b);
            let last = staging.iter().zip(&self.uploaded).rposition(|(a, b)| a != b);
            self.stats.instance_uploads = 0;
            if let (Some(first), Some(last)) = (first, last) {
                let bytes: &[u8] = bytemuck::cast_slice(&staging[first..=last]);
                self.queue.write_buffer(buffer, (first * std::mem::size_of::<Instance>()) as u64, bytes);
                self.stats.instance_uploads = last + 1 - first;
            }
        }
        self.staging = std::mem::replace(&mut self.uploaded, staging);
        self.stats.entities = scenes.iter().map(|s| s.len()).sum();
        self.stats.mesh_uploads = 0;
        let meshes = || scenes.iter().flat_map(|s| s.meshes.iter());
        let keep: std::collections::BTreeSet<EntityId> = meshes().map(|m| m.entity).collect();
        self.meshes.retain(|e, _| keep.contains(e));
        for m in meshes() {
            let key = (m.mesh.indices.len(), fingerprint(&m.mesh.positions, &m.mesh.indices));
            if self.meshes.get(&m.entity).is_some_and(|c| c.key == key) {
                continue;
            }
            let g = geometry::mesh(&m.mesh.positions, &m.mesh.indices);
            self.meshes.insert(m.entity, CachedMesh { key, mesh: upload(&self.device, &g.vertices, &g.indices) });
            self.stats.mesh_uploads += 1;
        }
        let labels: Vec<&crate::scene::Label> = scenes.iter().flat_map(|s| s.labels.iter()).collect();
        self.labels.prepare(&self.device, &self.queue, &labels);
        self.stats.prepare = started.elapsed();
        ranges
    }

    /// Waits until the GPU has finished every submitted frame.
    pub fn finish(&self) {
        let _ = self.device.poll(wgpu::PollType::Wait { submission_index: None, timeout: None });
    }

    /// Renders `scene` from each eye (one: mono; two: side by side, `width` each) with an
    /// optional HUD and submits it without waiting (the GPU works while the caller prepares the
    /// next frame; [`Renderer::finish`] waits). No read-back: see [`Renderer::render`].
    pub fn draw(&mut self, scene: &Scene, eyes: &[Eye], width: u32, height: u32, hud: Option<&str>) {
        self.draw_inner(scene, eyes, width, height, hud, false);
    }

    /// Like [`Renderer::draw`], into a caller's texture view (a window's surface texture) of
    /// this renderer's format and `width × eyes` by `height` pixels.
    pub fn draw_to(
        &mut self,
        view: &wgpu::TextureView,
        scene: &Scene,
        eyes: &[Eye],
        width: u32,
        height: u32,
        hud: Option<&str>,
    ) {
        self.draw_frame(Some(view), scene, eyes, width, height, hud, false);
    }

    fn draw_inner(&mut self, scene: &Scene, eyes: &[Eye], width: u32, height: u32, hud: Option<&str>, copy: bool) {
        self.draw_frame(None, scene, eyes, width, height, hud, copy);
    }

    #[allow(clippy::too_many_arguments)]
    fn draw_frame(
        &mut self,
        into: Option<&wgpu::TextureView>,
        scene: &Scene,
        eyes: &[Eye],
        width: u32,
        height: u32,
        hud: Option<&str>,
        copy: bool,
    ) {
        let started = std::time::Instant::now();
        let eyes = &eyes[..eyes.len().min(2)];
        let full_width = width * eyes.len() as u32;
        match into {
            Some(_) => self.ensure_depth(full_width, height),
            None => self.ensure_target(full_width, height),
        }
        if let Some(text) = hud {
            self.set_hud(text, full_width, height);
        }
        let centre = eyes.iter().map(|e| e.position).sum::<glam::Vec3>() / eyes.len().max(1) as f32;
        let ranges = self.prepare(&[scene], centre);
        self.write_cameras(eyes);
        let target = self.target.as_ref().expect("target");
        let view = match into {
            Some(v) => v.clone(),
            None => target.color.create_view(&Default::default()),
        };
        let depth = match into {
            Some(_) => &self.window_depth.as_ref().expect("depth").2,
            None => &target.depth,
        };
        let mut encoder = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = begin_pass(&mut encoder, "frame", &view, depth, None);
            for i in 0..eyes.len() {
                pass.set_viewport((i as u32 * width) as f32, 0.0, width as f32, height as f32, 0.0, 1.0);
                pass.set_bind_group(0, &self.camera_group, &[(i as u64 * CAMERA_SLOT) as u32]);
                self.draw_content(&mut pass, &ranges, &[scene], &self.scene_pipeline, &self.grid_pipeline);
                self.labels.draw(&mut pass);
            }
            if let (Some(_), Some((_, _, _, group))) = (hud, &self.hud) {
                pass.set_viewport(0.0, 0.0, full_width as f32, height as f32, 0.0, 1.0);
                pass.set_pipeline(&self.hud_pipeline);
                pass.set_bind_group(0, group, &[]);
                pass.draw(0..3, 0..1);
            }
        }
        if copy && into.is_none() {
            encoder.copy_texture_to_buffer(
                wgpu::TexelCopyTextureInfo {
                    texture: &target.color,
                    mip_level: 0,
                    origin: wgpu::Origin3d::ZERO,
                    aspect: wgpu::TextureAspect::All,
                },
                wgpu::TexelCopyBufferInfo {
                    buffer: &target.readback,
                    layout: wgpu::TexelCopyBufferLayout {
                        offset: 0,
                        bytes_per_row: Some(target.padded_row),
                        rows_per_image: Some(height),
                    },
                },
                wgpu::Extent3d { width: full_width, height, depth_or_array_layers: 1 },
            );
        }
        self.queue.submit(Some(encoder.finish()));
        self.stats.cpu = started.elapsed();
        if copy {
            self.finish();
        }
    }

    /// Writes each eye's camera into its slot of the camera buffer.
    fn write_cameras(&self, eyes: &[Eye]) {
        for (i, eye) in eyes.iter().enumerate() {
            let u = CameraUniform {
                view_proj: eye.view_projection().to_cols_array_2d(),
                eye: eye.position.extend(1.0).to_array(),
                light: [-0.4, -1.0, -0.3, 0.0],
            };
            self.queue.write_buffer(&self.camera_buffer, i as u64 * CAMERA_SLOT, bytemuck::bytes_of(&u));
        }
    }

    /// Draws each eye into its own view (the layers of a headset's swapchain image, `width` ×
    /// `height` each) with one preparation of the scenes and one submission: the OpenXR path.
    /// `scenes` are drawn together (the session, then the headset's panels), none copied.
    pub fn draw_layers(
        &mut self,
        views: [&wgpu::TextureView; 2],
        scenes: &[&Scene],
        eyes: &[Eye; 2],
        width: u32,
        height: u32,
    ) {
        let started = std::time::Instant::now();
        self.ensure_depth(width, height);
        let centre = (eyes[0].position + eyes[1].position) / 2.0;
        let ranges = self.prepare(scenes, centre);
        self.write_cameras(eyes);
        let depth = &self.window_depth.as_ref().expect("depth").2;
        let mut encoder = self.device.create_command_encoder(&Default::default());
        for (i, view) in views.iter().enumerate() {
            let mut pass = begin_pass(&mut encoder, "eye", view, depth, None);
            pass.set_bind_group(0, &self.camera_group, &[(i as u64 * CAMERA_SLOT) as u32]);
            self.draw_content(&mut pass, &ranges, scenes, &self.scene_pipeline, &self.grid_pipeline);
            self.labels.draw(&mut pass);
        }
        self.queue.submit(Some(encoder.finish()));
        self.stats.cpu = started.elapsed();
    }

    /// Draws both eyes into the two layers of `view` (a two-layer array view of a headset's
    /// swapchain image, `width` × `height` per layer) in one multiview pass: each draw covers
    /// both eyes. Falls back to [`Renderer::draw_layers`]' pass per eye where the device has no
    /// multiview ([`Renderer::has_multiview`]).
    pub fn draw_array(
        &mut self,
        view: &wgpu::TextureView,
        layers: [&wgpu::TextureView; 2],
        scenes: &[&Scene],
        eyes: &[Eye; 2],
        width: u32,
        height: u32,
    ) {
        if self.multiview.is_none() {
            return self.draw_layers(layers, scenes, eyes, width, height);
        }
        let started = std::time::Instant::now();
        let centre = (eyes[0].position + eyes[1].position) / 2.0;
        let ranges = self.prepare(scenes, centre);
        let device = self.device.clone();
        let mv = self.multiview.as_mut().expect("checked above");
        if mv.depth.as_ref().is_none_or(|(w, h, _)| (*w, *h) != (width, height)) {
            let depth = device.create_texture(&wgpu::TextureDescriptor {
                label: Some("multiview depth"),
                size: wgpu::Extent3d { width, height, depth_or_array_layers: 2 },
                mip_level_count: 1,
                sample_count: 1,
                dimension: wgpu::TextureDimension::D2,
                format: DEPTH_FORMAT,
                usage: wgpu::TextureUsages::RENDER_ATTACHMENT,
                view_formats: &[],
            });
            let view = depth.create_view(&wgpu::TextureViewDescriptor {
                dimension: Some(wgpu::TextureViewDimension::D2Array),
                array_layer_count: Some(2),
                ..Default::default()
            });
            mv.depth = Some((width, height, view));
        }
        let cams = eyes.map(|eye| CameraUniform {
            view_proj: eye.view_projection().to_cols_array_2d(),
            eye: eye.position.extend(1.0).to_array(),
            light: [-0.4, -1.0, -0.3, 0.0],
        });
        let mv = self.multiview.as_ref().expect("checked above");
        self.queue.write_buffer(&mv.cameras, 0, bytemuck::cast_slice(&cams));
        let depth = &mv.depth.as_ref().expect("made above").2;
        let mut encoder = self.device.create_command_encoder(&Default::default());
        {
            let mut pass = begin_pass(&mut encoder, "eyes", view, depth, std::num::NonZeroU32::new(0b11));
            pass.set_bind_group(0, &mv.group, &[]);
            self.draw_content(&mut pass, &ranges, scenes, &mv.scene, &mv.grid);
            self.labels.draw_multiview(&mut pass);
        }
        self.queue.submit(Some(encoder.finish()));
        self.stats.cpu = started.elapsed();
    }

    /// Records the scene's draws (instanced primitives per level of detail, mesh entities, the
    /// grid) into a pass whose cameras are bound.
    fn draw_content(
        &self,
        pass: &mut wgpu::RenderPass<'_>,
        ranges: &[(usize, u32, u32)],
        scenes: &[&Scene],
        scene_pipeline: &wgpu::RenderPipeline,
        grid_pipeline: &wgpu::RenderPipeline,
    ) {
        pass.set_pipeline(scene_pipeline);
        pass.set_vertex_buffer(1, self.instances.as_ref().expect("instances").0.slice(..));
        for (mesh, start, count) in ranges {
            if *count == 0 {
                continue;
            }
            let m = &self.primitives[*mesh];
            pass.set_vertex_buffer(0, m.vertices.slice(..));
            pass.set_index_buffer(m.indices.slice(..), wgpu::IndexFormat::Uint32);
            pass.draw_indexed(0..m.count, 0, *start..*start + *count);
        }
        for m in scenes.iter().flat_map(|s| s.meshes.iter()) {
            let cached = &self.meshes[&m.entity].mesh;
            if cached.count == 0 {
                continue;
            }
            let instance = self.device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
                label: None,
                contents: bytemuck::bytes_of(&m.instance),
                usage: wgpu::BufferUsages::VERTEX,
            });
            pass.set_vertex_buffer(0, cached.vertices.slice(..));
            pass.set_vertex_buffer(1, instance.slice(..));
            pass.set_index_buffer(cached.indices.slice(..), wgpu::IndexFormat::Uint32);
            pass.draw_indexed(0..cached.count, 0, 0..1);
        }
        pass.set_pipeline(grid_pipeline);
        pass.draw(0..GRID_VERTICES, 0..1);
    }

    /// Whether the device renders both eyes in one multiview pass.
    pub fn has_multiview(&self) -> bool {
        self.multiview.is_some()
    }

    /// Renders both eyes with one draw per batch into a two-layer texture (multiview, through
    /// [`Renderer::draw_array`]) and reads them back side by side, like [`Renderer::render`]
    /// with two eyes. `None` without multiview.
    pub fn render_multiview(
        &mut self,
        scene: &Scene,
        eyes: [Eye; 2],
        width: u32,
        height: u32,
    ) -> Option<Result<Image, RenderError>> {
        self.multiview.as_ref()?;
        let color = self.device.create_texture(&wgpu::TextureDescriptor {
            label: Some("multiview"),
            size: wgpu::Extent3d { width, height, depth_or_array_layers: 2 },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: self.format,
            usage: wgpu::TextureUsages::RENDER_ATTACHMENT | wgpu::TextureUsages::COPY_SRC,
            view_formats: &[],
        });
        let array = color.create_view(&wgpu::TextureViewDescriptor {
            dimension: Some(wgpu::TextureViewDimension::D2Array),
            array_layer_count: Some(2),
            ..Default::default()
        });
        let layer = |i: u32| {
            color.create_view(&wgpu::TextureViewDescriptor {
                dimension: Some(wgpu::TextureViewDimension::D2),
                base_array_layer: i,
                array_layer_count: Some(1),
                ..Default::default()
            })
        };
        self.draw_array(&array, [&layer(0), &layer(1)], &[scene], &eyes, width, height);
        let padded_row = (width * 4).div_ceil(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT) * wgpu::COPY_BYTES_PER_ROW_ALIGNMENT;
        let readback = self.device.create_buffer(&wgpu::BufferDescriptor {
            label: Some("multiview readback"),
            size: padded_row as u64 * height as u64 * 2,
            usage: wgpu::BufferUsages::COPY_DST | wgpu::BufferUsages::MAP_READ,
            mapped_at_creation: false,
        });
        let mut encoder = self.device.create_command_encoder(&Default::default());
        encoder.copy_texture_to_buffer(
            wgpu::TexelCopyTextureInfo {
                texture: &color,
                mip_level: 0,
                origin: wgpu::Origin3d::ZERO,
                aspect: wgpu::TextureAspect::All,
            },
            wgpu::TexelCopyBufferInfo {
                buffer: &readback,
                layout: wgpu::TexelCopyBufferLayout {
                    offset: 0,
                    bytes_per_row: Some(padded_row),
                    rows_per_image: Some(height),
                },
            },
            wgpu::Extent3d { width, height, depth_or_array_layers: 2 },
        );
        self.queue.submit(Some(encoder.finish()));
        let slice = readback.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.finish();
        let read = || -> Result<Image, RenderError> {
            rx.recv()
                .map_err(|e| RenderError::Readback(e.to_string()))?
                .map_err(|e| RenderError::Readback(e.to_string()))?;
            let data = slice.get_mapped_range().map_err(|e| RenderError::Readback(e.to_string()))?;
            let row = width as usize * 4;
            let mut rgba = Vec::with_capacity(row * 2 * height as usize);
            for y in 0..height as usize {
                for layer in 0..2 {
                    let start = (layer * height as usize + y) * padded_row as usize;
                    rgba.extend_from_slice(&data[start..start + row]);
                }
            }
            Ok(Image { width: width * 2, height, rgba })
        };
        Some(read())
    }

    /// Reads the last frame's pixels.
    pub fn read(&self) -> Result<Image, RenderError> {
        let target = self.target.as_ref().ok_or_else(|| RenderError::Readback("nothing drawn yet".into()))?;
        let slice = target.readback.slice(..);
        let (tx, rx) = std::sync::mpsc::channel();
        slice.map_async(wgpu::MapMode::Read, move |r| {
            let _ = tx.send(r);
        });
        self.device
            .poll(wgpu::PollType::Wait { submission_index: None, timeout: None })
            .map_err(|e| RenderError::Readback(e.to_string()))?;
        rx.recv()
            .map_err(|e| RenderError::Readback(e.to_string()))?
            .map_err(|e| RenderError::Readback(e.to_string()))?;
        let mut rgba = Vec::with_capacity((target.width * target.height * 4) as usize);
        {
            let data = slice.get_mapped_range().map_err(|e| RenderError::Readback(e.to_string()))?;
            for row in data.chunks_exact(target.padded_row as usize) {
                rgba.extend_from_slice(&row[..target.width as usize * 4]);
            }
        }
        target.readback.unmap();
        Ok(Image { width: target.width, height: target.height, rgba })
    }

    /// Draws and reads back in one call.
    pub fn render(
        &mut self,
        scene: &Scene,
        eyes: &[Eye],
        width: u32,
        height: u32,
        hud: Option<&str>,
    ) -> Result<Image, RenderError> {
        self.draw_inner(scene, eyes, width, height, hud, true);
        self.read()
    }
}

/// A pass clearing `color` to the background and `depth` to far.
fn begin_pass<'e>(
    encoder: &'e mut wgpu::CommandEncoder,
    label: &str,
    color: &wgpu::TextureView,
    depth: &wgpu::TextureView,
    views: Option<std::num::NonZeroU32>,
) -> wgpu::RenderPass<'e> {
    encoder.begin_render_pass(&wgpu::RenderPassDescriptor {
        label: Some(label),
        color_attachments: &[Some(wgpu::RenderPassColorAttachment {
            view: color,
            depth_slice: None,
            resolve_target: None,
            ops: wgpu::Operations {
                load: wgpu::LoadOp::Clear(wgpu::Color { r: 0.05, g: 0.06, b: 0.08, a: 1.0 }),
                store: wgpu::StoreOp::Store,
            },
        })],
        depth_stencil_attachment: Some(wgpu::RenderPassDepthStencilAttachment {
            view: depth,
            depth_ops: Some(wgpu::Operations { load: wgpu::LoadOp::Clear(1.0), store: wgpu::StoreOp::Store }),
            stencil_ops: None,
        }),
        timestamp_writes: None,
        occlusion_query_set: None,
        multiview_mask: views,
    })
}

fn upload(device: &wgpu::Device, vertices: &[Vertex], indices: &[u32]) -> Mesh {
    // wgpu refuses empty buffers: give empty meshes one dummy element and a zero count.
    let v: &[Vertex] =
        if vertices.is_empty() { &[Vertex { position: [0.0; 3], normal: [0.0, 1.0, 0.0] }] } else { vertices };
    let i: &[u32] = if indices.is_empty() { &[0, 0, 0] } else { indices };
    Mesh {
        vertices: device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("vertices"),
            contents: bytemuck::cast_slice(v),
            usage: wgpu::BufferUsages::VERTEX,
        }),
        indices: device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("indices"),
            contents: bytemuck::cast_slice(i),
            usage: wgpu::BufferUsages::INDEX,
        }),
        count: if vertices.is_empty() { 0 } else { indices.len() as u32 },
    }
}

/// A cheap content fingerprint of a mesh (FNV-1a over its bytes), to rebuild its buffers only
/// when it changed.
fn fingerprint(positions: &[[f32; 3]], indices: &[u32]) -> u64 {
    let mut h = 0xcbf2_9ce4_8422_2325u64;
    for b in bytemuck::cast_slice::<[f32; 3], u8>(positions).iter().chain(bytemuck::cast_slice::<u32, u8>(indices)) {
        h = (h ^ *b as u64).wrapping_mul(0x100_0000_01b3);
    }
    h
}

/// An sRGB RGBA image uploaded as a texture and bound with `sampler` in a group of `layout`
/// (texture at binding 0, sampler at 1): the HUD overlay and the label atlas.
#[allow(clippy::too_many_arguments)]
pub(crate) fn image_group(
    device: &wgpu::Device,
    queue: &wgpu::Queue,
    layout: &wgpu::BindGroupLayout,
    sampler: &wgpu::Sampler,
    label: &str,
    width: u32,
    height: u32,
    pixels: &[u8],
) -> wgpu::BindGroup {
    let texture = device.create_texture_with_data(
        queue,
        &wgpu::TextureDescriptor {
            label: Some(label),
            size: wgpu::Extent3d { width, height, depth_or_array_layers: 1 },
            mip_level_count: 1,
            sample_count: 1,
            dimension: wgpu::TextureDimension::D2,
            format: wgpu::TextureFormat::Rgba8UnormSrgb,
            usage: wgpu::TextureUsages::TEXTURE_BINDING,
            view_formats: &[],
        },
        wgpu::util::TextureDataOrder::LayerMajor,
        pixels,
    );
    let view = texture.create_view(&Default::default());
    device.create_bind_group(&wgpu::BindGroupDescriptor {
        label: Some(label),
        layout,
        entries: &[
            wgpu::BindGroupEntry { binding: 0, resource: wgpu::BindingResource::TextureView(&view) },
            wgpu::BindGroupEntry { binding: 1, resource: wgpu::BindingResource::Sampler(sampler) },
        ],
    })
}
