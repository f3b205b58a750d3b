// One CommonJS file with the whole agent, for the single executable and for
// guests without node_modules. serialport stays outside: its native bindings
// are loaded from disk only when a serial channel is used.
//   node packages/agent/scripts/bundle.mjs [OUTFILE]   (default dist/porthole-agent.bundle.cjs)
import { readFileSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bundleForNode } from '../../../scripts/node-bundle.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const pkg = JSON.parse(readFileSync(join(here, '..', 'package.json'), 'utf8'));

// protobufjs loads long.js if it can, and long.js compiles a WebAssembly module when loaded
// (~1 MiB of RSS); @porthole/protocol sets 64-bit fields to decode as numbers, so it is unused.
const withoutLong = {
  name: 'without-long',
  setup(build) {
    build.onResolve({ filter: /^long$/ }, () => ({ path: 'long', namespace: 'without-long' }));
    build.onLoad({ filter: /.*/, namespace: 'without-long' }, () => ({ contents: 'module.exports = {};', loader: 'js' }));
  },
};

await bundleForNode({
  entry: join(here, '..', 'src', 'main.ts'),
  outfile: process.argv[2] ?? join(here, '..', 'dist', 'porthole-agent.bundle.cjs'),
  external: ['serialport', '@serialport/*', '@node-rs/crc32'],
  define: { __PORTHOLE_AGENT_VERSION__: JSON.stringify(pkg.version), 'require.main': 'module' },
  plugins: [withoutLong],
});
