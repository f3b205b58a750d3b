// Compiles porthole-spawn, the agent's command starter, for one architecture into that target's
// dist directory, beside its single executable. Static, so the same file runs in any Linux guest
// of that CPU next to the executable.
//   node packages/agent/scripts/spawn-helper.mjs [--arch x64|arm64] [--out FILE]
import { execFileSync } from 'node:child_process';
import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { target } from './targets.mjs';

const agentDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const { values: opts } = parseArgs({ options: { arch: { type: 'string', default: process.arch }, out: { type: 'string' } } });

let t;
try {
  t = target(opts.arch);
  t.check();
} catch (err) {
  console.error(`spawn-helper: ${err.message}`);
  process.exit(1);
}
const out = opts.out ?? join(t.dist, 'porthole-spawn');
mkdirSync(dirname(out), { recursive: true });
try {
  execFileSync(t.cc, ['-O2', '-Wall', '-Wextra', '-Werror', '-static', '-s', '-o', out, join(agentDir, 'native', 'porthole-spawn.c')], { stdio: 'inherit' });
} catch (err) {
  console.error(err.code === 'ENOENT'
    ? `spawn-helper: ${t.cc} not found: install ${t.native ? 'gcc and libc6-dev' : 'the cross compiler'} (scripts/setup.sh does)`
    : `spawn-helper: porthole-spawn did not compile for ${t.arch}`);
  process.exit(1);
}
