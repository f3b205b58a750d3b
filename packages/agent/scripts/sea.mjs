// Builds the agent as one executable with Node's Single Executable Applications:
// esbuild bundle -> SEA preparation blob -> a copy of this node binary with the
// blob injected by postject. Output: packages/agent/dist/porthole-agent.
//   node packages/agent/scripts/sea.mjs [--arch x64|arm64] [--bundle FILE] [--out FILE]
// --bundle uses an existing bundle instead of running scripts/bundle.mjs. --arch another CPU
// than this host's: a copy of that CPU's node (targets.mjs), which also writes the blob and runs
// the smoke test under qemu-user, into dist/linux-<arch>/porthole-agent.
import { execFileSync } from 'node:child_process';
import { copyFileSync, chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { target } from './targets.mjs';

const agentDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const root = join(agentDir, '..', '..');
const { values: opts } = parseArgs({
  options: {
    arch: { type: 'string', default: process.arch },
    bundle: { type: 'string' },
    out: { type: 'string' },
  },
});

// The sentinel Node looks for to know a blob was injected (fixed for Node >= 18.16).
const FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';
// Modules the bundle may leave to require(): built-ins, and serialport, which the
// serial transport loads from disk beside the executable (createRequire), never through this require.
const LAZY_FROM_DISK = new Set(['serialport']);

function fail(message) {
  console.error(`sea: ${message}`);
  process.exit(1);
}

function run(cmd, args, options = {}) {
  try {
    return execFileSync(cmd, args, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...options });
  } catch (err) {
    fail(`${[cmd, ...args].join(' ')} failed: ${(err.stderr || err.message).trim()}`);
  }
}

let build;
try {
  build = target(opts.arch);
  build.check();
} catch (err) {
  fail(err.message);
}

let bundle = opts.bundle ? resolve(opts.bundle) : join(agentDir, 'dist', 'porthole-agent.bundle.cjs');
if (!opts.bundle) {
  const script = join(agentDir, 'scripts', 'bundle.mjs');
  if (!existsSync(script)) fail(`${script} is missing: the agent bundle cannot be built (or pass --bundle FILE)`);
  execFileSync(process.execPath, [script], { cwd: root, stdio: 'inherit' });
}
if (!existsSync(bundle)) fail(`bundle ${bundle} not found`);

// Inside a single executable require() reaches built-in modules only: refuse a
// bundle that would need anything else at run time.
const builtins = new Set([...builtinModules, ...builtinModules.map((m) => `node:${m}`)]);
const required = new Set([...readFileSync(bundle, 'utf8').matchAll(/\brequire\("([^"]+)"\)/g)].map((m) => m[1]));
const outside = [...required].filter((m) => !builtins.has(m) && !LAZY_FROM_DISK.has(m));
if (outside.length) fail(`the bundle requires modules that are not built in (a single executable cannot load them): ${outside.join(', ')}`);

const work = mkdtempSync(join(tmpdir(), 'porthole-sea-'));
try {
  const blob = join(work, 'sea-prep.blob');
  const config = join(work, 'sea-config.json');
  writeFileSync(config, JSON.stringify({
    main: bundle,
    output: blob,
    disableExperimentalSEAWarning: true,
    // V8's code cache works here but made no measurable difference to start-up
    // (about 160-250 ms either way, see installers/README.md): left off.
    useCodeCache: false,
  }, null, 2));
  // Written by the node the executable is a copy of: the blob's format is that Node version's.
  run(...build.command(build.node, ['--experimental-sea-config', config]));

  const out = resolve(opts.out ?? join(build.dist, 'porthole-agent'));
  mkdirSync(dirname(out), { recursive: true });
  rmSync(out, { force: true });
  copyFileSync(build.node, out);
  chmodSync(out, 0o755);
  run(join(root, 'node_modules', '.bin', 'postject'), [out, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', FUSE]);

  // Smoke test from an empty directory, so nothing on disk can stand in for a missing module.
  const version = run(...build.command(out, ['--version']), { cwd: work }).trim();
  console.log(`sea: ${out} (${(statSync(out).size / 2 ** 20).toFixed(1)} MiB): ${version}`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
