// The live protocol (docs/PROTOCOL.md, "Live protocol"): framing, the handshake, and the
// messages a viewer sends. Everything here is byte-exact with the Rust client.

import * as flatbuffers from 'flatbuffers';
import { sha256, sha512 } from '@noble/hashes/sha2.js';
import * as ed from '@noble/ed25519';
import {
  Capabilities, Frame, Hello, Proof, Heartbeat, Message, Challenge, Welcome, SnapshotChunk,
  Delta, CommandReceipt, Error as WireError, Stats, Dictionary, Compressed, Interest,
} from './generated/theta/fb.js';
import { SCHEMA_HASH_HEX } from './schema_hash.js';

ed.hashes.sha512 = sha512;

/** Protocol version 1. */
export const PROTOCOL_VERSION = 1;
/** Largest frame payload accepted, bytes (the guard). */
export const MAX_FRAME = 65_536;

const PROOF_DOMAIN = new TextEncoder().encode('theta/handshake/v1\0');

export function hex(bytes: Uint8Array): string {
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

export function unhex(s: string): Uint8Array {
  if (!/^([0-9a-fA-F]{2})*$/.test(s)) throw new Error(`not hex: ${s.slice(0, 16)}…`);
  const out = new Uint8Array(s.length / 2);
  for (let i = 0; i < out.length; i++) out[i] = parseInt(s.slice(2 * i, 2 * i + 2), 16);
  return out;
}

export function concat(...parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let at = 0;
  for (const p of parts) {
    out.set(p, at);
    at += p.length;
  }
  return out;
}

/** The schema hash this page was built with. */
export const SCHEMA_HASH = unhex(SCHEMA_HASH_HEX);

/** `u32 LE length || payload`. */
export function frame(payload: Uint8Array): Uint8Array<ArrayBuffer> {
  const out = new Uint8Array(4 + payload.length);
  new DataView(out.buffer).setUint32(0, payload.length, true);
  out.set(payload, 4);
  return out;
}

/** Reassembles frames from data-channel messages (each may hold any number of frames or
 * parts of them). Throws on an empty frame or one over the guard, before buffering it. */
export class FrameReader {
  private buf: Uint8Array = new Uint8Array(0);

  push(chunk: Uint8Array): Uint8Array[] {
    this.buf = this.buf.length ? concat(this.buf, chunk) : chunk.slice();
    const out: Uint8Array[] = [];
    let at = 0;
    while (this.buf.length - at >= 4) {
      const len = new DataView(this.buf.buffer, this.buf.byteOffset + at, 4).getUint32(0, true);
      if (len === 0 || len > MAX_FRAME) throw new Error(`frame of ${len} bytes (guard ${MAX_FRAME})`);
      if (this.buf.length - at - 4 < len) break;
      out.push(this.buf.slice(at + 4, at + 4 + len));
      at += 4 + len;
    }
    this.buf = this.buf.slice(at);
    return out;
  }
}

/** A decoded frame: its union tag and the table. */
export type Decoded =
  | { kind: Message.Challenge; msg: Challenge }
  | { kind: Message.Welcome; msg: Welcome }
  | { kind: Message.SnapshotChunk; msg: SnapshotChunk }
  | { kind: Message.Delta; msg: Delta }
  | { kind: Message.Heartbeat; msg: Heartbeat }
  | { kind: Message.CommandReceipt; msg: CommandReceipt }
  | { kind: Message.Error; msg: WireError }
  | { kind: Message.Stats; msg: Stats }
  | { kind: Message.Dictionary; msg: Dictionary }
  | { kind: Message.Compressed; msg: Compressed }
  | { kind: Message.Hello | Message.Proof | Message.Interest | Message.NONE; msg: null };

/** Decodes a frame payload (identifier `THFR`). */
export function decode(payload: Uint8Array): Decoded {
  const bb = new flatbuffers.ByteBuffer(payload);
  if (payload.length < 8 || !Frame.bufferHasIdentifier(bb)) throw new Error('not a THFR frame');
  const f = Frame.getRootAsFrame(bb);
  const kind = f.messageType();
  const table = (t: { new (): object }) => f.message(new t());
  switch (kind) {
    case Message.Challenge: return { kind, msg: table(Challenge) as Challenge };
    case Message.Welcome: return { kind, msg: table(Welcome) as Welcome };
    case Message.SnapshotChunk: return { kind, msg: table(SnapshotChunk) as SnapshotChunk };
    case Message.Delta: return { kind, msg: table(Delta) as Delta };
    case Message.Heartbeat: return { kind, msg: table(Heartbeat) as Heartbeat };
    case Message.CommandReceipt: return { kind, msg: table(CommandReceipt) as CommandReceipt };
    case Message.Error: return { kind, msg: table(WireError) as WireError };
    case Message.Stats: return { kind, msg: table(Stats) as Stats };
    case Message.Dictionary: return { kind, msg: table(Dictionary) as Dictionary };
    case Message.Compressed: return { kind, msg: table(Compressed) as Compressed };
    case Message.Hello: case Message.Proof: case Message.Interest: case Message.NONE:
      return { kind, msg: null };
    default: throw new Error(`unknown message tag ${kind}`);
  }
}

function finish(b: flatbuffers.Builder, kind: Message, table: flatbuffers.Offset): Uint8Array {
  b.finish(Frame.createFrame(b, kind, table), 'THFR');
  return b.asUint8Array().slice();
}

/** The viewer's `Hello`: no compression, no interest management, exact deltas (a browser takes the whole
 * session, uncompressed; data channels are reliable and ordered). */
export function helloFrame(publicKey: Uint8Array, session: Uint8Array, clientNonce: Uint8Array, resumeSeq: bigint): Uint8Array {
  const b = new flatbuffers.Builder(256);
  const compression = Capabilities.createCompressionVector(b, []);
  const caps = Capabilities.createCapabilities(b, compression, false, 0, false, false);
  const schema = Hello.createSchemaHashVector(b, SCHEMA_HASH);
  const nonce = Hello.createClientNonceVector(b, clientNonce);
  const key = Hello.createPublicKeyVector(b, publicKey);
  const sess = Hello.createSessionVector(b, session);
  Hello.startHello(b);
  Hello.addProtocolVersion(b, PROTOCOL_VERSION);
  Hello.addSchemaHash(b, schema);
  Hello.addClientNonce(b, nonce);
  Hello.addPublicKey(b, key);
  Hello.addSession(b, sess);
  Hello.addCapabilities(b, caps);
  Hello.addResumeSeq(b, resumeSeq);
  const hello = Hello.endHello(b);
  return finish(b, Message.Hello, hello);
}

/** The `Proof`: Ed25519 over `"theta/handshake/v1\0" || SHA-256(len(hello) || hello ||
 * len(challenge) || challenge)`, lengths u32 LE, over the exact payloads exchanged. */
export function proofFrame(secretKey: Uint8Array, hello: Uint8Array, challenge: Uint8Array): Uint8Array {
  const len = (n: number) => {
    const b = new Uint8Array(4);
    new DataView(b.buffer).setUint32(0, n, true);
    return b;
  };
  const transcript = sha256(concat(len(hello.length), hello, len(challenge.length), challenge));
  const signature = ed.sign(concat(PROOF_DOMAIN, transcript), secretKey);
  const b = new flatbuffers.Builder(128);
  const proof = Proof.createProof(b, Proof.createSignatureVector(b, signature));
  return finish(b, Message.Proof, proof);
}

/** A `Heartbeat` (an answer when `echoUs` is non-zero). */
export function heartbeatFrame(sequence: bigint, sentAtUs: bigint, echoUs: bigint): Uint8Array {
  const b = new flatbuffers.Builder(64);
  return finish(b, Message.Heartbeat, Heartbeat.createHeartbeat(b, sequence, sentAtUs, echoUs));
}

/** The public key of a 32-byte Ed25519 secret key. */
export function publicKeyOf(secretKey: Uint8Array): Uint8Array {
  return ed.getPublicKey(secretKey);
}

/** A fresh random secret key. */
export function randomSecretKey(): Uint8Array {
  return crypto.getRandomValues(new Uint8Array(32));
}

/** Microseconds since the Unix epoch. */
export function nowUs(): bigint {
  return BigInt(Math.round((performance.timeOrigin + performance.now()) * 1000));
}

export { Message, Interest };
