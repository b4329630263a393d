// Drives the viewer page in a real browser (Debian's chromium through playwright-core) for
// tests/it/browser.rs. Usage: node test/browser.mjs URL [xr]
// With `xr`, the page gets a WebXR runtime before it loads: IWER (Meta's Immersive Web Emulation
// Runtime, a pinned npm dev dependency) emulating a Quest 3 with stereo on, since headless
// Chromium has no immersive-vr of its own.
// Then reads commands on stdin, one per line, and answers each with one JSON line on stdout:
//   wait SEQ            until the page's mirror is at seq >= SEQ with the server's state hash
//   shot PATH           a screenshot of the page (overlay shown)
//   scene PATH          a screenshot of the canvas alone (overlay hidden)
//   status              the page's status now
//   state NAME          until the page's connection state is NAME (e.g. refused)
//   goto URL            opens another address in the same tab
//   canvas PATH         screenshots the canvas as it is (in VR: with the status panel)
//   vr                  clicks "Enter VR" and waits until the page is in VR
//   xrframes N          until the page has drawn N XR frames
//   quit
// Page console lines and errors go to stderr.
import { chromium } from 'playwright-core';
import { createInterface } from 'node:readline';

const url = process.argv[2];
const executablePath = process.env.THETA_CHROMIUM ?? '/usr/bin/chromium';
const browser = await chromium.launch({
  executablePath,
  headless: true,
  args: [
    '--no-sandbox',
    '--allow-loopback-in-peer-connection',
    '--disable-features=WebRtcHideLocalIpsWithMdns',
    '--use-angle=swiftshader',
    '--enable-unsafe-swiftshader',
  ],
});
const page = await browser.newPage({ viewport: { width: 640, height: 360 }, deviceScaleFactor: 1 });
if (process.argv[3] === 'xr') {
  await page.addInitScript({ path: new URL('../node_modules/iwer/build/iwer.min.js', import.meta.url).pathname });
  await page.addInitScript(() => {
    const device = new globalThis.IWER.XRDevice(globalThis.IWER.metaQuest3, { stereoEnabled: true });
    device.installRuntime({ forceInstall: true });
  });
}
page.on('console', (m) => process.stderr.write(`[page ${m.type()}] ${m.text()}\n`));
page.on('pageerror', (e) => process.stderr.write(`[page error] ${e.message}\n`));
await page.goto(url);

const status = () => page.evaluate(() => JSON.parse(JSON.stringify(window.theta ?? null)));
const answer = (o) => process.stdout.write(JSON.stringify(o) + '\n');
// Polls the page's status until `pred` holds (60 s at most).
async function until(what, pred) {
  const deadline = Date.now() + 60_000;
  let s = await status();
  while (!(s && pred(s))) {
    if (Date.now() > deadline) throw new Error(`page not ${what} within 60 s: ${JSON.stringify(s)}`);
    await page.waitForTimeout(100);
    s = await status();
  }
  return s;
}

for await (const line of createInterface({ input: process.stdin })) {
  const [cmd, arg] = line.trim().split(/\s+/, 2);
  try {
    if (cmd === 'wait') {
      const seq = BigInt(arg);
      const s = await until(`at seq ${seq} with the server's state hash`, (s) => s.state === 'live' && BigInt(s.seq) >= seq && s.stateHash && s.stateHash === s.serverHash);
      answer({ ok: true, status: s });
    } else if (cmd === 'shot') {
      await page.screenshot({ path: arg });
      answer({ ok: true });
    } else if (cmd === 'scene') {
      await page.keyboard.press('h');
      await page.waitForTimeout(300);
      await page.locator('#view').screenshot({ path: arg });
      await page.keyboard.press('h');
      answer({ ok: true });
    } else if (cmd === 'canvas') {
      await page.locator('#view').screenshot({ path: arg });
      answer({ ok: true });
    } else if (cmd === 'state') {
      answer({ ok: true, status: await until(arg, (s) => s.state === arg) });
    } else if (cmd === 'goto') {
      await page.goto(arg);
      answer({ ok: true });
    } else if (cmd === 'vr') {
      await until('offering VR', (s) => s.vr === 'ready');
      await page.click('#vr');
      answer({ ok: true, status: await until('in VR', (s) => s.vr === 'in VR') });
    } else if (cmd === 'xrframes') {
      const n = Number(arg);
      answer({ ok: true, status: await until(`${n} XR frames in`, (s) => s.xrFrames >= n) });
    } else if (cmd === 'status') {
      answer({ ok: true, status: await status() });
    } else if (cmd === 'quit') {
      break;
    } else {
      answer({ ok: false, error: `unknown command ${cmd}` });
    }
  } catch (e) {
    answer({ ok: false, error: String(e.message ?? e), status: await status().catch(() => null) });
  }
}
await browser.close();
process.exit(0);
