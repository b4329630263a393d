// A live connection to the gateway over WebRTC data channels (docs/PROTOCOL.md, "WebRTC"):
// signalling by HTTP POST, the handshake on `control`, the mirror fed from `replication`,
// heartbeats both ways, and reconnection that resumes from the mirror's seq.

import {
  FrameReader, Message, decode, frame, heartbeatFrame, helloFrame, hex, nowUs, proofFrame, publicKeyOf,
} from './protocol.js';
import { Assembler, OutOfSync, World } from './mirror.js';
import { Role } from './generated/theta/fb.js';

/** What the page shows and what tests read (`window.theta`). */
export interface Status {
  state: 'connecting' | 'handshake' | 'live' | 'refused' | 'disconnected' | 'error';
  transport: 'webrtc';
  session: string;
  publicKey: string;
  role: string;
  /** The mirror's seq (decimal). */
  seq: string;
  /** The mirror's state hash (hex), and the server's for the same seq. */
  stateHash: string;
  serverHash: string;
  verified: boolean;
  entities: number;
  snapshots: number;
  deltas: number;
  resyncs: number;
  reconnects: number;
  /** Round trip measured by the page's own heartbeats, ms. */
  rttMs: number | null;
  /** The server's view of this connection (its `Stats` message). */
  server: { rttMs: number; inPerSec: number; outPerSec: number; deltasPerSec: number; queue: number; resyncs: number } | null;
  error: string;
  /** Close code of the last refusal (4: unknown session, 5: no role, ...). */
  code: number;
}

const CHANNELS = ['control', 'replication', 'commands'] as const;
const ROLE_NAMES: Record<number, string> = { [Role.None]: 'none', [Role.Viewer]: 'viewer', [Role.Auditor]: 'auditor', [Role.Editor]: 'editor', [Role.Owner]: 'owner' };

class Refused extends Error {
  constructor(readonly code: number, reason: string) {
    super(reason);
  }
}

function waitFor(what: string, ms: number, setup: (done: () => void, fail: (e: Error) => void) => void): Promise<void> {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`${what} did not happen within ${ms} ms`)), ms);
    setup(() => { clearTimeout(timer); resolve(); }, (e) => { clearTimeout(timer); reject(e); });
  });
}

export class Live {
  world: World | null = null;
  readonly status: Status;
  private pc: RTCPeerConnection | null = null;
  private assembler = new Assembler();
  private heartbeat = 0n;
  private timer: number | undefined;
  private closed = false;

  constructor(
    private readonly signalUrl: string,
    private readonly session: Uint8Array,
    private readonly secretKey: Uint8Array,
    private readonly iceServers: RTCIceServer[],
    private readonly onChange: () => void,
  ) {
    this.status = {
      state: 'connecting', transport: 'webrtc', session: hex(session), publicKey: hex(publicKeyOf(secretKey)),
      role: '', seq: '0', stateHash: '', serverHash: '', verified: false, entities: 0, snapshots: 0, deltas: 0,
      resyncs: 0, reconnects: 0, rttMs: null, server: null, error: '', code: 0,
    };
  }

  /** Connects, and keeps reconnecting (resuming from the mirror's seq) until `close`. */
  async run() {
    while (!this.closed) {
      try {
        await this.connectOnce();
        await new Promise<void>((resolve) => {
          const pc = this.pc!;
          const check = () => {
            if (['failed', 'closed', 'disconnected'].includes(pc.connectionState)) resolve();
          };
          pc.addEventListener('connectionstatechange', check);
          this.onDrop = resolve;
        });
        this.set({ state: 'disconnected', error: this.status.error || 'connection lost' });
      } catch (e) {
        const err = e as Error;
        if (err instanceof Refused) this.set({ state: 'refused', code: err.code, error: err.message });
        else this.set({ state: 'error', error: err.message });
      }
      this.teardown();
      if (this.closed) break;
      await new Promise((r) => setTimeout(r, this.status.state === 'refused' ? 3000 : 1000));
      this.status.reconnects++;
    }
  }

  close() {
    this.closed = true;
    this.teardown();
    this.onDrop();
  }

  private onDrop: () => void = () => {};

  private set(patch: Partial<Status>) {
    Object.assign(this.status, patch);
    this.onChange();
  }

  private teardown() {
    clearInterval(this.timer);
    this.pc?.close();
    this.pc = null;
  }

