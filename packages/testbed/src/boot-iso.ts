// A bootable CD of the test guest (ISOLINUX, El Torito no-emulation): the same
// kernel and initramfs as direct kernel boot, for tests that boot through the
// firmware (e.g. from an ISO served over https).
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { copyFileSync, existsSync, mkdirSync, mkdtempSync, readFileSync, renameSync, rmSync, statSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { basename, join } from 'node:path';
import { buildGuestInitramfs, CACHE_DIR, GuestOptions, prepareBaseImage } from './guest-image';
import { GUEST_KERNEL_CMDLINE } from './vm';

const ISOLINUX_BIN = { path: '/usr/lib/ISOLINUX/isolinux.bin', deb: 'isolinux' };
const LDLINUX_C32 = { path: '/usr/lib/syslinux/modules/bios/ldlinux.c32', deb: 'syslinux-common' };

export interface BootIsoOptions extends GuestOptions {
  /** Appended to the kernel command line of the CD's only boot entry, so the guest can tell it booted from the CD. */
  cmdlineMarker: string;
  /** ISO 9660 volume id (default PORTHOLE_GUEST). */
  volumeId?: string;
}

export interface BootIso {
  path: string;
  volumeId: string;
  /** The boot entry's ISOLINUX configuration, as written to /isolinux/isolinux.cfg on the CD. */
  isolinuxCfg: string;
}

function need(tool: { path: string; deb: string }): string {
  if (!existsSync(tool.path)) throw new Error(`a bootable ISO needs ${tool.path}: install the Debian package ${tool.deb} (scripts/setup.sh does)`);
  return tool.path;
}

const sha256 = (data: string | Buffer) => createHash('sha256').update(data).digest('hex');

/** What the CD's content depends on; an unchanged key means the cached ISO is still right. */
function cacheKey(options: BootIsoOptions, baseInitramfs: string, kernel: string, isolinuxCfg: string): string {
  const { agent, files, ...rest } = options;
  const h = createHash('sha256');
  // The base image's file name already carries the fingerprint of its inputs.
  h.update(basename(baseInitramfs)).update(isolinuxCfg).update(JSON.stringify(rest));
  if (agent) h.update('bundle' in agent ? `bundle:${sha256(readFileSync(agent.bundle))}` : `executable:${sha256(readFileSync(agent.executable))}`);
  for (const f of files ?? []) h.update(JSON.stringify([f.path, f.mode ?? 0o644, sha256(f.content)]));
  for (const p of [kernel, ISOLINUX_BIN.path, LDLINUX_C32.path]) {
    const st = statSync(p);
    h.update(`${p}:${st.size}:${st.mtimeMs}`);
  }
  return h.digest('hex').slice(0, 16);
}

/**
 * The test guest (kernel, initramfs with the agent and the options' files) as a bootable ISO, cached by content
 * in the test bed's cache directory. Its one boot entry starts at once, with the console on ttyS0.
 */
export function buildBootIso(options: BootIsoOptions, log: (m: string) => void = () => undefined): BootIso {
  if (!/^[A-Za-z0-9._=-]+$/.test(options.cmdlineMarker)) throw new Error(`cmdlineMarker "${options.cmdlineMarker}" must be one word of [A-Za-z0-9._=-]`);
  if ((options.arch ?? 'x64') !== 'x64') throw new Error(`a bootable ISO is built for the x64 guest only (ISOLINUX is a PC BIOS loader), not ${options.arch}`);
  const volumeId = options.volumeId ?? 'PORTHOLE_GUEST';
  if (!/^[A-Z0-9_]{1,32}$/.test(volumeId)) throw new Error(`volumeId "${volumeId}" must be 1-32 of [A-Z0-9_] (ISO 9660 d-characters)`);
  const isolinuxCfg = [
    'serial 0 115200',
    'default porthole',
    'prompt 0',
    'timeout 0',
    'label porthole',
    '  kernel /boot/vmlinuz',
    '  initrd /boot/initrd',
    `  append ${GUEST_KERNEL_CMDLINE} ${options.cmdlineMarker}`,
    '',
  ].join('\n');
  const isolinux = need(ISOLINUX_BIN);
  const ldlinux = need(LDLINUX_C32);
  const base = prepareBaseImage(log);
  const out = join(CACHE_DIR, `bootiso-${cacheKey(options, base.initramfs, base.kernel, isolinuxCfg)}.iso`);
  if (existsSync(out)) return { path: out, volumeId, isolinuxCfg };

  log(`building the bootable guest ISO (cached in ${CACHE_DIR})`);
  const root = mkdtempSync(join(tmpdir(), 'porthole-bootiso-'));
  const tmpOut = `${out}.${process.pid}.tmp`;
  try {
    mkdirSync(join(root, 'isolinux'));
    mkdirSync(join(root, 'boot'));
    copyFileSync(isolinux, join(root, 'isolinux', 'isolinux.bin'));
    copyFileSync(ldlinux, join(root, 'isolinux', 'ldlinux.c32'));
    writeFileSync(join(root, 'isolinux', 'isolinux.cfg'), isolinuxCfg);
    const { kernel } = buildGuestInitramfs(options, join(root, 'boot', 'initrd'), log);
    copyFileSync(kernel, join(root, 'boot', 'vmlinuz'));
    // -boot-info-table patches isolinux.bin on the CD, which is why it is a copy.
    execFileSync('xorriso', ['-as', 'mkisofs', '-quiet', '-R', '-V', volumeId, '-o', tmpOut,
      '-b', 'isolinux/isolinux.bin', '-c', 'isolinux/boot.cat', '-no-emul-boot', '-boot-load-size', '4', '-boot-info-table', root],
    { stdio: ['ignore', 'ignore', 'pipe'] });
    renameSync(tmpOut, out);
    return { path: out, volumeId, isolinuxCfg };
  } catch (err) {
    rmSync(tmpOut, { force: true });
    throw err;
  } finally {
    rmSync(root, { recursive: true, force: true });
  }
}
