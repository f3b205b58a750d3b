// Builds the agent as one executable with Node's Single Executable Applications:
// esbuild bundle -> SEA preparation blob -> a copy of this node binary with the
// blob injected by postject. Output: packages/agent/dist/porthole-agent.
//   node packages/agent/scripts/sea.mjs [--arch x64|arm64] [--bundle FILE] [--out FILE]
// --bundle uses an existing bundle instead of running scripts/bundle.mjs. --arch another CPU
// than this host's: a copy of that CPU's node (targets.mjs), which also writes the blob and runs
// the smoke test under qemu-user, into dist/linux-<arch>/porthole-agent.
import { execFileSync } from 'node:child_process';
import { chmodSync, copyFileSync, existsSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { target } from './targets.mjs';
import { buildSingleExecutable } from '../../../scripts/single-executable.mjs';

const agentDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const root = join(agentDir, '..', '..');
const { values: opts } = parseArgs({
  options: {
    arch: { type: 'string', default: process.arch },
    bundle: { type: 'string' },
    out: { type: 'string' },
  },
});

let build;
try {
  build = target(opts.arch);
  build.check();
} catch (err) {
  console.error(`sea: ${err.message}`);
  process.exit(1);
}

const bundle = opts.bundle ? resolve(opts.bundle) : join(agentDir, 'dist', 'porthole-agent.bundle.cjs');
if (!opts.bundle) {
  const script = join(agentDir, 'scripts', 'bundle.mjs');
  if (!existsSync(script)) {
    console.error(`sea: ${script} is missing: the agent bundle cannot be built (or pass --bundle FILE)`);
    process.exit(1);
  }
  execFileSync(process.execPath, [script], { cwd: root, stdio: 'inherit' });
}
// serialport: the serial transport loads it from disk beside the executable (createRequire), never through this require.
const out = opts.out ?? join(build.dist, 'porthole-agent');
buildSingleExecutable({ bundle, out, fromDisk: ['serialport'], node: build.node, command: build.command });
// Its launcher beside it, as the packages install it (`porthole agent install --executable` takes it along).
const launcher = join(dirname(out), 'porthole-agent-env');
copyFileSync(join(root, 'installers', 'porthole-agent-env.sh'), launcher);
chmodSync(launcher, 0o755);
