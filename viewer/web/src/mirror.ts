// The mirror world: the entities and canonical component bytes the server streams, with the
// order-independent state hash of docs/PROTOCOL.md ("State hash"), kept up to date in O(1)
// per changed item so every snapshot and delta can be checked.

import { sha256 } from '@noble/hashes/sha2.js';
import { Delta, SnapshotChunk } from './generated/theta/fb.js';
import { concat, hex } from './protocol.js';

const ITEM_DOMAIN = new TextEncoder().encode('theta/state-item/v1\0');
const STATE_DOMAIN = new TextEncoder().encode('theta/state/v1\0');
const MASK = (1n << 64n) - 1n;
const EMPTY = new Uint8Array(0);

function be64(x: bigint): Uint8Array {
  const b = new Uint8Array(8);
  new DataView(b.buffer).setBigUint64(0, x, false);
  return b;
}

function itemLanes(entity: bigint, component: bigint, bytes: Uint8Array): bigint[] {
  const h = sha256(concat(ITEM_DOMAIN, be64(entity), be64(component), bytes));
  const v = new DataView(h.buffer, h.byteOffset, 32);
  return [0, 1, 2, 3].map((i) => v.getBigUint64(i * 8, true));
}

/** A mirror diverged from the server: the page must resync from a fresh snapshot. */
export class OutOfSync extends Error {}

/** Entities (by Theta id) and their components' canonical bytes, plus the state hash. */
export class World {
  readonly entities = new Map<bigint, Map<bigint, Uint8Array>>();
  private lanes = [0n, 0n, 0n, 0n];
  private items = 0n;
  seq = 0n;
  /** Bumped on every change (renderers rebuild their scene when it moves). */
  version = 0;

  private account(entity: bigint, component: bigint, bytes: Uint8Array, sign: 1n | -1n) {
    const l = itemLanes(entity, component, bytes);
    for (let i = 0; i < 4; i++) this.lanes[i] = (this.lanes[i] + sign * l[i]) & MASK;
    this.items += sign;
  }

  spawn(e: bigint) {
    if (this.entities.has(e)) throw new OutOfSync(`entity ${e} spawned twice`);
    this.entities.set(e, new Map());
    this.account(e, 0n, EMPTY, 1n);
  }

  set(e: bigint, c: bigint, bytes: Uint8Array) {
    const comps = this.entities.get(e);
    if (!comps) throw new OutOfSync(`value for missing entity ${e}`);
    const old = comps.get(c);
    if (old) this.account(e, c, old, -1n);
    comps.set(c, bytes);
    this.account(e, c, bytes, 1n);
  }

  remove(e: bigint, c: bigint) {
    const comps = this.entities.get(e);
    const old = comps?.get(c);
    if (!comps || !old) throw new OutOfSync(`removal of absent component ${c.toString(16)} of ${e}`);
    comps.delete(c);
    this.account(e, c, old, -1n);
  }

  despawn(e: bigint) {
    const comps = this.entities.get(e);
    if (!comps) throw new OutOfSync(`despawn of missing entity ${e}`);
    for (const [c, bytes] of comps) this.account(e, c, bytes, -1n);
    this.entities.delete(e);
    this.account(e, 0n, EMPTY, -1n);
  }

  /** The 32-byte state hash, as lowercase hex. */
  stateHash(): string {
    const tail = new Uint8Array(40);
    const v = new DataView(tail.buffer);
    this.lanes.forEach((lane, i) => v.setBigUint64(i * 8, lane, true));
    v.setBigUint64(32, this.items, true);
    return hex(sha256(concat(STATE_DOMAIN, tail)));
  }

  /** Applies a delta (spawn, upserts, removals, despawns) and checks its state hash. */
  applyDelta(d: Delta) {
    if (d.fromSeq() !== this.seq) throw new OutOfSync(`delta from seq ${d.fromSeq()} but the mirror is at ${this.seq}`);
    for (let i = 0; i < d.spawnedLength(); i++) this.spawn(d.spawned(i)!);
    for (let i = 0; i < d.upsertsLength(); i++) {
      const u = d.upserts(i)!;
      this.set(u.entity(), u.component(), u.dataArray()?.slice() ?? EMPTY);
    }
    for (let i = 0; i < d.removalsLength(); i++) {
      const r = d.removals(i)!;
      this.remove(r.entity(), r.component());
    }
    for (let i = 0; i < d.despawnedLength(); i++) this.despawn(d.despawned(i)!);
    this.seq = d.toSeq();
    this.version++;
    const want = hex(d.stateHashArray() ?? EMPTY);
    const have = this.stateHash();
    if (want !== have) throw new OutOfSync(`state hash ${have.slice(0, 12)}… after seq ${this.seq}, server has ${want.slice(0, 12)}…`);
  }
}

/** Collects the chunks of one snapshot; yields the world once all arrived and it checks. */
export class Assembler {
  private chunks = new Map<number, SnapshotChunk>();
  private count = 0;
  private seq = -1n;

  add(c: SnapshotChunk): World | null {
    if (c.chunkIndex() === 0 || c.seq() !== this.seq) {
      this.chunks.clear();
      this.seq = c.seq();
      this.count = c.chunkCount();
    }
    if (c.chunkCount() !== this.count || c.chunkIndex() >= this.count) throw new OutOfSync('inconsistent snapshot chunks');
    this.chunks.set(c.chunkIndex(), c);
    if (this.chunks.size < this.count) return null;
    const w = new World();
    const parts = [...this.chunks.values()];
    for (const p of parts) for (let i = 0; i < p.entitiesLength(); i++) w.spawn(p.entities(i)!);
    for (const p of parts) {
      for (let i = 0; i < p.valuesLength(); i++) {
        const v = p.values(i)!;
        w.set(v.entity(), v.component(), v.dataArray()?.slice() ?? EMPTY);
      }
    }
    w.seq = this.seq;
    w.version = 1;
    const want = hex(parts[0].stateHashArray() ?? EMPTY);
    const have = w.stateHash();
    this.chunks.clear();
    if (want !== have) throw new OutOfSync(`snapshot at seq ${w.seq} hashes to ${have.slice(0, 12)}…, server says ${want.slice(0, 12)}…`);
    return w;
  }
}
