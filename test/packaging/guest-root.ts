import { existsSync, mkdirSync, readdirSync, readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { ROOT, sh } from './artifacts';

/** The host's kernel: the guest boots it with the host's initrd, and gets its virtio modules. */
export function hostKernel(): { version: string; vmlinuz: string; initrd: string } {
  const kernels = readdirSync('/boot').filter((f) => f.startsWith('vmlinuz-')).sort();
  if (!kernels.length) throw new Error('no /boot/vmlinuz-* on this host: install linux-image-amd64');
  const version = kernels[kernels.length - 1].slice('vmlinuz-'.length);
  const initrd = `/boot/initrd.img-${version}`;
  if (!existsSync(initrd)) throw new Error(`${initrd} missing (linux-image-amd64 installs it)`);
  return { version, vmlinuz: `/boot/vmlinuz-${version}`, initrd };
}

/** The Debian mirror apt already uses here (deb822 .sources or a sources.list line). */
export function debianMirror(): string {
  const files = [
    ...(existsSync('/etc/apt/sources.list.d') ? readdirSync('/etc/apt/sources.list.d').map((f) => join('/etc/apt/sources.list.d', f)) : []),
    '/etc/apt/sources.list',
  ].filter((f) => existsSync(f));
  for (const file of files) {
    const text = readFileSync(file, 'utf8');
    const deb822 = /^URIs:\s*(\S+)/m.exec(text);
    if (deb822 && !deb822[1].includes('security')) return deb822[1];
    const line = /^deb\s+(?:\[[^\]]*\]\s+)?(\S+)\s+\S+/m.exec(text);
    if (line && !line[1].includes('security')) return line[1];
  }
  throw new Error('no Debian mirror found in /etc/apt/sources.list(.d): debootstrap needs one');
}

const CACHE = join(ROOT, '.cache', 'packaging');
const BASE = join(CACHE, 'bookworm-minbase');

/**
 * A minimal Debian bookworm root with systemd and udev, built once with
 * debootstrap and cached under .cache/ (git-ignored). Callers copy it.
 */
export async function baseRoot(): Promise<string> {
  if (existsSync(join(BASE, '.complete'))) return BASE;
  mkdirSync(CACHE, { recursive: true });
  const tmp = `${BASE}.partial`;
  rmSync(tmp, { recursive: true, force: true });
  await sh('debootstrap', ['--variant=minbase', '--include=systemd-sysv,udev', 'bookworm', tmp, debianMirror()], { timeout: 600_000 });
  writeFileSync(join(tmp, 'etc/hostname'), 'porthole-guest\n');
  // The guest runs the host's kernel: give it the modules udev loads for the port.
  const { version } = hostKernel();
  const mods = `/lib/modules/${version}`;
  for (const rel of ['kernel/drivers/virtio', 'kernel/drivers/char/virtio_console.ko', 'modules.order', 'modules.builtin', 'modules.builtin.modinfo']) {
    const dest = join(tmp, 'lib/modules', version, rel);
    mkdirSync(join(dest, '..'), { recursive: true });
    await sh('cp', ['-a', join(mods, rel), dest]);
  }
  await sh('depmod', ['-b', tmp, version]);
  writeFileSync(join(tmp, '.complete'), new Date().toISOString());
  rmSync(BASE, { recursive: true, force: true });
  renameSync(tmp, BASE);
  return BASE;
}

/** A private copy of the cached root, to install packages into. */
export async function copyRoot(dest: string): Promise<string> {
  await sh('cp', ['-a', await baseRoot(), dest]);
  return dest;
}

/** An ext4 disk image of a directory tree (mkfs.ext4 -d: no loop mounts). */
export async function makeImage(rootDir: string, image: string, size = '1G'): Promise<void> {
  await sh('mkfs.ext4', ['-q', '-F', '-L', 'porthole-root', '-d', rootDir, image, size]);
}
