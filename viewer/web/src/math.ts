// Column-major 4×4 matrices and the cameras of viewer/src/camera.rs, with OpenGL's clip depth
// (-1..1) instead of wgpu's (0..1); the images match.

export type Vec3 = [number, number, number];
export type Quat = [number, number, number, number];
export type Mat4 = Float32Array;

export function mul(a: Mat4, b: Mat4): Mat4 {
  const o = new Float32Array(16);
  for (let c = 0; c < 4; c++) {
    for (let r = 0; r < 4; r++) {
      let s = 0;
      for (let k = 0; k < 4; k++) s += a[k * 4 + r] * b[c * 4 + k];
      o[c * 4 + r] = s;
    }
  }
  return o;
}

/** Scale, then rotate, then translate (glam's `from_scale_rotation_translation`). */
export function trs(t: Vec3, q: Quat, s: Vec3): Mat4 {
  const len = Math.hypot(q[0], q[1], q[2], q[3]) || 1;
  const [x, y, z, w] = q.map((v) => v / len);
  const m = new Float32Array([
    1 - 2 * (y * y + z * z), 2 * (x * y + w * z), 2 * (x * z - w * y), 0,
    2 * (x * y - w * z), 1 - 2 * (x * x + z * z), 2 * (y * z + w * x), 0,
    2 * (x * z + w * y), 2 * (y * z - w * x), 1 - 2 * (x * x + y * y), 0,
    t[0], t[1], t[2], 1,
  ]);
  for (let c = 0; c < 3; c++) for (let r = 0; r < 3; r++) m[c * 4 + r] *= s[c];
  return m;
}

/** A view matrix looking from `eye` at `target`, Y up (right-handed). */
export function lookAt(eye: Vec3, target: Vec3): Mat4 {
  const sub = (a: Vec3, b: Vec3): Vec3 => [a[0] - b[0], a[1] - b[1], a[2] - b[2]];
  const cross = (a: Vec3, b: Vec3): Vec3 => [a[1] * b[2] - a[2] * b[1], a[2] * b[0] - a[0] * b[2], a[0] * b[1] - a[1] * b[0]];
  const norm = (a: Vec3): Vec3 => {
    const l = Math.hypot(...a) || 1;
    return [a[0] / l, a[1] / l, a[2] / l];
  };
  const dot = (a: Vec3, b: Vec3) => a[0] * b[0] + a[1] * b[1] + a[2] * b[2];
  const f = norm(sub(target, eye));
  const s = norm(cross(f, [0, 1, 0]));
  const u = cross(s, f);
  return new Float32Array([
    s[0], u[0], -f[0], 0,
    s[1], u[1], -f[1], 0,
    s[2], u[2], -f[2], 0,
    -dot(s, eye), -dot(u, eye), dot(f, eye), 1,
  ]);
}

/** Near and far planes, metres (as the Rust viewer). */
export const NEAR = 0.05;
export const FAR = 500;

/** A symmetric perspective projection with vertical field of view `fovY` (radians). */
export function perspective(fovY: number, aspect: number): Mat4 {
  const t = Math.tan(fovY / 2) * NEAR;
  const r = t * aspect;
  return frustum(-r, r, -t, t);
}

/** An off-axis projection from the near-plane edges. */
export function frustum(l: number, r: number, b: number, t: number): Mat4 {
  const n = NEAR, f = FAR;
  return new Float32Array([
    (2 * n) / (r - l), 0, 0, 0,
    0, (2 * n) / (t - b), 0, 0,
    (r + l) / (r - l), (t + b) / (t - b), -(f + n) / (f - n), -1,
    0, 0, (-2 * f * n) / (f - n), 0,
  ]);
}

/** The orbit camera of the Rust viewer (same defaults, so both draw the same picture). */
export class Orbit {
  target: Vec3 = [0, 0.5, 0];
  distance = 14;
  yaw = 0.6;
  pitch = 0.45;
  fovY = 1.0;

  position(): Vec3 {
    const c = Math.cos(this.pitch);
    return [
      this.target[0] + Math.sin(this.yaw) * c * this.distance,
      this.target[1] + Math.sin(this.pitch) * this.distance,
      this.target[2] + Math.cos(this.yaw) * c * this.distance,
    ];
  }

  viewProjection(aspect: number): Mat4 {
    return mul(perspective(this.fovY, aspect), lookAt(this.position(), this.target));
  }
}
