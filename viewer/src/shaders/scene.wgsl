// The scene shader (instanced primitives, lit). At pipeline creation the CAMERA, VIEW and
// VIEW_ARG markers are replaced: one camera per draw, or both eyes indexed by the view for
// multiview (viewer/src/render.rs).
struct Camera { view_proj: mat4x4<f32>, eye: vec4<f32>, light: vec4<f32> };
/*CAMERA*/

struct VIn {
  @location(0) pos: vec3<f32>, @location(1) normal: vec3<f32>,
  @location(2) m0: vec4<f32>, @location(3) m1: vec4<f32>, @location(4) m2: vec4<f32>, @location(5) m3: vec4<f32>,
  @location(6) color: vec4<f32>, @location(7) highlight: vec4<f32>,
};
struct VOut {
  @builtin(position) clip: vec4<f32>, @location(0) normal: vec3<f32>, @location(1) world: vec3<f32>,
  @location(2) color: vec4<f32>, @location(3) highlight: vec4<f32>,
  @location(4) eye: vec3<f32>, @location(5) light: vec3<f32>,
};

@vertex fn vs(v: VIn /*VIEW_ARG*/) -> VOut {
  let cam = camera(/*VIEW*/);
  let model = mat4x4<f32>(v.m0, v.m1, v.m2, v.m3);
  let world = model * vec4<f32>(v.pos, 1.0);
  var o: VOut;
  o.clip = cam.view_proj * world;
  o.eye = cam.eye.xyz;
  o.light = cam.light.xyz;
  o.world = world.xyz;
  o.normal = (model * vec4<f32>(v.normal, 0.0)).xyz;
  o.color = v.color;
  o.highlight = v.highlight;
  return o;
}

@fragment fn fs(i: VOut) -> @location(0) vec4<f32> {
  let n = normalize(i.normal);
  let l = normalize(-i.light);
  let diffuse = max(dot(n, l), 0.0);
  var rgb = i.color.rgb * (0.28 + 0.72 * diffuse);
  if (i.highlight.a > 0.0) {
    let v = normalize(i.eye - i.world);
    let rim = pow(1.0 - max(dot(n, v), 0.0), 2.0);
    rgb = mix(rgb, i.highlight.rgb, clamp(0.35 + rim, 0.0, 1.0));
  }
  return vec4<f32>(rgb, i.color.a);
}

struct GOut { @builtin(position) clip: vec4<f32>, @location(0) xz: vec2<f32> };

@vertex fn grid_vs(@builtin(vertex_index) idx: u32 /*VIEW_ARG*/) -> GOut {
  let cam = camera(/*VIEW*/);
  // 20 × 20 tiles of 10 m (small triangles clip well at the near plane on every driver).
  var corners = array<vec2<f32>, 6>(vec2(0.0, 0.0), vec2(1.0, 0.0), vec2(1.0, 1.0),
                                    vec2(0.0, 0.0), vec2(1.0, 1.0), vec2(0.0, 1.0));
  let tile = idx / 6u;
  let origin = vec2<f32>(f32(tile % 20u), f32(tile / 20u)) * 10.0 - 100.0;
  let xz = origin + corners[idx % 6u] * 10.0;
  var o: GOut;
  o.clip = cam.view_proj * vec4<f32>(xz.x, 0.0, xz.y, 1.0);
  o.xz = xz;
  return o;
}

@fragment fn grid_fs(i: GOut) -> @location(0) vec4<f32> {
  let cell = abs(fract(i.xz - 0.5) - 0.5) / fwidth(i.xz);
  let line = 1.0 - clamp(min(cell.x, cell.y), 0.0, 1.0);
  let fade = 1.0 - clamp(length(i.xz) / 40.0, 0.0, 1.0);
  let axis = step(abs(i.xz.x), 0.03) + step(abs(i.xz.y), 0.03);
  let base = vec3<f32>(0.16, 0.17, 0.19);
  let rgb = mix(base, vec3<f32>(0.45, 0.47, 0.5), line * fade) + vec3<f32>(0.2, 0.05, 0.05) * min(axis, 1.0);
  return vec4<f32>(rgb, 1.0);
}

@group(0) @binding(0) var hud_tex: texture_2d<f32>;
@group(0) @binding(1) var hud_smp: sampler;
struct HOut { @builtin(position) clip: vec4<f32>, @location(0) uv: vec2<f32> };

@vertex fn hud_vs(@builtin(vertex_index) idx: u32) -> HOut {
  let uv = vec2<f32>(f32((idx << 1u) & 2u), f32(idx & 2u));
  var o: HOut;
  o.clip = vec4<f32>(uv.x * 2.0 - 1.0, 1.0 - uv.y * 2.0, 0.0, 1.0);
  o.uv = uv;
  return o;
}

@fragment fn hud_fs(i: HOut) -> @location(0) vec4<f32> {
  return textureSample(hud_tex, hud_smp, i.uv);
}
