// Unit checks of the page's protocol code, run by tests/it/browser.rs through test/unit.mjs
// with values the Rust implementation computed (argv[2], JSON).
import * as flatbuffers from 'flatbuffers';
import { FrameReader, MAX_FRAME, decode, frame, hex, proofFrame, publicKeyOf, unhex, Message } from '../src/protocol.js';
import { OutOfSync, World } from '../src/mirror.js';
import { Delta } from '../src/generated/theta/fb/delta.js';
import { ComponentValue } from '../src/generated/theta/fb/component-value.js';
import { Frame } from '../src/generated/theta/fb/frame.js';
import { Proof } from '../src/generated/theta/fb/proof.js';

interface Expected {
  emptyHash: string;
  oneCubeHash: string;
  cubeBytes: string;
  proofHello: string;
  proofChallenge: string;
  proofSignature: string;
}

let checks = 0;
function check(what: string, ok: boolean) {
  if (!ok) throw new Error(`failed: ${what}`);
  checks++;
}
function throws(what: string, f: () => unknown, pattern: RegExp) {
  try {
    f();
  } catch (e) {
    check(`${what} (${(e as Error).message})`, pattern.test((e as Error).message));
    return;
  }
  throw new Error(`failed: ${what} did not throw`);
}

function delta(from: bigint, to: bigint, stateHash: Uint8Array, spawned: bigint[], upserts: [bigint, bigint, Uint8Array][]): Delta {
  const b = new flatbuffers.Builder(256);
  const ups = upserts.map(([e, c, d]) => ComponentValue.createComponentValue(b, e, c, ComponentValue.createDataVector(b, d)));
  const upsertsV = Delta.createUpsertsVector(b, ups);
  const spawnedV = Delta.createSpawnedVector(b, spawned);
  const hashV = Delta.createStateHashVector(b, stateHash);
  const session = Delta.createSessionVector(b, new Uint8Array(16));
  Delta.startDelta(b);
  Delta.addSession(b, session);
  Delta.addFromSeq(b, from);
  Delta.addToSeq(b, to);
  Delta.addStateHash(b, hashV);
  Delta.addSpawned(b, spawnedV);
  Delta.addUpserts(b, upsertsV);
  const d = Delta.endDelta(b);
  b.finish(Frame.createFrame(b, Message.Delta, d), 'THFR');
  const m = decode(b.asUint8Array().slice());
  if (m.kind !== Message.Delta) throw new Error('not a delta');
  return m.msg;
}

export function run(want: Expected): number {
  // Framing: frames split across messages and several in one; the guard before buffering.
  const a = new Uint8Array([1, 2, 3]);
  const b = new Uint8Array(1000).fill(7);
  const stream = new Uint8Array([...frame(a), ...frame(b)]);
  const r = new FrameReader();
  const got = [...r.push(stream.slice(0, 5)), ...r.push(stream.slice(5, 600)), ...r.push(stream.slice(600))];
  check('two frames reassembled', got.length === 2 && hex(got[0]) === '010203' && got[1].length === 1000);
  throws('an empty frame', () => new FrameReader().push(new Uint8Array([0, 0, 0, 0])), /frame of 0 bytes/);
  const huge = new Uint8Array(4);
  new DataView(huge.buffer).setUint32(0, MAX_FRAME + 1, true);
  throws('a frame over the guard, from its header alone', () => new FrameReader().push(huge), /guard/);
  throws('garbage is not a frame', () => decode(new Uint8Array([9, 9, 9, 9, 9, 9, 9, 9, 9, 9])), /not a THFR frame/);

  // The state hash, against the Rust projector's.
  const w = new World();
  check('empty world hash = Rust', w.stateHash() === want.emptyHash);
  w.spawn(1n);
  w.set(1n, 0x28334c6ddae87948n, unhex(want.cubeBytes));
  check('one cube = Rust', w.stateHash() === want.oneCubeHash);
  w.remove(1n, 0x28334c6ddae87948n);
  w.despawn(1n);
  check('back to empty', w.stateHash() === want.emptyHash);
  throws('despawning a missing entity', () => w.despawn(5n), /missing/);

  // Deltas: a matching one applies; a wrong hash or base is an OutOfSync (the page resyncs).
  const m = new World();
  m.applyDelta(delta(0n, 3n, unhex(want.oneCubeHash), [1n], [[1n, 0x28334c6ddae87948n, unhex(want.cubeBytes)]]));
  check('delta applied', m.seq === 3n && m.stateHash() === want.oneCubeHash);
  const wrong = new World();
  let e: unknown = null;
  try {
    wrong.applyDelta(delta(0n, 3n, new Uint8Array(32), [1n], []));
  } catch (x) {
    e = x;
  }
  check('a wrong state hash is OutOfSync', e instanceof OutOfSync);
  throws('a delta from another seq', () => m.applyDelta(delta(0n, 4n, new Uint8Array(32), [], [])), /from seq 0/);

  // The handshake proof: byte-identical to the Rust client's signature (Ed25519 is deterministic).
  const secret = Uint8Array.from({ length: 32 }, (_, i) => i);
  check('test-vector public key', hex(publicKeyOf(secret)) === '03a107bff3ce10be1d70dd18e74bc09967e4d6309ba50d5f1ddc8664125531b8');
  const proof = proofFrame(secret, unhex(want.proofHello), unhex(want.proofChallenge));
  const f = Frame.getRootAsFrame(new flatbuffers.ByteBuffer(proof));
  const sig = (f.message(new Proof()) as Proof).signatureArray()!;
  check('proof signature = Rust', hex(sig) === want.proofSignature);
  return checks;
}
