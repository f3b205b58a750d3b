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

// Modules replaced by stand-ins, for the agent's idle memory (docs/BENCHMARKS.md, "The agent's idle memory").
const STAND_INS = {
  // protobufjs loads long.js if it can, and long.js compiles a WebAssembly module when loaded
  // (~1 MiB of RSS); @porthole/protocol makes 64-bit fields decode as numbers, so it is unused.
  long: 'module.exports = {};',
  // winston's own tracing, shown only with DEBUG=winston*: it loads colour parsers at start (~1.5 MiB).
  '@dabh/diagnostics': 'module.exports = () => () => {};',
  // commander requires child_process at start for git-style subcommands, which the agent has none of:
  // child_process then loads at the first command instead (with crypto, ~1.5 MiB of an idle agent).
  'commander-child-process': "module.exports = { spawn: (...args) => require('node:child_process').spawn(...args) };",
};
const standIns = {
  name: 'stand-ins',
  setup(build) {
    build.onResolve({ filter: /^(long|@dabh\/diagnostics)$/ }, (args) => ({ path: args.path, namespace: 'stand-in' }));
    build.onResolve({ filter: /^(node:)?child_process$/ }, (args) =>
      /[\\/]commander[\\/]/.test(args.importer) ? { path: 'commander-child-process', namespace: 'stand-in' } : undefined);
    build.onLoad({ filter: /.*/, namespace: 'stand-in' }, (args) => ({ contents: STAND_INS[args.path], loader: 'js' }));
  },
};

await bundleForNode({
  entry: join(here, '..', 'src', 'main.ts'),
  outfile: process.argv[2] ?? join(here, '..', 'dist', 'porthole-agent.bundle.cjs'),
  external: ['serialport', '@serialport/*', '@node-rs/crc32'],
  define: { __PORTHOLE_AGENT_VERSION__: JSON.stringify(pkg.version), 'require.main': 'module' },
  plugins: [standIns],
});
