// Builds build/porthole-agent-<version>-x64.msi with wixl (Debian package wixl, from msitools):
// porthole-agent.exe and, in node_modules beside it, the native modules a single executable
// cannot carry, with their Windows x64 binaries only: koffi (the agent's way to Win32: the service
// control manager, overlapped I/O on the virtio-serial device, process trees) and serialport with
// its dependencies (serial:COMn channels); agent.conf.example (installers/windows/agent.conf) for
// the owner to start from.
//   node installers/windows/build-msi.mjs [--exe FILE] [--version V] [--out DIR]
//   node installers/windows/build-msi.mjs --layout DIR [--exe FILE]
// --layout writes the files into DIR as msiexec installs them, and builds no MSI (the Wine tests
// run the agent from that layout).
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..', '..');
const pkg = JSON.parse(readFileSync(join(root, 'packages/agent/package.json'), 'utf8'));
const { values: opts } = parseArgs({
  options: {
    exe: { type: 'string', default: join(root, 'packages/agent/dist/porthole-agent.exe') },
    version: { type: 'string', default: pkg.version },
    out: { type: 'string', default: join(root, 'build') },
    layout: { type: 'string' },
  },
});

function fail(message) {
  console.error(`build-msi: ${message}`);
  process.exit(1);
}
if (!existsSync(opts.exe)) fail(`${opts.exe} not found (npm run build:exe builds it)`);

/** The package directory `name` resolves to from `from`, as Node's require finds it. */
function packageDir(name, from) {
  for (let dir = from; ; dir = dirname(dir)) {
    const candidate = join(dir, 'node_modules', name);
    if (existsSync(join(candidate, 'package.json'))) return candidate;
    if (dir === dirname(dir)) fail(`${name} not found in node_modules (npm ci installs it)`);
  }
}

// Not shipped: C++ sources and build files (the binary is prebuilt), type declarations, source
// maps, documents other than licenses, and prebuilt binaries for other systems.
const UNSHIPPED = /\.(d\.ts|map|cc|cpp|h|gyp)$|(^|\/)(?!license)[^/]*\.md$|^prebuilds\/(?!win32-x64\/)/i;
// Headers for compiling the binding: a runtime dependency by package.json only, never required.
const BUILD_ONLY = new Set(['node-addon-api']);

/** Adds the files of `name` and of its dependencies to `files` as [path under node_modules, source], nested copies where npm put them. */
function moduleFiles(name, from, files, seen = new Set()) {
  const dir = packageDir(name, from);
  if (seen.has(dir)) return;
  seen.add(dir);
  const rel = relative(join(root, 'node_modules'), dir);
  for (const entry of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    const path = relative(dir, join(entry.parentPath, entry.name));
    if (entry.isFile() && !path.split('/').includes('node_modules') && !UNSHIPPED.test(path)) files.set(`${rel}/${path}`, join(dir, path));
  }
  const { dependencies = {} } = JSON.parse(readFileSync(join(dir, 'package.json'), 'utf8'));
  for (const dep of Object.keys(dependencies)) if (!BUILD_ONLY.has(dep)) moduleFiles(dep, dir, files, seen);
}

/** Every file the MSI installs, into `dir` as msiexec lays them out. */
function writeLayout(dir) {
  copyFileSync(opts.exe, join(dir, 'porthole-agent.exe'));
  writeFileSync(join(dir, 'agent.conf.example'), readFileSync(join(here, 'agent.conf'), 'utf8').replace(/\r?\n/g, '\r\n'));
  // koffi's package carries every system's binary (~80 MiB): its entry point and the Windows x64 one suffice.
  const koffi = join(root, 'node_modules/koffi');
  const files = new Map(['package.json', 'index.js', 'build/koffi/win32_x64/koffi.node'].map((f) => [`koffi/${f}`, join(koffi, f)]));
  moduleFiles('serialport', root, files);
  if (!existsSync(files.get('@serialport/bindings-cpp/prebuilds/win32-x64/@serialport+bindings-cpp.node') ?? '')) fail('@serialport/bindings-cpp has no prebuilds/win32-x64');
  for (const [rel, source] of files) {
    mkdirSync(join(dir, 'node_modules', rel, '..'), { recursive: true });
    copyFileSync(source, join(dir, 'node_modules', rel));
  }
  return [...files.keys()].map((rel) => `node_modules/${rel}`);
}

if (opts.layout) {
  mkdirSync(opts.layout, { recursive: true });
  writeLayout(resolve(opts.layout));
  process.exit(0);
}

const stage = mkdtempSync(join(tmpdir(), 'porthole-msi-'));
try {
  const modules = writeLayout(stage);
  // node_modules as a wixl-heat fragment: one component per file, ids and GUIDs derived from the paths.
  const fragment = execFileSync('wixl-heat', ['--prefix', `${stage}/`, '--directory-ref', 'INSTALLDIR', '--component-group', 'NodeModules', '--var', 'var.SourceDir', '--win64'],
    { input: modules.map((m) => join(stage, m)).join('\n'), encoding: 'utf8' });
  writeFileSync(join(stage, 'node-modules.wxs'), fragment);
  mkdirSync(resolve(opts.out), { recursive: true });
  const msi = join(resolve(opts.out), `porthole-agent-${opts.version}-x64.msi`);
  try {
    // wixl takes Source paths relative to the directory it runs in.
    execFileSync('wixl', ['-a', 'x64', '-D', `Version=${opts.version}`, '-D', 'SourceDir=.', '-D', 'Win64=yes', '-o', msi, join(here, 'porthole-agent.wxs'), 'node-modules.wxs'],
      { cwd: stage, stdio: ['ignore', 'inherit', 'pipe'] });
  } catch (err) {
    fail(err.code === 'ENOENT' ? 'wixl not found: install the Debian package wixl (scripts/setup.sh does)' : `wixl failed: ${err.stderr}`);
  }
  console.log(`build-msi: ${msi} (${(statSync(msi).size / 2 ** 20).toFixed(1)} MiB)`);
} finally {
  rmSync(stage, { recursive: true, force: true });
}
