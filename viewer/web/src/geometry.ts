// The primitives of viewer/src/geometry.rs (unit size, centred), built the same way so the
// browser and the native renderer draw the same triangles, and meshes with smooth normals.

export interface Geometry {
  /** Interleaved position (3) and normal (3). */
  vertices: Float32Array;
  indices: Uint32Array;
}

class Builder {
  v: number[] = [];
  i: number[] = [];
  get count() {
    return this.v.length / 6;
  }
  vertex(p: number[], n: number[]) {
    this.v.push(p[0], p[1], p[2], n[0], n[1], n[2]);
  }
  quad(corners: number[][], n: number[]) {
    const b = this.count;
    corners.forEach((c) => this.vertex(c, n));
    this.i.push(b, b + 1, b + 2, b, b + 2, b + 3);
  }
  done(): Geometry {
    return { vertices: new Float32Array(this.v), indices: new Uint32Array(this.i) };
  }
}

const SEGMENTS = 24;
const TAU = Math.PI * 2;

function cube(): Geometry {
  const g = new Builder();
  const h = 0.5;
  g.quad([[h, -h, h], [h, -h, -h], [h, h, -h], [h, h, h]], [1, 0, 0]);
  g.quad([[-h, -h, -h], [-h, -h, h], [-h, h, h], [-h, h, -h]], [-1, 0, 0]);
  g.quad([[-h, h, h], [h, h, h], [h, h, -h], [-h, h, -h]], [0, 1, 0]);
  g.quad([[-h, -h, -h], [h, -h, -h], [h, -h, h], [-h, -h, h]], [0, -1, 0]);
  g.quad([[-h, -h, h], [h, -h, h], [h, h, h], [-h, h, h]], [0, 0, 1]);
  g.quad([[h, -h, -h], [-h, -h, -h], [-h, h, -h], [h, h, -h]], [0, 0, -1]);
  return g.done();
}

function sphere(slices: number, stacks: number): Geometry {
  const g = new Builder();
  for (let i = 0; i <= stacks; i++) {
    const v = (i / stacks) * Math.PI;
    for (let j = 0; j <= slices; j++) {
      const u = (j / slices) * TAU;
      const n = [Math.sin(v) * Math.cos(u), Math.cos(v), -Math.sin(v) * Math.sin(u)];
      g.vertex(n.map((c) => c * 0.5), n);
    }
  }
  const row = slices + 1;
  for (let i = 0; i < stacks; i++) {
    for (let j = 0; j < slices; j++) {
      const a = i * row + j, b = (i + 1) * row + j;
      g.i.push(a, b, a + 1, a + 1, b, b + 1);
    }
  }
  return g.done();
}

function lathe(segments: number, r0: number, y0: number, r1: number, y1: number, bottom: boolean, top: boolean): Geometry {
  const g = new Builder();
  const slope = (r0 - r1) / (y1 - y0);
  const len = Math.sqrt(1 + slope * slope);
  for (let j = 0; j <= segments; j++) {
    const u = (j / segments) * TAU;
    const c = Math.cos(u), s = -Math.sin(u);
    const n = [c / len, slope / len, s / len];
    g.vertex([r0 * c, y0, r0 * s], n);
    g.vertex([r1 * c, y1, r1 * s], n);
  }
  for (let j = 0; j < segments; j++) {
    const a = j * 2;
    g.i.push(a, a + 2, a + 1, a + 1, a + 2, a + 3);
  }
  for (const [cap, y, r, up] of [[bottom, y0, r0, -1], [top, y1, r1, 1]] as [boolean, number, number, number][]) {
    if (!cap || r === 0) continue;
    const centre = g.count;
    g.vertex([0, y, 0], [0, up, 0]);
    for (let j = 0; j <= segments; j++) {
      const u = (j / segments) * TAU;
      g.vertex([r * Math.cos(u), y, -r * Math.sin(u)], [0, up, 0]);
    }
    for (let j = 0; j < segments; j++) {
      const a = centre + 1 + j, b = centre + 2 + j;
      if (up > 0) g.i.push(centre, a, b);
      else g.i.push(centre, b, a);
    }
  }
  return g.done();
}

/** Geometry of each `PrimitiveShape` (Cube, Sphere, Cylinder, Plane, Cone), full detail. */
export function primitives(): Geometry[] {
  const plane = new Builder();
  plane.quad([[-0.5, 0, 0.5], [0.5, 0, 0.5], [0.5, 0, -0.5], [-0.5, 0, -0.5]], [0, 1, 0]);
  return [
    cube(),
    sphere(SEGMENTS, SEGMENTS / 2),
    lathe(SEGMENTS, 0.5, -0.5, 0.5, 0.5, true, true),
    plane.done(),
    lathe(SEGMENTS, 0.5, -0.5, 0, 0.5, true, false),
  ];
}

/** A mesh component's geometry, with smooth normals averaged from its faces. */
export function mesh(positions: number[][], indices: Uint32Array): Geometry {
  const normals = positions.map(() => [0, 0, 0]);
  for (let f = 0; f + 2 < indices.length; f += 3) {
    const [a, b, c] = [indices[f], indices[f + 1], indices[f + 2]].map((i) => positions[i]);
    const u = [b[0] - a[0], b[1] - a[1], b[2] - a[2]];
    const v = [c[0] - a[0], c[1] - a[1], c[2] - a[2]];
    const n = [u[1] * v[2] - u[2] * v[1], u[2] * v[0] - u[0] * v[2], u[0] * v[1] - u[1] * v[0]];
    for (const i of [indices[f], indices[f + 1], indices[f + 2]]) for (let k = 0; k < 3; k++) normals[i][k] += n[k];
  }
  const g = new Builder();
  positions.forEach((p, i) => {
    const n = normals[i];
    const l = Math.hypot(n[0], n[1], n[2]);
    g.vertex(p, l > 0 ? n.map((x) => x / l) : [0, 1, 0]);
  });
  g.i = Array.from(indices);
  return g.done();
}
