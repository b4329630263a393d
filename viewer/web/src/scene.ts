// What the renderer draws, extracted from the mirror like viewer/src/scene.rs: one instance
// per primitive entity (world transform, material colour, selection highlight), one draw per
// mesh entity. Entities are walked in id order, so the same world gives the same scene.

import * as flatbuffers from 'flatbuffers';
import { Material } from './generated/theta/fb/material.js';
import { Mesh } from './generated/theta/fb/mesh.js';
import { Parent } from './generated/theta/fb/parent.js';
import { Primitive } from './generated/theta/fb/primitive.js';
import { Selection } from './generated/theta/fb/selection.js';
import { Transform } from './generated/theta/fb/transform.js';
import { Mat4, Quat, Vec3, trs } from './math.js';
import { World } from './mirror.js';

/** Component ids (SipHash-2-4 of the names, docs/PROTOCOL.md "Component ids"). */
export const COMPONENT = {
  transform: 0x72d836534314151en,
  name: 0x24fe1a79a09b128en,
  parent: 0xf2b5e0b77438bdadn,
  mesh: 0xf24e55fd50d11b83n,
  material: 0x125308252ca02da0n,
  selection: 0xcd5675eabe01dc32n,
  toolState: 0x936e1612d27ade8dn,
  primitive: 0x28334c6ddae87948n,
};

/** Floats per instance: model matrix (16), colour (4), highlight (4). */
export const INSTANCE_FLOATS = 24;

const DEFAULT_COLOR = [0.7, 0.7, 0.72, 1.0];

export interface MeshItem {
  entity: bigint;
  /** The mesh component's bytes (the renderer caches geometry per entity and bytes). */
  bytes: Uint8Array;
  positions: number[][];
  indices: Uint32Array;
  instance: Float32Array;
}

export interface Scene {
  /** Instance data per primitive shape (Cube, Sphere, Cylinder, Plane, Cone). */
  instances: Float32Array[];
  meshes: MeshItem[];
  entities: number;
}

interface Local {
  t: Vec3;
  r: Quat;
  s: Vec3;
}

const IDENTITY: Local = { t: [0, 0, 0], r: [0, 0, 0, 1], s: [1, 1, 1] };

function root<T>(bytes: Uint8Array, get: (bb: flatbuffers.ByteBuffer) => T): T {
  return get(new flatbuffers.ByteBuffer(bytes));
}

function local(bytes: Uint8Array | undefined): Local {
  if (!bytes) return IDENTITY;
  const t = root(bytes, (bb) => Transform.getRootAsTransform(bb));
  const tr = t.translation(), r = t.rotation(), s = t.scale();
  return {
    t: tr ? [tr.x(), tr.y(), tr.z()] : [0, 0, 0],
    r: r ? [r.x(), r.y(), r.z(), r.w()] : [0, 0, 0, 1],
    s: s ? [s.x(), s.y(), s.z()] : [1, 1, 1],
  };
}

function rotate(q: Quat, v: Vec3): Vec3 {
  const [qx, qy, qz, qw] = q;
  const t = [2 * (qy * v[2] - qz * v[1]), 2 * (qz * v[0] - qx * v[2]), 2 * (qx * v[1] - qy * v[0])];
  return [
    v[0] + qw * t[0] + (qy * t[2] - qz * t[1]),
    v[1] + qw * t[1] + (qz * t[0] - qx * t[2]),
    v[2] + qw * t[2] + (qx * t[1] - qy * t[0]),
  ];
}

function mulQuat(a: Quat, b: Quat): Quat {
  const [ax, ay, az, aw] = a;
  const [bx, by, bz, bw] = b;
  return [
    aw * bx + ax * bw + ay * bz - az * by,
    aw * by - ax * bz + ay * bw + az * bx,
    aw * bz + ax * by - ay * bx + az * bw,
    aw * bw - ax * bx - ay * by - az * bz,
  ];
}

/** Composes a parent's world transform with a child's local one (projector's `compose`). */
function compose(p: Local, l: Local): Local {
  const moved = rotate(p.r, [p.s[0] * l.t[0], p.s[1] * l.t[1], p.s[2] * l.t[2]]);
  return {
    t: [p.t[0] + moved[0], p.t[1] + moved[1], p.t[2] + moved[2]],
    r: mulQuat(p.r, l.r),
    s: [p.s[0] * l.s[0], p.s[1] * l.s[1], p.s[2] * l.s[2]],
  };
}

function parentOf(world: World, e: bigint): bigint {
  const bytes = world.entities.get(e)?.get(COMPONENT.parent);
  return bytes ? root(bytes, (bb) => Parent.getRootAsParent(bb)).entity() : 0n;
}

/** An entity's world transform: its local Transform composed with its ancestors'. */
export function worldMatrix(world: World, e: bigint): Mat4 {
  const chain: Local[] = [];
  let x = e;
  while (x !== 0n && chain.length <= 1024) {
    const comps = world.entities.get(x);
    if (!comps) break;
    chain.push(local(comps.get(COMPONENT.transform)));
    x = parentOf(world, x);
  }
  const w = chain.reverse().reduce(compose, IDENTITY);
  return trs(w.t, w.r, w.s);
}

/** A stable, saturated colour for an author key (selection highlights). */
export function authorColor(key: Uint8Array): number[] {
  const h = (((key[0] ?? 0) | ((key[1] ?? 0) << 8)) / 65536) * 6;
  const x = 1 - Math.abs((h % 2) - 1);
  const rgb = [[1, x, 0], [x, 1, 0], [0, 1, x], [0, x, 1], [x, 0, 1], [1, 0, x]][Math.min(Math.floor(h), 5)];
  return [...rgb, 1];
}

/** Extracts the scene from the mirror. */
export function extract(world: World): Scene {
  const per: number[][] = [[], [], [], [], []];
  const meshes: MeshItem[] = [];
  const ids = [...world.entities.keys()].sort((a, b) => (a < b ? -1 : a > b ? 1 : 0));
  for (const e of ids) {
    const comps = world.entities.get(e)!;
    let color = DEFAULT_COLOR;
    const mat = comps.get(COMPONENT.material);
    if (mat) {
      const c = root(mat, (bb) => Material.getRootAsMaterial(bb)).baseColor();
      if (c) color = [c.r(), c.g(), c.b(), c.a()];
    }
    let highlight = [0, 0, 0, 0];
    const sel = comps.get(COMPONENT.selection);
    if (sel) {
      const first = root(sel, (bb) => Selection.getRootAsSelection(bb)).authors(0)?.keyArray();
      if (first) highlight = authorColor(first);
    }
    const instance = new Float32Array(INSTANCE_FLOATS);
    instance.set(worldMatrix(world, e), 0);
    instance.set(color, 16);
    instance.set(highlight, 20);
    const meshBytes = comps.get(COMPONENT.mesh);
    const prim = comps.get(COMPONENT.primitive);
    if (meshBytes) {
      const m = root(meshBytes, (bb) => Mesh.getRootAsMesh(bb));
      const positions: number[][] = [];
      for (let i = 0; i < m.positionsLength(); i++) {
        const p = m.positions(i)!;
        positions.push([p.x(), p.y(), p.z()]);
      }
      meshes.push({ entity: e, bytes: meshBytes, positions, indices: m.indicesArray()?.slice() ?? new Uint32Array(0), instance });
    } else if (prim) {
      const shape = root(prim, (bb) => Primitive.getRootAsPrimitive(bb)).shape();
      per[shape >= 0 && shape < 5 ? shape : 0].push(...instance);
    }
  }
  return { instances: per.map((p) => new Float32Array(p)), meshes, entities: ids.length };
}
