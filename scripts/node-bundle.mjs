// One CommonJS file for Node 20 from a package's TypeScript sources (esbuild), as the single
// executables and guests without node_modules need: the agent's and the broker's bundle.mjs.
import { build } from 'esbuild';

/** `external`: modules loaded from disk at run time; `define` and `plugins` as esbuild takes them. */
export function bundleForNode({ entry, outfile, external = [], define = {}, plugins = [] }) {
  return build({
    entryPoints: [entry],
    outfile,
    bundle: true,
    platform: 'node',
    target: 'node20',
    format: 'cjs',
    conditions: ['porthole-src'],
    external,
    define,
    plugins,
    // Without whitespace and comments: the source V8 keeps is a third smaller, and one non-ASCII
    // character in a kept comment made it hold the whole bundle as UTF-16. Names stay for stack traces.
    minifyWhitespace: true,
    sourcemap: false,
    legalComments: 'none',
    logLevel: 'warning',
  });
}
