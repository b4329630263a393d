// WebGL2 renderer: the shading, grid and colours of the native renderer
// (viewer/src/render.rs), instanced per primitive shape, drawn once per eye (one view in a
// page, two in a headset through WebXR).

import { primitives, mesh as meshGeometry, Geometry } from './geometry.js';
import { INSTANCE_FLOATS, Scene } from './scene.js';
import { Mat4 } from './math.js';

const SCENE_VS = `#version 300 es
layout(location=0) in vec3 pos;
layout(location=1) in vec3 normal;
layout(location=2) in vec4 m0;
layout(location=3) in vec4 m1;
layout(location=4) in vec4 m2;
layout(location=5) in vec4 m3;
layout(location=6) in vec4 color;
layout(location=7) in vec4 highlight;
uniform mat4 view_proj;
out vec3 v_normal;
out vec3 v_world;
out vec4 v_color;
out vec4 v_highlight;
void main() {
  mat4 model = mat4(m0, m1, m2, m3);
  vec4 world = model * vec4(pos, 1.0);
  gl_Position = view_proj * world;
  v_world = world.xyz;
  v_normal = (model * vec4(normal, 0.0)).xyz;
  v_color = color;
  v_highlight = highlight;
}`;

// Colours are linear; the framebuffer is not sRGB, so the shaders encode (as an sRGB target
// does for the native renderer).
const SRGB = `
vec3 srgb(vec3 c) {
  c = clamp(c, 0.0, 1.0);
  return mix(c * 12.92, 1.055 * pow(c, vec3(1.0 / 2.4)) - 0.055, step(vec3(0.0031308), c));
}`;

const SCENE_FS = `#version 300 es
precision highp float;
uniform vec3 eye;
in vec3 v_normal;
in vec3 v_world;
in vec4 v_color;
in vec4 v_highlight;
out vec4 out_color;
${SRGB}
void main() {
  vec3 n = normalize(v_normal);
  vec3 l = normalize(vec3(0.4, 1.0, 0.3));
  float diffuse = max(dot(n, l), 0.0);
  vec3 rgb = v_color.rgb * (0.28 + 0.72 * diffuse);
  if (v_highlight.a > 0.0) {
    vec3 v = normalize(eye - v_world);
    float rim = pow(1.0 - max(dot(n, v), 0.0), 2.0);
    rgb = mix(rgb, v_highlight.rgb, clamp(0.35 + rim, 0.0, 1.0));
  }
  out_color = vec4(srgb(rgb), v_color.a);
}`;

const GRID_VS = `#version 300 es
uniform mat4 view_proj;
out vec2 v_xz;
void main() {
  // 20 x 20 tiles of 10 m.
  vec2 corners[6] = vec2[6](vec2(0.0, 0.0), vec2(1.0, 0.0), vec2(1.0, 1.0), vec2(0.0, 0.0), vec2(1.0, 1.0), vec2(0.0, 1.0));
  int tile = gl_VertexID / 6;
  vec2 origin = vec2(float(tile % 20), float(tile / 20)) * 10.0 - 100.0;
  vec2 xz = origin + corners[gl_VertexID % 6] * 10.0;
  gl_Position = view_proj * vec4(xz.x, 0.0, xz.y, 1.0);
  // A corner exactly in the eye's plane (w = 0: a head straight above a grid corner) makes
  // SwiftShader interpolate garbage over the whole clipped tile (it tinted the tile with the
  // axis colour). A hair of positive w leaves the corner outside the near plane, clipped as
  // before, with every rasteriser.
  if (abs(gl_Position.w) < 1e-4) gl_Position.w = 1e-4;
  v_xz = xz;
}`;

