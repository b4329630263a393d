//! Drawing [`Label`]s: every label of a frame is rasterised into one atlas texture (rebuilt only
//! when the texts or colours change) and drawn as an instanced quad that faces the eye, over
//! the scene (no depth test, alpha blended), in the per-eye passes.

use wgpu::util::DeviceExt;

use crate::hud;
use crate::scene::{LABEL_COLUMNS, Label};

/// Labels drawn per frame at most (the rest are dropped, in order).
pub const MAX_LABELS: usize = 64;

/// The label shader; the camera source is filled in for one camera per draw or for multiview.
const LABEL_WGSL: &str = include_str!("shaders/label.wgsl");

/// Per-label instance data as the shader reads it.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, bytemuck::Pod, bytemuck::Zeroable)]
struct LabelInstance {
    /// Bottom centre, world metres (w unused).
    anchor: [f32; 4],
    /// Width and height, world metres.
    size: [f32; 4],
    /// Atlas rectangle: left, top, right, bottom (0..1).
    uv: [f32; 4],
}

/// The atlas of the labels last drawn, with their instances.
struct Atlas {
    /// What it was built from: each label's text and accent.
    key: Vec<(String, [u8; 4])>,
    /// Each label's size in pixels and its rectangle in the atlas.
    rects: Vec<(usize, usize, [f32; 4])>,
    group: wgpu::BindGroup,
}

/// The label pipelines (per-eye passes, and multiview where the device has it) and the
/// current atlas.
pub(crate) struct Labels {
    pipeline: wgpu::RenderPipeline,
    multiview: Option<wgpu::RenderPipeline>,
    layout: wgpu::BindGroupLayout,
    sampler: wgpu::Sampler,
    atlas: Option<Atlas>,
    instances: Option<(wgpu::Buffer, u32)>,
}

/// sRGB bytes of a linear colour.
fn srgb(c: [f32; 4]) -> [u8; 4] {
    let e = |v: f32| {
        let v = v.clamp(0.0, 1.0);
        let s = if v <= 0.003_130_8 { v * 12.92 } else { 1.055 * v.powf(1.0 / 2.4) - 0.055 };
        (s * 255.0).round() as u8
    };
    [e(c[0]), e(c[1]), e(c[2]), (c[3].clamp(0.0, 1.0) * 255.0).round() as u8]
}

impl Labels {
    /// The pipelines for a target of `format` with the renderer's depth format; group 0 is the
    /// renderer's camera layout (`multiview_cameras`: the multiview path's, where it has one),
    /// group 1 a texture and a filtering sampler (`texture_layout`, the HUD's).
    pub(crate) fn new(
        device: &wgpu::Device,
        camera_layout: &wgpu::BindGroupLayout,
        texture_layout: &wgpu::BindGroupLayout,
        multiview_cameras: Option<&wgpu::BindGroupLayout>,
        format: wgpu::TextureFormat,
        depth_format: wgpu::TextureFormat,
    ) -> Labels {
        let layout = texture_layout.clone();
        let pipeline = |cameras: &wgpu::BindGroupLayout, multiview: bool| {
            let (camera, arg, view) = if multiview {
                (
                    "@group(0) @binding(0) var<uniform> cams: array<Camera, 2>;\nfn camera(v: u32) -> Camera { return cams[v]; }",
                    ", @builtin(view_index) view_index: u32",
                    "view_index",
                )
            } else {
                (
                    "@group(0) @binding(0) var<uniform> cam0: Camera;\nfn camera(v: u32) -> Camera { return cam0; }",
                    "",
                    "0u",
                )
            };
            let source =
                LABEL_WGSL.replace("/*CAMERA*/", camera).replace("/*VIEW_ARG*/", arg).replace("/*VIEW*/", view);
            let module = device.create_shader_module(wgpu::ShaderModuleDescriptor {
                label: Some("labels"),
                source: wgpu::ShaderSource::Wgsl(source.into()),
            });
            let pipeline_layout = device.create_pipeline_layout(&wgpu::PipelineLayoutDescriptor {
                label: Some("labels"),
                bind_group_layouts: &[Some(cameras), Some(&layout)],
                immediate_size: 0,
            });
            const ATTRS: [wgpu::VertexAttribute; 3] =
                wgpu::vertex_attr_array![0 => Float32x4, 1 => Float32x4, 2 => Float32x4];
            device.create_render_pipeline(&wgpu::RenderPipelineDescriptor {
                label: Some("labels"),
                layout: Some(&pipeline_layout),
                vertex: wgpu::VertexState {
                    module: &module,
                    entry_point: Some("label_vs"),
                    compilation_options: Default::default(),
                    buffers: &[Some(wgpu::VertexBufferLayout {
                        array_stride: std::mem::size_of::<LabelInstance>() as u64,
                        step_mode: wgpu::VertexStepMode::Instance,
                        attributes: &ATTRS,
                    })],
                },
                primitive: wgpu::PrimitiveState::default(),
                depth_stencil: Some(wgpu::DepthStencilState {
                    format: depth_format,
                    depth_write_enabled: Some(false),
                    depth_compare: Some(wgpu::CompareFunction::Always),
                    stencil: Default::default(),
                    bias: Default::default(),
                }),
                multisample: Default::default(),
                fragment: Some(wgpu::FragmentState {
                    module: &module,
                    entry_point: Some("label_fs"),
                    compilation_options: Default::default(),
                    targets: &[Some(wgpu::ColorTargetState {
                        format,
                        blend: Some(wgpu::BlendState::ALPHA_BLENDING),
                        write_mask: wgpu::ColorWrites::ALL,
                    })],
                }),
                multiview_mask: if multiview { std::num::NonZeroU32::new(0b11) } else { None },
                cache: None,
            })
        };
        let (pipeline, multiview) =
            (pipeline(camera_layout, false), multiview_cameras.map(|cameras| pipeline(cameras, true)));
        let sampler = device.create_sampler(&wgpu::SamplerDescriptor::default());
        Labels { pipeline, multiview, layout, sampler, atlas: None, instances: None }
    }

