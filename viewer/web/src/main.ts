// The page: reads the session and key from the address, connects, draws the mirror with an
// overlay, orbits with the mouse, and enters VR through WebXR where the browser offers it.
//
// Address: /?session=<32 hex digits>[&ice=stun:host:port,...]#key=<64 hex digits: an Ed25519
// secret key with a role in the session>. Without a key the page makes one for this visit and
// shows the command that grants it the viewer role.

import { Live, Status } from './live.js';
import { randomSecretKey, unhex } from './protocol.js';
import { Renderer, View } from './render.js';
import { extract } from './scene.js';
import { Orbit, mul } from './math.js';
import { drawPanel, panelLines } from './panel.js';

declare global {
  interface Window {
    /** The connection's status, for people (the overlay) and tests. */
    theta: Status & { fps: number; frames: number; renderer: string; vr: string };
  }
}

const $ = (id: string) => document.getElementById(id)!;

function fail(message: string) {
  $('overlay').textContent = message;
  throw new Error(message);
}

const params = new URLSearchParams(location.search);
const fragment = new URLSearchParams(location.hash.slice(1));
const sessionHex = (params.get('session') ?? '').toLowerCase();
if (!/^[0-9a-f]{32}$/.test(sessionHex)) {
  ($('start') as HTMLElement).hidden = false;
  fail('Open a session: enter its id (32 hex digits) below, or add ?session=<id> to the address.');
}
let secret: Uint8Array;
const keyHex = fragment.get('key');
if (keyHex) {
  if (!/^[0-9a-fA-F]{64}$/.test(keyHex)) fail('#key= must be a 32-byte Ed25519 secret key as 64 hex digits.');
  secret = unhex(keyHex);
} else {
  secret = randomSecretKey();
}
const iceServers = (params.get('ice') ?? '').split(',').filter(Boolean).map((urls) => ({ urls }));

const canvas = $('view') as HTMLCanvasElement;
let renderer: Renderer;
try {
  renderer = new Renderer(canvas);
} catch (e) {
  fail(`Cannot draw: ${(e as Error).message}`);
}
const gl = renderer!.gl;
const dbg = gl.getExtension('WEBGL_debug_renderer_info');
const rendererName = String(dbg ? gl.getParameter(dbg.UNMASKED_RENDERER_WEBGL) : gl.getParameter(gl.RENDERER));

let frames = 0;
let fps = 0;
let overlayOn = params.get('overlay') !== '0';
const live = new Live('/webrtc/offer', unhex(sessionHex), secret, iceServers, () => publish());
const theta = (window.theta = Object.assign(live.status, {
  fps: 0,
  frames: 0,
  renderer: rendererName,
  vr: 'checking',
  // XR frames drawn, and the views of the last one (for tests and tools).
  xrFrames: 0,
  xrViews: [] as { position: number[]; orientation: number[]; projection: number[]; viewport: number[] }[],
  // The lines of the status panel shown in VR.
  xrPanel: [] as string[],
}));

function kb(n: number) {
  return n >= 1024 ? `${(n / 1024).toFixed(1)} KiB` : `${n} B`;
}

function publish() {
  Object.assign(theta, { fps, frames });
  const s = theta;
  const lines = [
    `theta · session ${s.session.slice(0, 8)}… · ${s.state}${s.role ? ` as ${s.role}` : ''} over ${s.transport}`,
    `seq ${s.seq} · ${s.entities} entities · state ${s.stateHash.slice(0, 16) || '—'} ${s.verified && s.stateHash === s.serverHash ? '✓ matches server' : ''}`,
    `snapshots ${s.snapshots} · deltas ${s.deltas} · resyncs ${s.resyncs} · reconnects ${s.reconnects}`,
    `rtt ${s.rttMs === null ? '—' : `${s.rttMs.toFixed(1)} ms`}` +
      (s.server ? ` · server: rtt ${s.server.rttMs.toFixed(1)} ms, out ${kb(s.server.outPerSec)}/s, in ${kb(s.server.inPerSec)}/s, ${s.server.deltasPerSec} deltas/s, queue ${s.server.queue}` : ''),
    `${fps.toFixed(0)} fps · ${rendererName} · VR: ${s.vr}`,
  ];
  if (s.error) lines.push(`⚠ ${s.error}`);
  if (s.state === 'refused' && s.code === 5) {
    lines.push(
      `This page's key ${s.publicKey} has no role in the session. Grant it one, and the page connects by itself:`,
      `  theta append --key OWNER.key --session ${s.session} --json '{"kind":"GrantRole","key":"${s.publicKey}","role":"viewer"}'`,
    );
  }
  const o = $('overlay');
  o.hidden = !overlayOn;
  o.textContent = lines.join('\n');
}

// Mouse: drag to orbit, wheel to zoom; H hides the overlay.
const orbit = new Orbit();
let dragging: { x: number; y: number } | null = null;
canvas.addEventListener('pointerdown', (e) => {
  dragging = { x: e.clientX, y: e.clientY };
  canvas.setPointerCapture(e.pointerId);
});
canvas.addEventListener('pointerup', () => (dragging = null));
canvas.addEventListener('pointermove', (e) => {
  if (!dragging) return;
  orbit.yaw -= (e.clientX - dragging.x) * 0.005;
  orbit.pitch = Math.min(1.5, Math.max(-0.2, orbit.pitch + (e.clientY - dragging.y) * 0.005));
  dragging = { x: e.clientX, y: e.clientY };
});
canvas.addEventListener('wheel', (e) => {
  orbit.distance = Math.min(400, Math.max(1, orbit.distance * Math.exp(e.deltaY * 0.001)));
  e.preventDefault();
}, { passive: false });
addEventListener('keydown', (e) => {
  if (e.key === 'h' || e.key === 'H') {
    overlayOn = !overlayOn;
    publish();
  }
});

