// Payload media on a running libvirt domain: a medium inserted into a drive with
// `virsh change-media --live`, or a CD-ROM hot-plugged with `virsh attach-device --live`.
import { mkdtempSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { DomainDescription, DomainDisk, parseDomainXml, Virsh } from '@porthole/libvirt';
import { attachPayloadToDomainXml, PAYLOAD_DISK_ALIAS, PayloadAttachError, payloadDiskXml } from './attach';
import { MediumKind } from './manifest';

export interface LivePayloadOptions {
  medium: MediumKind;
  /** The drive's target name, as virsh change-media takes it (hdc, sdb, fda); default: see attachPayloadLive. */
  device?: string;
}

export interface LiveAttachResult {
  /** Target name of the drive that holds the image now. */
  drive: string;
  /** change-media: inserted into an existing drive; attach-device: a new CD-ROM was hot-plugged. */
  how: 'change-media' | 'attach-device';
}

const deviceOf = (medium: MediumKind) => (medium === 'cd' ? 'cdrom' : 'floppy');

function describeDrives(disks: DomainDisk[]): string {
  return disks.map((d) => `${d.target ?? '?'}(${d.device}${d.source ? ', holds a medium' : ', empty'})`).join(', ') || 'none';
}

async function runningDomain(virsh: Virsh, domain: string): Promise<{ xml: string; d: DomainDescription }> {
  const xml = await virsh.dumpXml(domain);
  const d = parseDomainXml(xml);
  if (d.id === undefined) {
    throw new PayloadAttachError(`libvirt domain ${d.name} is not running: for its definition use \`porthole payload xml\` and virsh define`);
  }
  return { xml, d };
}

function named(d: DomainDescription, device: string, medium: MediumKind): DomainDisk {
  const disk = d.disks.find((x) => x.target === device);
  if (!disk) throw new PayloadAttachError(`libvirt domain ${d.name} has no drive ${device} (drives: ${describeDrives(d.disks)})`);
  if (disk.device !== deviceOf(medium)) throw new PayloadAttachError(`drive ${device} of ${d.name} is a ${disk.device}, not a ${deviceOf(medium)} drive`);
  return disk;
}

/**
 * What a Linux guest does to a medium change for a moment: it locks the tray while a program has the drive open (the
 * agent looks at its drives every few seconds), and closes an open tray when the drive is opened.
 */
const TRAY_BUSY = /Tray of device .* is not open|timed out waiting to open tray|is locked/i;

/** virsh change-media DOMAIN DRIVE … --live, tried again while the guest holds the tray for a moment. */
async function changeMedia(virsh: Virsh, domain: string, args: string[]): Promise<void> {
  for (let attempt = 1; ; attempt++) {
    try {
      await virsh.run(['change-media', domain, ...args, '--live'], { domain });
      return;
    } catch (err) {
      if (attempt >= 5 || !TRAY_BUSY.test((err as Error).message)) throw err;
      await sleep(500);
    }
  }
}

/**
 * A payload CD-ROM Porthole hot-plugged onto the SCSI bus. It is unplugged rather than ejected, and replaced rather
 * than given another medium: libvirt 9.0 does not learn that a hot-plugged CD-ROM has a tray, so its change-media
 * skips opening it and QEMU refuses to take the medium out ("Tray of device … is not open").
 */
const hotPlugged = (disk: DomainDisk) => disk.alias === PAYLOAD_DISK_ALIAS && disk.bus === 'scsi';

/** Unplugs the hot-plugged payload drive and waits until the live XML no longer has it. */
async function unplug(virsh: Virsh, domain: string): Promise<void> {
  await virsh.run(['detach-device-alias', domain, PAYLOAD_DISK_ALIAS, '--live'], { domain });
  for (let i = 0; parseDomainXml(await virsh.dumpXml(domain)).disks.some((x) => x.alias === PAYLOAD_DISK_ALIAS); i++) {
    if (i >= 40) throw new PayloadAttachError(`libvirt domain ${domain} still has drive ${PAYLOAD_DISK_ALIAS} 10 s after unplugging it`);
    await sleep(250);
  }
}

/** Checks that the live XML shows `image` in the drive (libvirt reports what QEMU opened). */
async function verifyInserted(virsh: Virsh, domain: string, drive: string, image: string): Promise<void> {
  const after = parseDomainXml(await virsh.dumpXml(domain)).disks.find((x) => x.target === drive);
  if (after?.source !== image) throw new PayloadAttachError(`after inserting, drive ${drive} of ${domain} holds ${after?.source ?? 'nothing'} instead of ${image}`);
}

/**
 * Puts a payload image into a running domain, for this run only (--live; the definition is left alone). The drive is
 * the one named, else the payload drive (alias ua-porthole-payload), else the first empty drive of the medium's kind,
 * and gets the image with change-media (forcing the tray open). A domain without such a drive gets a read-only CD-ROM hot-plugged on its SCSI
 * bus (IDE, SATA and floppy drives cannot be hot-plugged). QEMU opens the image as libvirt's QEMU user: its
 * directory must be reachable by that user.
 */
export async function attachPayloadLive(virsh: Virsh, domain: string, image: string, options: LivePayloadOptions): Promise<LiveAttachResult> {
  if (!image.startsWith('/')) throw new PayloadAttachError(`image path must be absolute for libvirt, got ${JSON.stringify(image)}`);
  let { xml, d } = await runningDomain(virsh, domain);
  const kind = d.disks.filter((x) => x.device === deviceOf(options.medium));
  const drive = options.device !== undefined ? named(d, options.device, options.medium)
    : kind.find((x) => x.alias === PAYLOAD_DISK_ALIAS) ?? kind.find((x) => !x.source);
  if (drive && hotPlugged(drive)) {
    await unplug(virsh, domain);
    ({ xml, d } = await runningDomain(virsh, domain));
  } else if (drive?.target) {
    // --force: the drive is empty or holds a payload, so the guest's tray lock only stands for its drive checks.
    await changeMedia(virsh, domain, [drive.target, image, drive.source ? '--update' : '--insert', '--force']);
    await verifyInserted(virsh, domain, drive.target, image);
    return { drive: drive.target, how: 'change-media' };
  }
  if (options.medium === 'floppy') {
    throw new PayloadAttachError(`libvirt domain ${d.name} has no empty floppy drive, and floppy drives cannot be hot-plugged (drives: ${describeDrives(d.disks)})`);
  }
  if (!d.controllers.some((c) => c.type === 'scsi')) {
    throw new PayloadAttachError(`libvirt domain ${d.name} has no empty CD-ROM drive and no SCSI controller to hot-plug one onto: ` +
      `give it an empty CD-ROM drive or <controller type='scsi' model='virtio-scsi'/> (drives: ${describeDrives(d.disks)})`);
  }
  const withDisk = attachPayloadToDomainXml(xml, { image, medium: 'cd', bus: 'scsi' });
  const target = parseDomainXml(withDisk).disks.find((x) => x.alias === PAYLOAD_DISK_ALIAS)!.target!;
  const disk = payloadDiskXml(withDisk)!;
  const dir = mkdtempSync(join(tmpdir(), 'porthole-payload-disk-'));
  try {
    writeFileSync(join(dir, 'disk.xml'), disk);
    await virsh.run(['attach-device', domain, join(dir, 'disk.xml'), '--live'], { domain });
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  await verifyInserted(virsh, domain, target, image);
  return { drive: target, how: 'attach-device' };
}

/**
 * Ejects the payload medium of a running domain (change-media --eject --live; a CD-ROM Porthole hot-plugged is unplugged):
 * from the drive named, else the payload drive, else the only drive of the kind holding a medium (never a guess
 * between an installer CD and a payload).
 * `force` ejects even when the guest holds the tray locked (a mounted CD). Returns the drive's target name.
 */
export async function ejectPayloadLive(virsh: Virsh, domain: string, options: LivePayloadOptions & { force?: boolean }): Promise<string> {
  const { d } = await runningDomain(virsh, domain);
  const kind = d.disks.filter((x) => x.device === deviceOf(options.medium));
  const holding = kind.filter((x) => x.source);
  const drive = options.device !== undefined ? named(d, options.device, options.medium)
    : kind.find((x) => x.alias === PAYLOAD_DISK_ALIAS) ?? (holding.length === 1 ? holding[0] : undefined);
  if (!drive?.target) {
    throw new PayloadAttachError(`${holding.length > 1 ? 'several' : 'no'} ${deviceOf(options.medium)} drives of ${d.name} hold a medium; ` +
      `name the one to eject (drives: ${describeDrives(d.disks)})`);
  }
  if (hotPlugged(drive)) await unplug(virsh, domain);
  else await changeMedia(virsh, domain, [drive.target, '--eject', ...(options.force ? ['--force'] : [])]);
  return drive.target;
}