    /// Rebuilds the atlas if the labels' texts or colours changed, and uploads their instances.
    pub(crate) fn prepare(&mut self, device: &wgpu::Device, queue: &wgpu::Queue, labels: &[&Label]) {
        let labels = &labels[..labels.len().min(MAX_LABELS)];
        if labels.is_empty() {
            self.instances = None;
            return;
        }
        let key: Vec<(String, [u8; 4])> = labels.iter().map(|l| (l.text.clone(), srgb(l.accent))).collect();
        if self.atlas.as_ref().is_none_or(|a| a.key != key) {
            self.atlas = Some(self.build(device, queue, key));
        }
        let atlas = self.atlas.as_ref().expect("built above");
        let instances: Vec<LabelInstance> = labels
            .iter()
            .zip(&atlas.rects)
            .map(|(l, (w, h, uv))| {
                let height = l.line_height * *h as f32 / hud::LABEL_LINE as f32;
                LabelInstance {
                    anchor: l.anchor.extend(1.0).to_array(),
                    size: [height * *w as f32 / *h as f32, height, 0.0, 0.0],
                    uv: *uv,
                }
            })
            .collect();
        let buffer = device.create_buffer_init(&wgpu::util::BufferInitDescriptor {
            label: Some("label instances"),
            contents: bytemuck::cast_slice(&instances),
            usage: wgpu::BufferUsages::VERTEX,
        });
        self.instances = Some((buffer, instances.len() as u32));
    }

    fn build(&self, device: &wgpu::Device, queue: &wgpu::Queue, key: Vec<(String, [u8; 4])>) -> Atlas {
        let images: Vec<(usize, usize, Vec<u8>)> =
            key.iter().map(|(text, accent)| hud::badge(text, LABEL_COLUMNS, *accent)).collect();
        let width = images.iter().map(|i| i.0).max().unwrap_or(1);
        let height: usize = images.iter().map(|i| i.1).sum::<usize>().max(1);
        let mut pixels = vec![0u8; width * height * 4];
        let mut rects = Vec::with_capacity(images.len());
        let mut top = 0;
        for (w, h, rgba) in &images {
            for y in 0..*h {
                let dst = ((top + y) * width) * 4;
                pixels[dst..dst + w * 4].copy_from_slice(&rgba[y * w * 4..(y + 1) * w * 4]);
            }
            let (fw, fh) = (width as f32, height as f32);
            rects.push((*w, *h, [0.0, top as f32 / fh, *w as f32 / fw, (top + h) as f32 / fh]));
            top += h;
        }
        let group = crate::render::image_group(
            device,
            queue,
            &self.layout,
            &self.sampler,
            "label atlas",
            width as u32,
            height as u32,
            &pixels,
        );
        Atlas { key, rects, group }
    }

    /// Draws the prepared labels into a pass whose camera (group 0) is bound.
    pub(crate) fn draw(&self, pass: &mut wgpu::RenderPass<'_>) {
        self.draw_with(pass, &self.pipeline);
    }

    /// Draws the prepared labels into a multiview pass whose cameras (group 0) are bound.
    pub(crate) fn draw_multiview(&self, pass: &mut wgpu::RenderPass<'_>) {
        if let Some(p) = &self.multiview {
            self.draw_with(pass, p);
        }
    }

    fn draw_with(&self, pass: &mut wgpu::RenderPass<'_>, pipeline: &wgpu::RenderPipeline) {
        let (Some((buffer, count)), Some(atlas)) = (&self.instances, &self.atlas) else { return };
        pass.set_pipeline(pipeline);
        pass.set_bind_group(1, &atlas.group, &[]);
        pass.set_vertex_buffer(0, buffer.slice(..));
        pass.draw(0..6, 0..*count);
    }
}
