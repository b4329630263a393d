// The label shader (text quads from the glyph atlas). Its CAMERA marker is replaced as in
// scene.wgsl (viewer/src/labels.rs).
struct Camera { view_proj: mat4x4<f32>, eye: vec4<f32>, light: vec4<f32> };
/*CAMERA*/
@group(1) @binding(0) var atlas: texture_2d<f32>;
@group(1) @binding(1) var smp: sampler;

struct LIn { @location(0) anchor: vec4<f32>, @location(1) size: vec4<f32>, @location(2) uv: vec4<f32> };
struct LOut { @builtin(position) clip: vec4<f32>, @location(0) uv: vec2<f32> };

@vertex fn label_vs(@builtin(vertex_index) idx: u32, l: LIn /*VIEW_ARG*/) -> LOut {
  let cam = camera(/*VIEW*/);
  var corners = array<vec2<f32>, 6>(vec2(0.0, 0.0), vec2(1.0, 0.0), vec2(1.0, 1.0),
                                    vec2(0.0, 0.0), vec2(1.0, 1.0), vec2(0.0, 1.0));
  let c = corners[idx];
  // Face the eye, upright: right is horizontal, up is perpendicular to the view direction.
  let dir = normalize(l.anchor.xyz - cam.eye.xyz);
  var right = cross(dir, vec3<f32>(0.0, 1.0, 0.0));
  if (length(right) < 1e-4) { right = vec3<f32>(1.0, 0.0, 0.0); }
  right = normalize(right);
  let up = cross(right, dir);
  let p = l.anchor.xyz + right * ((c.x - 0.5) * l.size.x) + up * (c.y * l.size.y);
  var o: LOut;
  o.clip = cam.view_proj * vec4<f32>(p, 1.0);
  o.uv = vec2<f32>(mix(l.uv.x, l.uv.z, c.x), mix(l.uv.w, l.uv.y, c.y));
  return o;
}

@fragment fn label_fs(i: LOut) -> @location(0) vec4<f32> {
  return textureSample(atlas, smp, i.uv);
}
