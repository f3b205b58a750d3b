// A single executable from a CommonJS bundle with Node's Single Executable Applications:
// SEA preparation blob -> a copy of this node binary with the blob injected by postject.
// Used by the agent's sea.mjs (Linux) and sea-windows.mjs, and the broker's sea.mjs.
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, chmodSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { builtinModules } from 'node:module';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

const root = join(dirname(fileURLToPath(import.meta.url)), '..');

// The sentinel Node looks for to know a blob was injected (fixed for Node >= 18.16).
const FUSE = 'NODE_SEA_FUSE_fce680ab2cc467b6e072b8b5df1996b2';

export function fail(message) {
  console.error(`sea: ${message}`);
  process.exit(1);
}

export function run(cmd, args, options = {}) {
  try {
    return execFileSync(cmd, args, { cwd: root, encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], ...options });
  } catch (err) {
    fail(`${[cmd, ...args].join(' ')} failed: ${(err.stderr || err.message).trim()}`);
  }
}

/**
 * Build `out` from `bundle`. Inside a single executable require() reaches built-in modules only:
 * a bundle that would need anything else at run time is refused, but for `fromDisk` (modules the
 * code loads beside the executable itself) and `quoted` (require() calls that only appear inside
 * generated-code strings). `node` is the Node binary the executable is a copy of (default: this
 * one); `command(file, args)` says how this host runs a program for that binary's CPU (another
 * CPU's under qemu-user), for writing the blob and for the smoke test; null where this host cannot
 * run it (Windows): then `blobWriter` writes the blob, a Node for this host of `node`'s very
 * version (a blob's format is its Node version's), and there is no smoke test here. `prepare(file)`
 * edits the copy of `node` before the blob goes in.
 */
export function buildSingleExecutable({
  bundle, out, fromDisk = [], quoted = [], node = process.execPath, command = (file, args) => [file, args], blobWriter, prepare,
}) {
  if (!existsSync(bundle)) fail(`bundle ${bundle} not found`);
  const builtins = new Set([...builtinModules, ...builtinModules.map((m) => `node:${m}`)]);
  const required = new Set([...readFileSync(bundle, 'utf8').matchAll(/\brequire\("([^"]+)"\)/g)].map((m) => m[1]));
  const outside = [...required].filter((m) => !builtins.has(m) && !fromDisk.includes(m) && !quoted.some((q) => m.startsWith(q)));
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
    // Written by the node the executable is a copy of, or its twin: the blob's format is that Node version's.
    const writer = command ? command(node, []) : [blobWriter, []];
    if (!writer[0]) fail(`no Node to write the blob for ${node}`);
    run(writer[0], [...writer[1], '--experimental-sea-config', config]);

    const target = resolve(out);
    mkdirSync(dirname(target), { recursive: true });
    rmSync(target, { force: true });
    copyFileSync(node, target);
    chmodSync(target, 0o755);
    prepare?.(target);
    run(join(root, 'node_modules', '.bin', 'postject'), [target, 'NODE_SEA_BLOB', blob, '--sentinel-fuse', FUSE]);

    // Smoke test from an empty directory, so nothing on disk can stand in for a missing module.
    const version = command ? run(...command(target, ['--version']), { cwd: work }).trim() : 'not run on this host';
    const sha256 = createHash('sha256').update(readFileSync(target)).digest('hex');
    console.log(`sea: ${target} (${(statSync(target).size / 2 ** 20).toFixed(1)} MiB, sha256 ${sha256}): ${version}`);
  } finally {
    rmSync(work, { recursive: true, force: true });
  }
}
