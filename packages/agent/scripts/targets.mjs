// The CPU architectures the agent is built for (Node's names: x64, arm64), shared by the
// agent's build scripts and installers/build.mjs. The host's own architecture builds with the
// running node and cc into dist/, as it always did. Another one builds into dist/linux-<arch>/
// from platforms/linux-<arch>/: Node's binary for that CPU (npm package node-linux-<arch>, pinned
// there with the CPU's native modules), run under qemu-user, and a cross compiler from Debian.
import { closeSync, existsSync, openSync, readFileSync, readSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';

const agentDir = join(dirname(fileURLToPath(import.meta.url)), '..');

/** What a foreign architecture needs on an x86-64 Debian build host (scripts/setup.sh installs it). */
const CROSS = {
  arm64: { cc: 'aarch64-linux-gnu-gcc', qemuUser: 'qemu-aarch64', sysroot: '/usr/aarch64-linux-gnu', debs: 'gcc-aarch64-linux-gnu libc6-dev-arm64-cross qemu-user' },
};
const DEBIAN_ARCH = { x64: 'amd64', arm64: 'arm64' };
/** ELF e_machine of each architecture's executables. */
const ELF_MACHINE = { x64: 62, arm64: 183 };

/** The architecture (Node's name) an ELF executable is for; undefined for anything else. */
export function elfArch(path) {
  const header = Buffer.alloc(20);
  const fd = openSync(path, 'r');
  try {
    readSync(fd, header, 0, 20, 0);
  } finally {
    closeSync(fd);
  }
  if (header.readUInt32BE(0) !== 0x7f454c46) return undefined;
  return Object.keys(ELF_MACHINE).find((arch) => ELF_MACHINE[arch] === header.readUInt16LE(18));
}

/**
 * The build target for `arch` (default: this host's). Fields: arch, debianArch, platform
 * (linux-<arch>, as prebuild directories name it), native, dist (where its executables go),
 * node (the Node binary the single executable is a copy of), cc, command(file, args) (how this
 * host runs one of the target's programs), nodeModules (where its native modules are looked up,
 * first match wins).
 */
export function target(arch = process.arch) {
  const debianArch = DEBIAN_ARCH[arch];
  if (!debianArch) throw new Error(`unknown architecture ${JSON.stringify(arch)}: the agent is built for ${Object.keys(DEBIAN_ARCH).join(' and ')}`);
  const platform = `linux-${arch}`;
  const rootModules = join(agentDir, '..', '..', 'node_modules');
  if (arch === process.arch) {
    return {
      arch, debianArch, platform, native: true, dist: join(agentDir, 'dist'), node: process.execPath, cc: 'cc',
      command: (file, args) => [file, args], nodeModules: [rootModules], check() {},
    };
  }
  const cross = CROSS[arch];
  if (!cross) throw new Error(`cannot build for ${arch} on this ${process.arch} host: cross builds are set up for ${Object.keys(CROSS).join(', ')} only`);
  const platformDir = join(agentDir, 'platforms', platform);
  const platformModules = join(platformDir, 'node_modules');
  const node = join(platformModules, `node-${platform}`, 'bin', 'node');
  return {
    arch, debianArch, platform, native: false, dist: join(agentDir, 'dist', platform), node, cc: cross.cc,
    // -L: the target's dynamic loader and libraries (Debian's cross libc) for a dynamically linked program.
    command: (file, args) => [cross.qemuUser, ['-L', cross.sysroot, file, ...args]],
    nodeModules: [platformModules, rootModules],
    /** Throws naming what is missing for this cross build. */
    check() {
      const pinned = JSON.parse(readFileSync(join(platformDir, 'package.json'), 'utf8')).optionalDependencies[`node-${platform}`];
      if (!existsSync(node)) {
        throw new Error(`${node} is missing: install ${platformDir}'s pinned packages (node-${platform}@${pinned}) with ` +
          `\`npm ci --prefix ${platformDir} --cpu=${arch} --os=linux\` (scripts/setup.sh does)`);
      }
      for (const [tool, path] of [[cross.qemuUser, `/usr/bin/${cross.qemuUser}`], [cross.cc, `/usr/bin/${cross.cc}`], ['the target libc', join(cross.sysroot, 'lib', 'libc.so.6')]]) {
        if (!existsSync(path)) throw new Error(`building for ${arch} needs ${tool} (${path}): install the Debian packages ${cross.debs} (scripts/setup.sh does)`);
      }
    },
  };
}
