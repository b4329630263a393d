// The headset's status panel for the page in VR: what is shown (live, the seq, the entities,
// whether the mirror matches the server), the link's health, and a timeline bar whose playhead
// sits at the head while the session is followed live. Drawn with Canvas 2D into a texture
// that the renderer places in front of the user (the page's HTML overlay is not seen in VR).

import type { Status } from './live.js';

/** Panel texture size, pixels (the panel is 0.8 m × 0.25 m in the world). */
export const PANEL_PIXELS: [number, number] = [640, 200];
/** The playhead's colour: the native headset's (viewer/src/vr_input.rs), sRGB. */
export const PLAYHEAD = '#ffc259';

/** The panel's lines for a status (and what the tests read). */
export function panelLines(s: Status, fps: number): string[] {
  const matches = s.verified && s.stateHash === s.serverHash;
  return [
    `LIVE · session ${s.session.slice(0, 8)}… · ${s.state}${s.role ? ` as ${s.role}` : ''}`,
    `seq ${s.seq} · ${s.entities} entities · ${matches ? 'state matches server' : 'state not verified yet'}`,
    `${fps.toFixed(0)} fps · rtt ${s.rttMs === null ? '—' : `${s.rttMs.toFixed(1)} ms`} · deltas ${s.deltas}`,
  ];
}

/** Draws the panel into `canvas` (resized to [`PANEL_PIXELS`]). */
export function drawPanel(canvas: HTMLCanvasElement, lines: string[]) {
  const [w, h] = PANEL_PIXELS;
  canvas.width = w;
  canvas.height = h;
  const c = canvas.getContext('2d')!;
  c.fillStyle = 'rgba(16, 18, 24, 0.92)';
  c.fillRect(0, 0, w, h);
  c.fillStyle = '#f0f0f0';
  c.font = '26px monospace';
  c.textBaseline = 'top';
  lines.forEach((line, i) => c.fillText(line, 16, 14 + i * 36, w - 32));
  // The timeline: 1..head, the playhead at the head (live).
  const [x0, x1, y] = [16, w - 16, h - 40];
  c.fillStyle = '#d0d0d8';
  c.fillRect(x0, y, x1 - x0, 8);
  c.fillStyle = PLAYHEAD;
  c.fillRect(x1 - 16, y - 14, 16, 36);
}
