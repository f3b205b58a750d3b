// Builds the installers from the single executables:
//   node installers/build.mjs deb|tar|host-deb [--arch x64|arm64] [--version V] [--exe FILE] [--spawn FILE] [--conf FILE] [--out DIR]
// deb: build/porthole-agent_<V>_<amd64|arm64>.deb, the guest agent (npm run build:sea, or build:arm64; dpkg-deb, nothing downloaded)
// tar: build/porthole-agent-<V>-linux-<x64|arm64>.tar.gz with install.sh
// host-deb: build/porthole_<V>_amd64.deb, the host's broker daemon and CLI (packages/broker/scripts/sea.mjs), this host's CPU only
// <V> defaults to the package.json version of packages/agent (agent) or packages/broker (host); --arch to this host's CPU.
import { execFileSync } from 'node:child_process';
import { chmodSync, cpSync, existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, rmSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { gzipSync } from 'node:zlib';
import { dirname, join, relative, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseArgs } from 'node:util';
import { elfArch, target } from '../packages/agent/scripts/targets.mjs';

const here = dirname(fileURLToPath(import.meta.url));
const root = join(here, '..');
const { values: opts, positionals } = parseArgs({
  allowPositionals: true,
  options: {
    arch: { type: 'string', default: process.arch },
    version: { type: 'string' },
    // The single executable (default: the target's, in packages/agent/dist/ or dist/linux-<arch>/).
    exe: { type: 'string' },
    // porthole-spawn, the agent's command starter (npm run build makes it beside the executable).
    spawn: { type: 'string' },
    conf: { type: 'string', default: join(here, 'agent.conf.example') },
    out: { type: 'string', default: join(root, 'build') },
  },
});

function fail(message) {
  console.error(`installers: ${message}`);
  process.exit(1);
}

const MAINTAINER = 'Porthole maintainers <maintainers@porthole.invalid>';
const kind = positionals[0];
if (kind !== 'deb' && kind !== 'tar' && kind !== 'host-deb') fail('usage: node installers/build.mjs deb|tar|host-deb [--arch x64|arm64] [--version V] [--exe FILE] [--spawn FILE] [--conf FILE] [--out DIR]');
const host = kind === 'host-deb';
const pkgJson = JSON.parse(readFileSync(join(root, host ? 'packages/broker/package.json' : 'packages/agent/package.json'), 'utf8'));
opts.version ??= pkgJson.version;
if (!/^[0-9][A-Za-z0-9.+~-]*$/.test(opts.version)) fail(`bad version ${JSON.stringify(opts.version)}: must start with a digit (Debian version rules)`);
let build;
try {
  build = target(opts.arch);
} catch (err) {
  fail(err.message);
}
if (host && !build.native) fail(`host-deb is built for this host's CPU (${process.arch}) only: the broker's single executable is a copy of this node`);
const buildCommand = host ? 'node packages/broker/scripts/sea.mjs' : `npm run ${build.native ? 'build:sea' : `build:${build.arch}`}`;
opts.exe ??= host ? join(root, 'packages/broker/dist/porthole') : join(build.dist, 'porthole-agent');
if (!existsSync(opts.exe)) fail(`${opts.exe} not found: build the single executable first (${buildCommand})`);
if (!host) {
  opts.spawn ??= join(dirname(opts.exe), 'porthole-spawn');
  if (!existsSync(opts.spawn)) fail(`${opts.spawn} not found: npm run ${build.native ? 'build' : `build:${build.arch}`} compiles it`);
  if (!existsSync(opts.conf)) fail(`${opts.conf} not found: the owner's config template is needed`);
}
// A package for one CPU with another CPU's program in it would install and then fail to start.
for (const file of host ? [opts.exe] : [opts.exe, opts.spawn]) {
  const arch = elfArch(file);
  if (arch !== build.arch) fail(`${file} is ${arch ? `built for ${arch}` : 'no x64 or arm64 ELF program'}, not for ${build.arch} (--arch ${build.arch})`);
}

// Native modules are loaded from /usr/lib/porthole/node_modules (beside the executable), which
// a single executable's own require cannot reach: serialport only for serial channels, the
// native CRC32C (4-5x the portable one in a guest) whenever it loads. Shipped with their runtime
// dependencies, for the target's CPU only.
const NATIVE_MODULES = [['serialport', 'packages/transport'], ['@node-rs/crc32', 'packages/protocol']];
const PLATFORM_PREBUILDS = build.platform;
/** Each native module's binary for the target: [module, test on a shipped package directory, what it is]. */
const TARGET_BINARIES = [
  ['serialport', (dir) => existsSync(join(dir, 'prebuilds', PLATFORM_PREBUILDS)), 'prebuilt binding (@serialport/bindings-cpp/prebuilds)'],
  ['@node-rs/crc32', (dir) => dir.endsWith(`@node-rs/crc32-${PLATFORM_PREBUILDS}-gnu`), `package @node-rs/crc32-${PLATFORM_PREBUILDS}-gnu`],
];
// Compile-time headers of the native addon: not needed to load the prebuilt binding.
const BUILD_ONLY = new Set(['node-addon-api']);
// The addon's C++ sources and gyp file: only for building it (the prebuilt binding is shipped).
const BUILD_SOURCES = /\.(cpp|cc|h)$|binding\.gyp$/;

/** Where Node finds `name` from `fromDir`, and the node_modules tree it is in; undefined when nowhere. */
function locate(name, fromDir) {
  // Node's resolution: the nearest node_modules/<name> walking up from the requiring package.
  for (let dir = fromDir; ; dir = dirname(dir)) {
    const candidate = join(dir, 'node_modules', name);
    if (existsSync(join(candidate, 'package.json'))) return { dir: candidate, top: join(root, 'node_modules') };
    if (dir === root || dir === dirname(dir)) break;
  }
  // Another CPU's prebuilt packages are installed in its platform directory (targets.mjs).
  for (const top of build.nodeModules) {
    if (existsSync(join(top, name, 'package.json'))) return { dir: join(top, name), top };
  }
  return undefined;
}

/** Whether an npm package's os/cpu/libc fields allow the target (glibc Linux on the target's CPU). */
function runsOnTarget(pkg) {
  const allows = (field, value) => pkg[field] === undefined || [pkg[field]].flat().includes(value);
  return allows('os', 'linux') && allows('cpu', build.arch) && allows('libc', 'glibc');
}

/** The native modules and everything they require at run time: each directory with the node_modules tree it is in. */
function nativeModulesClosure() {
  const found = new Map();
  const visit = (name, fromDir, optional) => {
    if (BUILD_ONLY.has(name)) return;
    const at = locate(name, fromDir);
    if (!at) {
      if (optional) return;
      fail(`cannot find ${name} (needed by ${relative(root, fromDir)}) under ${fromDir}: run npm install`);
    }
    if (found.has(at.dir)) return;
    const pkg = JSON.parse(readFileSync(join(at.dir, 'package.json'), 'utf8'));
    // Optional ones are prebuilt packages for one platform each: only the target's is shipped.
    if (optional && !runsOnTarget(pkg)) return;
    found.set(at.dir, at.top);
    for (const dep of Object.keys(pkg.dependencies ?? {})) visit(dep, at.dir, false);
    for (const dep of Object.keys(pkg.optionalDependencies ?? {})) visit(dep, at.dir, true);
  };
  for (const [name, from] of NATIVE_MODULES) visit(name, join(root, from), false);
  // A native module without its binary for the target would only fail (or fall back) in the guest: refuse here.
  for (const [name, isBinary, where] of TARGET_BINARIES) {
    if (![...found.keys()].some(isBinary)) fail(`no ${where} for ${PLATFORM_PREBUILDS} among ${name}'s files: ${build.native ? 'run npm install' : `install packages/agent/platforms/${PLATFORM_PREBUILDS}'s packages (scripts/setup.sh does)`}`);
  }
  return [...found];
}

function copyNativeModules(destModules) {
  for (const [dir, top] of nativeModulesClosure()) {
    const dest = join(destModules, relative(top, dir));
    cpSync(dir, dest, {
      recursive: true,
      // Nested node_modules are copied as packages of their own; other platforms' prebuilds are dead weight.
      filter: (src) => {
        const rel = relative(dir, src).split('/');
        if (rel[0] === 'node_modules' || BUILD_SOURCES.test(src)) return false;
        return !(rel[0] === 'prebuilds' && rel.length > 1 && (rel[1] !== PLATFORM_PREBUILDS || src.includes('.musl.')));
      },
    });
  }
  // Modules are loaded, never run: their bin scripts would want a `node` interpreter.
  execFileSync('find', [destModules, '-type', 'f', '-exec', 'chmod', 'a-x', '{}', '+']);
}

/**
 * Programs ([source, name], the single executable first) into libDir with the native modules beside
 * them, where the executable looks for them, and a symlink to the executable in binDir.
 */
function installPrograms(dir, libDir, programs, binDir) {
  const lib = join(dir, libDir);
  mkdirSync(lib, { recursive: true });
  for (const [source, name] of programs) {
    cpSync(source, join(lib, name));
    chmodSync(join(lib, name), 0o755);
  }
  copyNativeModules(join(lib, 'node_modules'));
  const main = programs[0][1];
  mkdirSync(join(dir, binDir), { recursive: true });
  symlinkSync(relative(join(dir, binDir), join(lib, main)), join(dir, binDir, main));
}

/** The installed tree, shared by the .deb and the tarball. */
function stage(dir) {
  installPrograms(dir, 'usr/lib/porthole', [[opts.exe, 'porthole-agent'], [opts.spawn, 'porthole-spawn'], [join(here, 'porthole-service.sh'), 'porthole-service'], [join(here, 'porthole-agent-env.sh'), 'porthole-agent-env']], 'usr/sbin');
  cpSync(join(here, 'systemd/porthole-agent.service'), join(dir, 'usr/lib/systemd/system/porthole-agent.service'));
  cpSync(join(here, 'udev/60-porthole-agent.rules'), join(dir, 'usr/lib/udev/rules.d/60-porthole-agent.rules'));
  cpSync(opts.conf, join(dir, 'etc/porthole/agent.conf'));
  docs(dir, 'porthole-agent', join(here, 'README.md'), join(here, 'copyright'));
  cpSync(join(here, 'debian/lintian-overrides'), join(dir, 'usr/share/lintian/overrides/porthole-agent'));
  // Package contents are root's and world-readable whatever the checkout's umask was.
  execFileSync('chmod', ['-R', 'u+rwX,go+rX,go-w', dir]);
}

/** README, copyright and the changelog Debian wants even for a native package (the release notes live in git). */
function docs(dir, pkg, readme, copyright) {
  const doc = join(dir, 'usr/share/doc', pkg);
  cpSync(readme, join(doc, 'README.md'));
  cpSync(copyright, join(doc, 'copyright'));
  writeFileSync(join(doc, 'changelog.gz'), gzipSync(Buffer.from([
    `${pkg} (${opts.version}) unstable; urgency=medium`, '', `  * Release ${opts.version}.`, '',
    ` -- ${MAINTAINER}  ${new Date().toUTCString().replace('GMT', '+0000')}`, '',
  ].join('\n')), { level: 9 }));
}

/** The host's installed tree: the broker's executable, its native modules, the unit and its options. */
function stageHost(dir) {
  installPrograms(dir, 'usr/lib/porthole/broker', [[opts.exe, 'porthole']], 'usr/bin');
  cpSync(join(here, 'host/porthole.service'), join(dir, 'usr/lib/systemd/system/porthole.service'));
  cpSync(join(here, 'host/default'), join(dir, 'etc/default/porthole'));
  docs(dir, 'porthole', join(root, 'packages/broker/README.md'), join(here, 'host/copyright'));
  execFileSync('chmod', ['-R', 'u+rwX,go+rX,go-w', dir]);
}

function run(cmd, args) {
  try {
    execFileSync(cmd, args, { stdio: ['ignore', 'inherit', 'pipe'] });
  } catch (err) {
    fail(`${cmd} failed: ${String(err.stderr ?? err.message).trim()}`);
  }
}

// The single executables are copies of Node's binary: these are its shared libraries.
const NODE_DEPENDS = 'libc6 (>= 2.28), libstdc++6 (>= 5.2), libgcc-s1';

const PACKAGES = {
  deb: {
    name: 'porthole-agent',
    stage,
    depends: NODE_DEPENDS,
    recommends: 'systemd, udev',
    description: [
      'Porthole guest agent: files and commands from the hypervisor host',
      ' Lets the hypervisor host write files into this VM and run commands in it',
      ' over a virtio-serial port (QEMU/KVM, libvirt), without guest networking,',
      ' SSH or keys. udev starts the agent when the VM has the port',
      ' org.porthole.agent.0; the owner limits or turns off every capability in',
      ' /etc/porthole/agent.conf.',
    ],
    // A conffile: dpkg keeps the owner's edits on upgrade and asks before replacing them.
    conffiles: ['/etc/porthole/agent.conf'],
    scripts: join(here, 'debian'),
  },
  'host-deb': {
    name: 'porthole',
    stage: stageHost,
    // groupadd (passwd) for the socket's group; deb-systemd-helper (init-system-helpers) enables the unit.
    depends: `${NODE_DEPENDS}, passwd, init-system-helpers`,
    recommends: 'systemd, libvirt-clients',
    description: [
      'Porthole host broker: files and commands into this host\'s VMs',
      ' The porthole command and its broker daemon (porthole serve, a systemd',
      ' unit) put files into VMs and run commands in them over the hypervisor\'s',
      ' channel (virtio-serial, serial, xenstore) to the porthole-agent inside, with',
      ' no guest network. The daemon owns every VM\'s channel: the CLI and library',
      ' users on this host go through its socket (group porthole), and its REST',
      ' API serves the cloud\'s control plane over TCP with a bearer token.',
    ],
    conffiles: ['/etc/default/porthole'],
    scripts: join(here, 'host'),
  },
};

function buildDeb(work) {
  const p = PACKAGES[kind];
  const pkgRoot = join(work, 'deb');
  p.stage(pkgRoot);
  const debian = join(pkgRoot, 'DEBIAN');
  mkdirSync(debian);
  const installedKiB = execFileSync('du', ['-sk', '--apparent-size', pkgRoot], { encoding: 'utf8' }).split('\t')[0];
  writeFileSync(join(debian, 'control'), [
    `Package: ${p.name}`,
    `Version: ${opts.version}`,
    `Architecture: ${build.debianArch}`,
    `Maintainer: ${MAINTAINER}`,
    `Installed-Size: ${installedKiB}`,
    `Depends: ${p.depends}`,
    `Recommends: ${p.recommends}`,
    'Section: admin',
    'Priority: optional',
    'Homepage: https://github.com/porthole/porthole',
    `Description: ${p.description[0]}`,
    ...p.description.slice(1),
    '',
  ].join('\n'));
  writeFileSync(join(debian, 'conffiles'), p.conffiles.map((f) => `${f}\n`).join(''));
  for (const script of ['postinst', 'prerm', 'postrm']) {
    cpSync(join(p.scripts, script), join(debian, script));
    chmodSync(join(debian, script), 0o755);
  }
  const out = join(resolve(opts.out), `${p.name}_${opts.version}_${build.debianArch}.deb`);
  // xz level 1: 27 MB in ~12 s; the default level 6 saves 3 MB for 50 s of build time.
  run('dpkg-deb', ['--root-owner-group', '-Zxz', '-z1', '--build', pkgRoot, out]);
  return out;
}

function buildTar(work) {
  const name = `porthole-agent-${opts.version}-${build.platform}`;
  const top = join(work, name);
  stage(join(top, 'files'));
  cpSync(join(here, 'install.sh'), join(top, 'install.sh'));
  chmodSync(join(top, 'install.sh'), 0o755);
  const out = join(resolve(opts.out), `${name}.tar.gz`);
  run('tar', ['--owner=0', '--group=0', '--numeric-owner', '--sort=name', '-czf', out, '-C', work, name]);
  return out;
}

mkdirSync(resolve(opts.out), { recursive: true });
const work = mkdtempSync(join(tmpdir(), 'porthole-pkg-'));
try {
  const out = kind === 'tar' ? buildTar(work) : buildDeb(work);
  console.log(`installers: ${out}`);
} finally {
  rmSync(work, { recursive: true, force: true });
}