const GRID_FS = `#version 300 es
precision highp float;
in vec2 v_xz;
out vec4 out_color;
${SRGB}
void main() {
  vec2 cell = abs(fract(v_xz - 0.5) - 0.5) / fwidth(v_xz);
  float line = 1.0 - clamp(min(cell.x, cell.y), 0.0, 1.0);
  float fade = 1.0 - clamp(length(v_xz) / 40.0, 0.0, 1.0);
  float axis = step(abs(v_xz.x), 0.03) + step(abs(v_xz.y), 0.03);
  vec3 base = vec3(0.16, 0.17, 0.19);
  vec3 rgb = mix(base, vec3(0.45, 0.47, 0.5), line * fade) + vec3(0.2, 0.05, 0.05) * min(axis, 1.0);
  out_color = vec4(srgb(rgb), 1.0);
}`;

// A panel: a textured quad facing +Z (the canvas it shows is already sRGB).
const PANEL_VS = `#version 300 es
uniform mat4 view_proj;
uniform vec3 center;
uniform vec2 size;
out vec2 v_uv;
void main() {
  vec2 corners[6] = vec2[6](vec2(0.0, 0.0), vec2(1.0, 0.0), vec2(1.0, 1.0), vec2(0.0, 0.0), vec2(1.0, 1.0), vec2(0.0, 1.0));
  vec2 c = corners[gl_VertexID];
  gl_Position = view_proj * vec4(center + vec3((c.x - 0.5) * size.x, (c.y - 0.5) * size.y, 0.0), 1.0);
  v_uv = vec2(c.x, 1.0 - c.y);
}`;

const PANEL_FS = `#version 300 es
precision highp float;
uniform sampler2D tex;
in vec2 v_uv;
out vec4 out_color;
void main() {
  out_color = texture(tex, v_uv);
}`;

/** Where a panel floats: its centre and size in the world, metres. */
export interface PanelPlace {
  center: [number, number, number];
  size: [number, number];
}

/** Linear clear colour of the native renderer, sRGB-encoded. */
const CLEAR = [0.05, 0.06, 0.08].map((c) => (c <= 0.0031308 ? c * 12.92 : 1.055 * Math.pow(c, 1 / 2.4) - 0.055));

/** One eye: where it draws and what it sees. */
export interface View {
  viewProj: Mat4;
  eye: [number, number, number];
  viewport: [number, number, number, number];
}

interface Drawable {
  vao: WebGLVertexArrayObject;
  vertices: WebGLBuffer;
  indices: WebGLBuffer;
  instances: WebGLBuffer;
  count: number;
  instanceCount: number;
}

function compile(gl: WebGL2RenderingContext, vs: string, fs: string): WebGLProgram {
  const program = gl.createProgram()!;
  for (const [type, src] of [[gl.VERTEX_SHADER, vs], [gl.FRAGMENT_SHADER, fs]] as const) {
    const s = gl.createShader(type)!;
    gl.shaderSource(s, src);
    gl.compileShader(s);
    if (!gl.getShaderParameter(s, gl.COMPILE_STATUS)) throw new Error(`shader: ${gl.getShaderInfoLog(s)}`);
    gl.attachShader(program, s);
  }
  gl.linkProgram(program);
  if (!gl.getProgramParameter(program, gl.LINK_STATUS)) throw new Error(`program: ${gl.getProgramInfoLog(program)}`);
  return program;
}

export class Renderer {
  readonly gl: WebGL2RenderingContext;
  private scene: WebGLProgram;
  private grid: WebGLProgram;
  private sceneViewProj: WebGLUniformLocation | null;
  private sceneEye: WebGLUniformLocation | null;
  private gridViewProj: WebGLUniformLocation | null;
  private gridVao: WebGLVertexArrayObject;
  private shapes: Drawable[];
  private meshes = new Map<bigint, { bytes: Uint8Array; d: Drawable }>();
  private panelProgram: WebGLProgram;
  private panelUniforms: Record<'view_proj' | 'center' | 'size' | 'tex', WebGLUniformLocation | null>;
  private panel: { texture: WebGLTexture; place: PanelPlace } | null = null;
  /** Milliseconds the last frame's CPU work took. */
  cpuMs = 0;