let uploaded = -1;
let uploadedWorld: unknown = null;
function sync() {
  const w = live.world;
  if (w && (w !== uploadedWorld || w.version !== uploaded)) {
    renderer.upload(extract(w));
    uploaded = w.version;
    uploadedWorld = w;
  }
}

let last = performance.now();
let counted = 0;
function tick(now: number) {
  frames++;
  counted++;
  if (now - last >= 1000) {
    fps = (counted * 1000) / (now - last);
    counted = 0;
    last = now;
    publish();
  }
}

function drawPage(now: number) {
  if (xrSession) return;
  const dpr = window.devicePixelRatio || 1;
  const w = Math.max(1, Math.round(canvas.clientWidth * dpr));
  const h = Math.max(1, Math.round(canvas.clientHeight * dpr));
  if (canvas.width !== w || canvas.height !== h) {
    canvas.width = w;
    canvas.height = h;
  }
  sync();
  const view: View = { viewProj: orbit.viewProjection(w / h), eye: orbit.position(), viewport: [0, 0, w, h] };
  renderer.draw(null, [view]);
  tick(now);
  requestAnimationFrame(drawPage);
}
requestAnimationFrame(drawPage);

// WebXR: an "Enter VR" button where the browser has an immersive-vr session.
let xrSession: XRSession | null = null;
async function setupXr() {
  const button = $('vr') as HTMLButtonElement;
  const xr = (navigator as Navigator & { xr?: XRSystem }).xr;
  if (!xr) {
    theta.vr = 'WebXR not available in this browser';
  } else if (!(await xr.isSessionSupported('immersive-vr').catch(() => false))) {
    theta.vr = 'no headset found (immersive-vr unsupported)';
  } else {
    theta.vr = 'ready';
    button.hidden = false;
    button.onclick = async () => {
      if (xrSession) return xrSession.end();
      const session = await xr.requestSession('immersive-vr', { optionalFeatures: ['local-floor'] });
      await (gl as WebGL2RenderingContext & { makeXRCompatible(): Promise<void> }).makeXRCompatible();
      const layer = new XRWebGLLayer(session, gl);
      await session.updateRenderState({ baseLayer: layer });
      const base = await session.requestReferenceSpace('local-floor').catch(() => session.requestReferenceSpace('local'));
      // Stand 6 m back from the origin, facing it.
      const space = base.getOffsetReferenceSpace(new XRRigidTransform({ x: 0, y: 0, z: -6 }));
      // The status panel and live timeline: 1.1 m ahead of where the head is in the first
      // frame (the user faces −Z, towards the origin), 0.7 m below the eyes, facing the user.
      const panelCanvas = document.createElement('canvas');
      let panelAt: [number, number, number] | null = null;
      const showPanel = (head: DOMPointReadOnly) => {
        panelAt ??= [head.x, head.y - 0.7, head.z - 1.1];
        if (!overlayOn) {
          // H hides the panel with the overlay (the scene alone, as in the page).
          if (theta.xrPanel.length) renderer.setPanel(null);
          theta.xrPanel = [];
          return;
        }
        const lines = panelLines(theta, fps);
        if (lines.join('\n') === theta.xrPanel.join('\n')) return;
        theta.xrPanel = lines;
        drawPanel(panelCanvas, lines);
        renderer.setPanel(panelCanvas, { center: panelAt, size: [0.8, 0.25] });
      };
      xrSession = session;
      theta.vr = 'in VR';
      button.textContent = 'Exit VR';
      session.addEventListener('end', () => {
        xrSession = null;
        renderer.setPanel(null);
        theta.xrPanel = [];
        theta.vr = 'ready';
        button.textContent = 'Enter VR';
        requestAnimationFrame(drawPage);
      });
      const onFrame = (now: number, frame: XRFrame) => {
        session.requestAnimationFrame(onFrame);
        const pose = frame.getViewerPose(space);
        if (!pose) return;
        sync();
        showPanel(pose.transform.position);
        const views: View[] = pose.views.map((v) => {
          const vp = layer.getViewport(v)!;
          const p = v.transform.position;
          return {
            viewProj: mul(new Float32Array(v.projectionMatrix), new Float32Array(v.transform.inverse.matrix)),
            eye: [p.x, p.y, p.z],
            viewport: [vp.x, vp.y, vp.width, vp.height],
          };
        });
        renderer.draw(layer.framebuffer, views);
        theta.xrFrames += 1;
        theta.xrViews = pose.views.map((v) => {
          const vp = layer.getViewport(v)!;
          const { position: p, orientation: o } = v.transform;
          return {
            position: [p.x, p.y, p.z],
            orientation: [o.x, o.y, o.z, o.w],
            projection: Array.from(v.projectionMatrix),
            viewport: [vp.x, vp.y, vp.width, vp.height],
          };
        });
        tick(now);
      };
      session.requestAnimationFrame(onFrame);
    };
  }
  publish();
}
setupXr();
publish();
live.run();
