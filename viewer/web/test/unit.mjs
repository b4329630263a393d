// Bundles test/unit.ts with esbuild and runs it. Usage: node test/unit.mjs '<expected JSON>'
import { build } from 'esbuild';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

const dir = mkdtempSync(join(tmpdir(), 'theta-web-unit-'));
try {
  const outfile = join(dir, 'unit.mjs');
  await build({ entryPoints: ['test/unit.ts'], bundle: true, platform: 'node', format: 'esm', outfile, logLevel: 'warning' });
  const { run } = await import(pathToFileURL(outfile).href);
  const n = run(JSON.parse(process.argv[2]));
  console.log(`ok: ${n} checks`);
} catch (e) {
  console.error(e.message ?? e);
  process.exitCode = 1;
} finally {
  rmSync(dir, { recursive: true, force: true });
}