  constructor(canvas: HTMLCanvasElement) {
    const gl = canvas.getContext('webgl2', { antialias: true, xrCompatible: true } as WebGLContextAttributes);
    if (!gl) throw new Error('this browser has no WebGL2');
    this.gl = gl;
    this.scene = compile(gl, SCENE_VS, SCENE_FS);
    this.grid = compile(gl, GRID_VS, GRID_FS);
    this.sceneViewProj = gl.getUniformLocation(this.scene, 'view_proj');
    this.sceneEye = gl.getUniformLocation(this.scene, 'eye');
    this.gridViewProj = gl.getUniformLocation(this.grid, 'view_proj');
    this.gridVao = gl.createVertexArray()!;
    this.shapes = primitives().map((g) => this.drawable(g));
    this.panelProgram = compile(gl, PANEL_VS, PANEL_FS);
    const at = (name: string) => gl.getUniformLocation(this.panelProgram, name);
    this.panelUniforms = { view_proj: at('view_proj'), center: at('center'), size: at('size'), tex: at('tex') };
  }

  /** Shows `canvas` as a panel at `place` in every view (null hides it). */
  setPanel(canvas: HTMLCanvasElement | null, place?: PanelPlace) {
    const gl = this.gl;
    if (!canvas || !place) {
      if (this.panel) gl.deleteTexture(this.panel.texture);
      this.panel = null;
      return;
    }
    const texture = this.panel?.texture ?? gl.createTexture()!;
    gl.bindTexture(gl.TEXTURE_2D, texture);
    gl.pixelStorei(gl.UNPACK_FLIP_Y_WEBGL, false);
    gl.pixelStorei(gl.UNPACK_PREMULTIPLY_ALPHA_WEBGL, false);
    gl.texImage2D(gl.TEXTURE_2D, 0, gl.RGBA, gl.RGBA, gl.UNSIGNED_BYTE, canvas);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MIN_FILTER, gl.LINEAR);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_MAG_FILTER, gl.LINEAR);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_S, gl.CLAMP_TO_EDGE);
    gl.texParameteri(gl.TEXTURE_2D, gl.TEXTURE_WRAP_T, gl.CLAMP_TO_EDGE);
    this.panel = { texture, place };
  }

  private drawable(g: Geometry): Drawable {
    const gl = this.gl;
    const vao = gl.createVertexArray()!;
    gl.bindVertexArray(vao);
    const vertices = gl.createBuffer()!;
    gl.bindBuffer(gl.ARRAY_BUFFER, vertices);
    gl.bufferData(gl.ARRAY_BUFFER, g.vertices, gl.STATIC_DRAW);
    gl.enableVertexAttribArray(0);
    gl.vertexAttribPointer(0, 3, gl.FLOAT, false, 24, 0);
    gl.enableVertexAttribArray(1);
    gl.vertexAttribPointer(1, 3, gl.FLOAT, false, 24, 12);
    const instances = gl.createBuffer()!;
    gl.bindBuffer(gl.ARRAY_BUFFER, instances);
    for (let i = 0; i < 6; i++) {
      gl.enableVertexAttribArray(2 + i);
      gl.vertexAttribPointer(2 + i, 4, gl.FLOAT, false, INSTANCE_FLOATS * 4, i * 16);
      gl.vertexAttribDivisor(2 + i, 1);
    }
    const indices = gl.createBuffer()!;
    gl.bindBuffer(gl.ELEMENT_ARRAY_BUFFER, indices);
    gl.bufferData(gl.ELEMENT_ARRAY_BUFFER, g.indices, gl.STATIC_DRAW);
    gl.bindVertexArray(null);
    return { vao, vertices, indices, instances, count: g.indices.length, instanceCount: 0 };
  }

  /** Uploads a scene's instances (and builds geometry for new or changed meshes). */
  upload(scene: Scene) {
    const gl = this.gl;
    scene.instances.forEach((data, i) => {
      const d = this.shapes[i];
      gl.bindBuffer(gl.ARRAY_BUFFER, d.instances);
      gl.bufferData(gl.ARRAY_BUFFER, data, gl.DYNAMIC_DRAW);
      d.instanceCount = data.length / INSTANCE_FLOATS;
    });
    const live = new Set<bigint>();
    for (const m of scene.meshes) {
      live.add(m.entity);
      let cached = this.meshes.get(m.entity);
      if (!cached || cached.bytes !== m.bytes) {
        if (cached) this.release(cached.d);
        cached = { bytes: m.bytes, d: this.drawable(meshGeometry(m.positions, m.indices)) };
        this.meshes.set(m.entity, cached);
      }
      gl.bindBuffer(gl.ARRAY_BUFFER, cached.d.instances);
      gl.bufferData(gl.ARRAY_BUFFER, m.instance, gl.DYNAMIC_DRAW);
      cached.d.instanceCount = 1;
    }
    for (const [e, m] of this.meshes) {
      if (!live.has(e)) {
        this.release(m.d);
        this.meshes.delete(e);
      }
    }
  }

  private release(d: Drawable) {
    const gl = this.gl;
    gl.deleteVertexArray(d.vao);
    [d.vertices, d.indices, d.instances].forEach((b) => gl.deleteBuffer(b));
  }

  /** Draws the uploaded scene into `framebuffer` (null: the canvas), once per view. */
  draw(framebuffer: WebGLFramebuffer | null, views: View[]) {
    const started = performance.now();
    const gl = this.gl;
    gl.bindFramebuffer(gl.FRAMEBUFFER, framebuffer);
    gl.disable(gl.SCISSOR_TEST);
    gl.clearColor(CLEAR[0], CLEAR[1], CLEAR[2], 1);
    gl.clearDepth(1);
    gl.clear(gl.COLOR_BUFFER_BIT | gl.DEPTH_BUFFER_BIT);
    gl.enable(gl.DEPTH_TEST);
    gl.depthFunc(gl.LESS);
    gl.frontFace(gl.CCW);
    const drawables = [...this.shapes, ...[...this.meshes.values()].map((m) => m.d)];
    for (const v of views) {
      gl.viewport(...v.viewport);
      gl.useProgram(this.scene);
      gl.enable(gl.CULL_FACE);
      gl.cullFace(gl.BACK);
      gl.uniformMatrix4fv(this.sceneViewProj, false, v.viewProj);
      gl.uniform3fv(this.sceneEye, v.eye);
      for (const d of drawables) {
        if (d.instanceCount === 0 || d.count === 0) continue;
        gl.bindVertexArray(d.vao);
        gl.drawElementsInstanced(gl.TRIANGLES, d.count, gl.UNSIGNED_INT, 0, d.instanceCount);
      }
      gl.disable(gl.CULL_FACE);
      gl.useProgram(this.grid);
      gl.uniformMatrix4fv(this.gridViewProj, false, v.viewProj);
      gl.bindVertexArray(this.gridVao);
      gl.drawArrays(gl.TRIANGLES, 0, 20 * 20 * 6);
      if (this.panel) {
        const u = this.panelUniforms;
        gl.disable(gl.DEPTH_TEST);
        gl.enable(gl.BLEND);
        gl.blendFunc(gl.SRC_ALPHA, gl.ONE_MINUS_SRC_ALPHA);
        gl.useProgram(this.panelProgram);
        gl.uniformMatrix4fv(u.view_proj, false, v.viewProj);
        gl.uniform3fv(u.center, this.panel.place.center);
        gl.uniform2fv(u.size, this.panel.place.size);
        gl.activeTexture(gl.TEXTURE0);
        gl.bindTexture(gl.TEXTURE_2D, this.panel.texture);
        gl.uniform1i(u.tex, 0);
        gl.drawArrays(gl.TRIANGLES, 0, 6);
        gl.disable(gl.BLEND);
        gl.enable(gl.DEPTH_TEST);
      }
    }
    gl.bindVertexArray(null);
    this.cpuMs = performance.now() - started;
  }
}
