// One build for the whole workspace: protobuf static code, then tsc for every
// package (project references) and the tests (type check only), then the
// agent bundle and single executable. Steps run in order; the first failure
// stops the build.
import { execFileSync } from 'node:child_process';
import { mkdirSync, existsSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');
const bin = (name) => join(root, 'node_modules', '.bin', name);
const run = (cmd, args) => execFileSync(cmd, args, { cwd: root, stdio: 'inherit' });

const gen = join(root, 'packages/protocol/generated');
mkdirSync(gen, { recursive: true });
run(bin('pbjs'), ['-t', 'static-module', '-w', 'commonjs', '--force-number', '--no-verify', '--no-convert',
  '--no-delimited', '-o', join(gen, 'porthole.js'), 'proto/porthole/v1/porthole.proto']);
run(bin('pbts'), ['-o', join(gen, 'porthole.d.ts'), join(gen, 'porthole.js')]);
run(bin('tsc'), ['-b', 'tsconfig.json']);
run(bin('tsc'), ['-p', 'test/tsconfig.json']);
// porthole-spawn, the agent's command starter, beside the agent's code (dist/), for this host's CPU.
run(process.execPath, [join(root, 'packages/agent/scripts/spawn-helper.mjs')]);
// CRC32C by carry-less folding or three interleaved chains (packages/protocol/native/crc32c.c), an addon for
// Node on x86-64 hosts. Optional: without it (no headers, no x86-64) the protocol uses @node-rs/crc32, 4 to 10 times slower.
if (process.arch === 'x64' && process.platform === 'linux') {
  const headers = join(dirname(dirname(process.execPath)), 'include', 'node');
  const addon = join(root, 'packages/protocol/build/crc32c.node');
  const skip = (why) => console.error(`build: the CRC32C addon was not built (${why}); the protocol uses @node-rs/crc32 instead`);
  if (!existsSync(join(headers, 'node_api.h'))) skip(`Node's C headers are not in ${headers}; Debian's nodejs has them in libnode-dev`);
  else {
    mkdirSync(dirname(addon), { recursive: true });
    try {
      execFileSync('cc', ['-O2', '-Wall', '-Wextra', '-Werror', '-fPIC', '-shared', '-I', headers, '-o', addon,
        join(root, 'packages/protocol/native/crc32c.c')], { stdio: 'inherit' });
    } catch {
      skip('it did not compile');
    }
  }
}
// The agent as one file, then as the single executable the VM tests and the .deb ship.
run(process.execPath, [join(root, 'packages/agent/scripts/bundle.mjs')]);
const sea = join(root, 'packages/agent/scripts/sea.mjs');
if (existsSync(sea)) run(process.execPath, [sea]);