  private async connectOnce() {
    this.set({ state: 'connecting', error: '', code: 0 });
    const pc = new RTCPeerConnection({ iceServers: this.iceServers });
    this.pc = pc;
    const channels = CHANNELS.map((label) => {
      const c = pc.createDataChannel(label, { ordered: true });
      c.binaryType = 'arraybuffer';
      return c;
    });
    const [control, replication] = channels;
    const offer = await pc.createOffer();
    await pc.setLocalDescription(offer);
    // No trickle: the offer carries every candidate.
    if (pc.iceGatheringState !== 'complete') {
      await waitFor('ICE gathering', 5000, (done) => {
        pc.addEventListener('icegatheringstatechange', () => pc.iceGatheringState === 'complete' && done());
      }).catch(() => {}); // send what was gathered
    }
    const res = await fetch(this.signalUrl, {
      method: 'POST',
      headers: { 'content-type': 'application/json' },
      body: JSON.stringify({ type: 'offer', sdp: pc.localDescription!.sdp }),
    });
    if (!res.ok) throw new Error(`signalling refused: ${res.status} ${(await res.text()).trim()}`);
    await pc.setRemoteDescription(await res.json());
    await waitFor('the data channels opening', 10000, (done, fail) => {
      const check = () => channels.every((c) => c.readyState === 'open') && done();
      channels.forEach((c) => c.addEventListener('open', check));
      pc.addEventListener('connectionstatechange', () => pc.connectionState === 'failed' && fail(new Error('ICE failed')));
      check();
    });

    // The handshake on `control`.
    this.set({ state: 'handshake' });
    const inbox: Uint8Array[] = [];
    let wake: () => void = () => {};
    let failure: Error | null = null;
    const controlReader = new FrameReader();
    let handle: ((p: Uint8Array) => void) | null = null;
    control.onmessage = (ev) => {
      try {
        for (const p of controlReader.push(new Uint8Array(ev.data as ArrayBuffer))) {
          if (handle) handle(p);
          else inbox.push(p);
        }
      } catch (e) {
        failure = e as Error;
        this.drop(`control channel: ${failure.message}`);
      }
      wake();
    };
    const next = async (): Promise<Uint8Array> => {
      const deadline = Date.now() + 10000;
      while (!inbox.length) {
        if (failure) throw failure;
        if (Date.now() > deadline) throw new Error('the server did not answer the handshake');
        await new Promise<void>((r) => { wake = r; setTimeout(r, 250); });
      }
      return inbox.shift()!;
    };
    const refusal = (m: ReturnType<typeof decode>) =>
      m.kind === Message.Error ? new Refused(m.msg.code(), String(m.msg.reason() ?? '')) : new Error(`unexpected message ${m.kind} in the handshake`);
    const hello = helloFrame(publicKeyOf(this.secretKey), this.session, crypto.getRandomValues(new Uint8Array(32)), this.world?.seq ?? 0n);
    control.send(frame(hello));
    const challenge = await next();
    const c = decode(challenge);
    if (c.kind !== Message.Challenge) throw refusal(c);
    control.send(frame(proofFrame(this.secretKey, hello, challenge)));
    const w = decode(await next());
    if (w.kind !== Message.Welcome) throw refusal(w);
    this.set({ state: 'live', role: ROLE_NAMES[w.msg.role()] ?? String(w.msg.role()) });

    handle = (p) => this.onControl(p, control);
    inbox.splice(0).forEach(handle);
    const replicationReader = new FrameReader();
    replication.onmessage = (ev) => {
      try {
        for (const p of replicationReader.push(new Uint8Array(ev.data as ArrayBuffer))) this.onReplication(p);
      } catch (e) {
        if (e instanceof OutOfSync) {
          // Resync from a fresh snapshot: drop the mirror and reconnect.
          this.world = null;
          this.status.resyncs++;
          this.drop(`mirror out of sync (${e.message}); resyncing`);
        } else {
          this.drop(`replication: ${(e as Error).message}`);
        }
      }
    };
    for (const ch of channels) ch.onclose = () => this.drop('the server closed the connection');
    this.timer = setInterval(() => {
      this.heartbeat++;
      if (control.readyState === 'open') control.send(frame(heartbeatFrame(this.heartbeat, nowUs(), 0n)));
    }, 1000) as unknown as number;
  }

  private drop(reason: string) {
    this.status.error = reason;
    this.onDrop();
  }

  private onControl(p: Uint8Array, control: RTCDataChannel) {
    const m = decode(p);
    switch (m.kind) {
      case Message.Heartbeat: {
        const echo = m.msg.echoUs();
        if (echo === 0n) {
          this.heartbeat++;
          control.send(frame(heartbeatFrame(this.heartbeat, nowUs(), m.msg.sentAtUs())));
        } else {
          this.set({ rttMs: Number(nowUs() - echo) / 1000 });
        }
        break;
      }
      case Message.Stats: {
        const s = m.msg;
        this.set({
          server: {
            rttMs: Number(s.rttUs()) / 1000, inPerSec: Number(s.bytesInPerSec()), outPerSec: Number(s.bytesOutPerSec()),
            deltasPerSec: Number(s.deltasPerSec()), queue: s.queueDepth(), resyncs: Number(s.resyncs()),
          },
        });
        break;
      }
      case Message.Error:
        this.set({ error: `server: ${m.msg.reason()} (code ${m.msg.code()})`, code: m.msg.code() });
        break;
      default:
        break;
    }
  }

  private onReplication(p: Uint8Array) {
    const m = decode(p);
    if (m.kind === Message.SnapshotChunk) {
      const w = this.assembler.add(m.msg);
      if (w) {
        this.world = w;
        this.status.snapshots++;
        this.synced(hex(m.msg.stateHashArray()!));
      }
    } else if (m.kind === Message.Delta) {
      if (!this.world) throw new Error('delta before any snapshot');
      this.world.applyDelta(m.msg);
      this.status.deltas++;
      this.synced(hex(m.msg.stateHashArray()!));
    } else {
      throw new Error(`unexpected message ${m.kind} on the replication channel`);
    }
  }

  /** The mirror checked against the server's hash (apply throws on a mismatch). */
  private synced(serverHash: string) {
    const w = this.world!;
    this.set({ seq: w.seq.toString(), stateHash: w.stateHash(), serverHash, verified: true, entities: w.entities.size });
  }
}
