// One CommonJS file with the whole `porthole` command (CLI, broker daemon, REST API), for the
// host's single executable. serialport and @node-rs/crc32 stay outside: their native bindings
// are loaded from disk beside the executable (serial targets only; a faster CRC32C).
//   node packages/broker/scripts/bundle.mjs [OUTFILE]   (default dist/porthole.bundle.cjs)
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { bundleForNode } from '../../../scripts/node-bundle.mjs';

const here = dirname(fileURLToPath(import.meta.url));

await bundleForNode({
  entry: join(here, '..', 'src', 'cli.ts'),
  outfile: process.argv[2] ?? join(here, '..', 'dist', 'porthole.bundle.cjs'),
  external: ['serialport', '@serialport/*', '@node-rs/crc32'],
  // cli.ts runs main() when it is the entry point.
  define: { 'require.main': 'module' },
  plugins: [{
    // msgpackr's optional string extractor is a native addon found by node-gyp-build, which a single
    // executable's require cannot load (it warns on every start): left out, msgpackr runs on its JS.
    name: 'without-msgpackr-extract',
    setup(b) {
      b.onResolve({ filter: /^msgpackr-extract$/ }, () => ({ path: 'msgpackr-extract', namespace: 'left-out' }));
      b.onLoad({ filter: /.*/, namespace: 'left-out' }, () => ({ contents: 'module.exports = undefined;', loader: 'js' }));
    },
  }],
});
