// Builds the page into dist/ (index.html and one bundled, minified viewer.js). The output is
// committed, and the test script rebuilds it and fails when the committed copy is stale.
import { build } from 'esbuild';
import { copyFileSync, mkdirSync } from 'node:fs';

mkdirSync('dist', { recursive: true });
await build({
  entryPoints: ['src/main.ts'],
  bundle: true,
  minify: true,
  format: 'esm',
  target: ['es2022', 'chrome120', 'firefox121', 'safari17'],
  outfile: 'dist/viewer.js',
  legalComments: 'eof',
  logLevel: 'warning',
});
copyFileSync('index.html', 'dist/index.html');
