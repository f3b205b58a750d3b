// Builds build/porthole-agent-<version>-x64.msi with wixl (Debian package wixl, from msitools):
// porthole-agent.exe, koffi for Windows x64 beside it (the agent's way to Win32: the service
// control manager, overlapped I/O on the virtio-serial device, process trees), and
// agent.conf.example (installers/windows/agent.conf) for the owner to start from.
//   node installers/windows/build-msi.mjs [--exe FILE] [--version V] [--out DIR]
import { execFileSync } from 'node:child_process';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
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
  },
});

function fail(message) {
  console.error(`build-msi: ${message}`);
  process.exit(1);
}
if (!existsSync(opts.exe)) fail(`${opts.exe} not found (npm run build:exe builds it)`);

const stage = mkdtempSync(join(tmpdir(), 'porthole-msi-'));
try {
  copyFileSync(opts.exe, join(stage, 'porthole-agent.exe'));
  const koffi = join(root, 'node_modules/koffi');
  for (const rel of ['package.json', 'index.js', 'build/koffi/win32_x64/koffi.node']) {
    mkdirSync(join(stage, 'node_modules/koffi', rel, '..'), { recursive: true });
    copyFileSync(join(koffi, rel), join(stage, 'node_modules/koffi', rel));
  }
  writeFileSync(join(stage, 'agent.conf.example'), readFileSync(join(here, 'agent.conf'), 'utf8').replace(/\r?\n/g, '\r\n'));
  mkdirSync(resolve(opts.out), { recursive: true });
  const msi = join(resolve(opts.out), `porthole-agent-${opts.version}-x64.msi`);
  try {
    // wixl takes Source paths relative to the directory it runs in.
    execFileSync('wixl', ['-a', 'x64', '-D', `Version=${opts.version}`, '-o', msi, join(here, 'porthole-agent.wxs')], { cwd: stage, stdio: ['ignore', 'inherit', 'pipe'] });
  } catch (err) {
    fail(err.code === 'ENOENT' ? 'wixl not found: install the Debian package wixl (scripts/setup.sh does)' : `wixl failed: ${err.stderr}`);
  }
  console.log(`build-msi: ${msi} (${(statSync(msi).size / 2 ** 20).toFixed(1)} MiB)`);
} finally {
  rmSync(stage, { recursive: true, force: true });
}
