// `porthole payload ...`: build payload media, attach/eject them over QMP, and
// edit libvirt domain XML. Registered into the porthole CLI by the broker, whose
// conventions apply: actions throw (InvalidArgumentError for a usage error) and
// read --json with optsWithGlobals().
import { readFileSync, writeFileSync } from 'node:fs';
import { dirname, resolve } from 'node:path';
import { Command, InvalidArgumentError, Option } from 'commander';
import { parseLibvirtTarget, Virsh } from '@porthole/libvirt';
import { ejectPayloadMedium, insertPayloadMedium, attachPayloadToDomainXml, detachPayloadFromDomainXml, BlockInfo } from './attach';
import { buildPayloadMedium, BuildResult } from './build';
import { attachPayloadLive, ejectPayloadLive } from './libvirt-live';
import { Availability, MediumKind } from './manifest';
import { connectQmpSocket, QmpConnection } from './qmp-socket';
import { parsePayloadSpec, PayloadEntry, PayloadSpec, PayloadSpecError } from './spec';
import { buildVdsmMedium, VdsmBuildResult } from './vdsm';

export interface PayloadCommandOptions {
  /**
   * Opens QMP for `attach`/`eject` TARGET when no --qmp SOCKET is given (the
   * broker maps a VM name to its QMP). Default: TARGET is a QMP socket path.
   */
  connectTarget?: (target: string) => Promise<QmpConnection>;
}

/** An option value with its position on the command line, so --owner/--group/--mode apply to the entries after them. */
interface Ordered {
  seq: number;
  value: string;
}
let sequence = 0;
const ordered = (value: string, previous: Ordered[] | undefined): Ordered[] => [...(previous ?? []), { seq: sequence++, value }];

interface BuildFlags {
  cd?: boolean;
  floppy?: boolean;
  output: string;
  entry?: Ordered[];
  b64?: Ordered[];
  owner?: Ordered[];
  group?: Ordered[];
  mode?: Ordered[];
  manifest?: string;
  run?: string[];
  runOnce?: boolean;
  id?: string;
  layout: 'porthole' | 'vdsm';
  label?: string;
}

/** GUESTPATH=VALUE split at the first "=" (a guest path containing "=" needs a spec file). */
function splitAssignment(text: string, flag: string): [string, string] {
  const eq = text.indexOf('=');
  if (eq <= 0) throw new InvalidArgumentError(`${flag} expects GUESTPATH=VALUE, got ${JSON.stringify(text)}`);
  return [text.slice(0, eq), text.slice(eq + 1)];
}

/** --run value: a JSON array is an argv, anything else a /bin/sh -c script. */
function commandArgv(text: string): string[] {
  if (text.trim().startsWith('[')) {
    let argv: unknown;
    try {
      argv = JSON.parse(text);
    } catch (e) {
      throw new InvalidArgumentError(`--run: not a JSON argv array: ${(e as Error).message}`);
    }
    if (!Array.isArray(argv) || !argv.every((a) => typeof a === 'string')) throw new InvalidArgumentError('--run: a JSON argv must be an array of strings');
    return argv;
  }
  return ['/bin/sh', '-c', text];
}

function entriesFromFlags(f: BuildFlags): PayloadEntry[] {
  const events = [
    ...(f.entry ?? []).map((o) => ({ ...o, kind: 'entry' as const })),
    ...(f.b64 ?? []).map((o) => ({ ...o, kind: 'b64' as const })),
    ...(f.owner ?? []).map((o) => ({ ...o, kind: 'owner' as const })),
    ...(f.group ?? []).map((o) => ({ ...o, kind: 'group' as const })),
    ...(f.mode ?? []).map((o) => ({ ...o, kind: 'mode' as const })),
  ].sort((a, b) => a.seq - b.seq);
  const attrs: Pick<PayloadEntry, 'owner' | 'group' | 'mode'> = {};
  const entries: PayloadEntry[] = [];
  for (const ev of events) {
    if (ev.kind === 'owner' || ev.kind === 'group' || ev.kind === 'mode') attrs[ev.kind] = ev.value;
    else {
      const [guestPath, value] = splitAssignment(ev.value, ev.kind === 'entry' ? '--entry' : '--b64');
      entries.push({ guestPath, content: ev.kind === 'entry' ? { localFile: resolve(value) } : { base64: value }, ...attrs });
    }
  }
  return entries;
}

/** A spec the user wrote that cannot be built is a usage error; anything else (a tool, the disk) a failure. */
function usageError(err: unknown): never {
  throw err instanceof PayloadSpecError ? new InvalidArgumentError(err.message) : err;
}

function buildSpecs(f: BuildFlags): PayloadSpec[] {
  const availability: Availability | undefined = f.runOnce ? 'run-once' : undefined;
  let specs: PayloadSpec[] = [];
  try {
    if (f.manifest) specs = parsePayloadSpec(readFileSync(f.manifest, 'utf8'), dirname(resolve(f.manifest)));
  } catch (err) {
    usageError(err);
  }
  for (const s of specs) s.availability ??= availability;
  const entries = entriesFromFlags(f);
  const commands = (f.run ?? []).map(commandArgv);
  if (entries.length > 0 || commands.length > 0 || f.id !== undefined) specs.push({ id: f.id, availability, entries, commands });
  if (specs.length === 0) throw new InvalidArgumentError('nothing to build: give --entry, --b64, --run or --manifest');
  return specs;
}

/** --layout vdsm: files at their own paths, nothing else; the options that only the Porthole layout carries are refused. */
async function buildVdsm(medium: MediumKind, f: BuildFlags): Promise<VdsmBuildResult> {
  const portholeOnly: Array<[unknown, string]> = [[f.owner, '--owner'], [f.group, '--group'], [f.mode, '--mode'], [f.run, '--run'], [f.runOnce, '--run-once'], [f.id, '--id'], [f.manifest, '--manifest']];
  const extra = portholeOnly.find(([v]) => v !== undefined && v !== false);
  if (extra) throw new InvalidArgumentError(`${extra[1]} has no place on a vdsm-layout medium (files at their own paths, no manifest): leave it out, or use --layout porthole`);
  const files = entriesFromFlags(f).map((e) => ({ path: String(e.guestPath), content: e.content }));
  if (files.length === 0) throw new InvalidArgumentError('nothing to build: give --entry or --b64');
  return buildVdsmMedium(medium, files, resolve(f.output), { label: f.label }).catch(usageError);
}

/** The build result for --json: manifest hashes and counts, no file contents. */
function resultSummary(r: BuildResult): Record<string, unknown> {
  return {
    path: r.path,
    medium: r.medium,
    label: r.label,
    ...(r.serial ? { serial: r.serial } : {}),
    imageBytes: r.imageBytes,
    tool: r.tool,
    manifestSha256: r.manifest.manifestSha256,
    payloads: r.manifest.payloads.map((p) => ({
      id: p.id,
      availability: p.availability,
      contentSha256: p.contentSha256,
      files: p.files.map((f) => ({ path: f.pathText, pathB64: f.path.toString('base64'), size: f.size, sha256: f.sha256 })),
      commands: p.commands.length,
    })),
  };
}

function driveName(b: BlockInfo): string {
  return b.device || b.qdev || '?';
}

/** --json, given to this command or to the program before it. */
const wantsJson = (cmd: Command) => cmd.optsWithGlobals<{ json?: boolean }>().json === true;
const printJson = (value: unknown) => process.stdout.write(`${JSON.stringify(value, null, 2)}\n`);

/** A libvirt:[URI/]DOMAIN target's domain and its virsh (URI: the target's, else the CLI's --connect, else the default). */
function libvirtTarget(target: string, cmd: Command): { virsh: Virsh; domain: string } | undefined {
  if (!target.startsWith('libvirt:')) return undefined;
  const t = parseLibvirtTarget(target.slice('libvirt:'.length));
  return { virsh: new Virsh({ uri: t.uri ?? cmd.optsWithGlobals<{ connect?: string }>().connect }), domain: t.domain };
}

/** Adds `payload build|attach|eject|xml` to a commander program. */
export function registerPayloadCommands(program: Command, options: PayloadCommandOptions = {}): Command {
  const payload = program.command('payload').description('build payload media (CD or floppy) and attach them to VMs')
    .addHelpText('after', `
Examples:
  porthole payload build --cd -o seed.iso --entry /etc/app.conf=./app.conf --run 'systemctl restart app'
  porthole payload build --cd --layout vdsm --label config-2 -o cidata.iso --entry openstack/latest/user_data=./user-data
  porthole payload attach web1 seed.iso --qmp /run/web1.qmp
  porthole payload xml --domain-xml web1.xml --image seed.iso -o web1-with-payload.xml`);

  const openQmp = (target: string, socket: string | undefined): Promise<QmpConnection> =>
    socket !== undefined ? connectQmpSocket(socket) : (options.connectTarget ?? connectQmpSocket)(target);
  const withQmp = async <T>(target: string, socket: string | undefined, f: (q: QmpConnection) => Promise<T>): Promise<T> => {
    const qmp = await openQmp(target, socket);
    try {
      return await f(qmp);
    } finally {
      qmp.close();
    }
  };

  payload
    .command('build')
    .description('build a payload image from guest-path/content pairs (all payloads of a VM use one method: CD or floppy)')
    .addOption(new Option('--cd', 'ISO 9660 image (Rock Ridge + Joliet)').conflicts('floppy'))
    .addOption(new Option('--floppy', '1.44 MB FAT floppy image').conflicts('cd'))
    .requiredOption('-o, --output <file>', 'image to write (mode 0600)')
    .addOption(new Option('--layout <layout>', 'porthole: manifest + files/NNNN, applied by the agent; vdsm: each file at its own path, as oVirt makes payload media').choices(['porthole', 'vdsm']).default('porthole'))
    .option('--label <label>', 'volume label of a vdsm-layout medium, e.g. config-2 (Porthole media get their own)')
    .option('--entry <guestpath=localfile>', 'a file from the host (repeatable); with --layout vdsm the path is on the medium', ordered)
    .option('--b64 <guestpath=base64>', 'content given as base64 (repeatable)', ordered)
    .option('--owner <user>', 'owner (name or uid) of the entries that follow', ordered)
    .option('--group <group>', 'group (name or gid) of the entries that follow', ordered)
    .option('--mode <octal>', 'mode (e.g. 0640) of the entries that follow', ordered)
    .option('--manifest <file>', 'JSON build spec with payloads (see FORMAT.md, "Build spec")')
    .option('--run <cmd>', 'command to run after the files are in place: a JSON argv array, or a /bin/sh -c script (repeatable)', (v: string, p: string[] | undefined) => [...(p ?? []), v])
    .option('--run-once', 'attach for the next start only (default: permanent)')
    .option('--id <id>', 'payload id (default: derived from the content)')
    .option('--json', 'print the result as JSON')
    .addHelpText('after', `
Examples:
  porthole payload build --cd -o seed.iso --owner root --mode 0640 --entry /etc/app/app.conf=./app.conf --run 'systemctl restart app'
  porthole payload build --floppy -o once.img --run-once --b64 /etc/motd=aGVsbG8K
  porthole payload build --cd -o many.iso --manifest payloads.json --json
  porthole payload build --cd --layout vdsm --label config-2 -o cidata.iso \\
      --entry openstack/latest/meta_data.json=./meta.json --entry openstack/latest/user_data=./user-data`)
    .action(async (f: BuildFlags, cmd: Command) => {
      if (!f.cd && !f.floppy) throw new InvalidArgumentError('choose the medium: --cd or --floppy');
      const medium: MediumKind = f.cd ? 'cd' : 'floppy';
      if (f.layout === 'vdsm') {
        const r = await buildVdsm(medium, f);
        if (wantsJson(cmd)) printJson({ layout: 'vdsm', ...r });
        else {
          process.stdout.write(`built ${medium} ${r.path} in the vdsm layout (${r.imageBytes} bytes, label ${r.label ?? 'none'})\n`);
          for (const file of r.files) process.stdout.write(`  ${file.path}: ${file.size} bytes, sha256 ${file.sha256}\n`);
        }
        return;
      }
      if (f.label !== undefined) throw new InvalidArgumentError('--label is for --layout vdsm; a Porthole medium is labelled from its manifest hash');
      const r = await buildPayloadMedium(medium, buildSpecs(f), resolve(f.output)).catch(usageError);
      if (wantsJson(cmd)) printJson({ layout: 'porthole', ...resultSummary(r) });
      else {
        process.stdout.write(`built ${medium} payload ${r.path} (${r.imageBytes} bytes, label ${r.label}, manifest sha256 ${r.manifest.manifestSha256})\n`);
        for (const p of r.manifest.payloads) {
          process.stdout.write(`  payload ${p.id}: ${p.availability}, ${p.files.length} files, ${p.commands.length} commands, content sha256 ${p.contentSha256}\n`);
        }
      }
    });

  payload
    .command('attach <target> <image>')
    .description('insert a payload image into a running VM: libvirt:DOMAIN (change-media, or a hot-plugged SCSI CD-ROM), or QEMU over QMP (TARGET: the VM, or its QMP socket)')
    .option('--floppy', 'the image is a floppy (default: CD)')
    .option('--qmp <socket>', 'QMP Unix socket of the VM')
    .option('--device <id>', 'drive to use (libvirt: target name such as hdc; QMP: block device name or qdev id); default: the porthole-payload drive or an empty one')
    .option('--json', 'print the result as JSON')
    .addHelpText('after', `
Examples:
  porthole payload attach libvirt:web1 seed.iso
  porthole payload attach web1 seed.iso --qmp /run/web1.qmp
  porthole payload attach /run/web1.qmp once.img --floppy --device fd0`)
    .action(async (target: string, image: string, f: { floppy?: boolean; qmp?: string; device?: string }, cmd: Command) => {
      const path = resolve(image);
      const medium = f.floppy ? 'floppy' : 'cd';
      const lv = libvirtTarget(target, cmd);
      if (lv) {
        const r = await attachPayloadLive(lv.virsh, lv.domain, path, { medium, device: f.device });
        if (wantsJson(cmd)) printJson({ ok: true, target, image: path, drive: r.drive, how: r.how });
        else process.stdout.write(`inserted ${path} into drive ${r.drive} of ${target} (${r.how === 'attach-device' ? 'hot-plugged' : 'change-media'}, until it is ejected or the domain stops)\n`);
        return;
      }
      const drive = await withQmp(target, f.qmp, (q) => insertPayloadMedium(q, path, { medium, device: f.device }));
      if (wantsJson(cmd)) printJson({ ok: true, target, image: path, drive: driveName(drive) });
      else process.stdout.write(`inserted ${path} into drive ${driveName(drive)} of ${target}\n`);
    });

  payload
    .command('eject <target>')
    .description('eject the payload medium from a running VM (libvirt:DOMAIN, or QEMU over QMP)')
    .option('--floppy', 'eject the floppy (default: CD)')
    .option('--qmp <socket>', 'QMP Unix socket of the VM')
    .option('--device <id>', 'drive to eject (libvirt: target name; QMP: block device name or qdev id)')
    .option('--force', 'eject even if the guest has locked the tray')
    .option('--json', 'print the result as JSON')
    .addHelpText('after', `
Examples:
  porthole payload eject libvirt:web1
  porthole payload eject web1 --qmp /run/web1.qmp
  porthole payload eject /run/web1.qmp --floppy --force`)
    .action(async (target: string, f: { floppy?: boolean; qmp?: string; device?: string; force?: boolean }, cmd: Command) => {
      const how = { medium: f.floppy ? 'floppy' as const : 'cd' as const, device: f.device, force: f.force };
      const lv = libvirtTarget(target, cmd);
      const drive = lv ? await ejectPayloadLive(lv.virsh, lv.domain, how) : driveName(await withQmp(target, f.qmp, (q) => ejectPayloadMedium(q, how)));
      if (wantsJson(cmd)) printJson({ ok: true, target, drive });
      else process.stdout.write(`ejected drive ${drive} of ${target}\n`);
    });

  payload
    .command('xml')
    .description('add the payload disk to a libvirt domain XML (permanent: for virsh define; --run-once: for a transient virsh create)')
    .requiredOption('--domain-xml <file>', 'domain XML to modify')
    .option('--image <img>', 'payload image')
    .option('--floppy', 'attach as a floppy (default: CD-ROM)')
    .option('--run-once', 'the run-once form, for a transient start')
    .option('--detach', 'remove the payload disk instead')
    .option('-o, --output <file>', 'write the XML here (default: stdout)')
    .option('--json', 'print {"xml": …} (or where it was written) as JSON')
    .addHelpText('after', `
Examples:
  porthole payload xml --domain-xml web1.xml --image seed.iso -o web1-payload.xml && virsh define web1-payload.xml
  porthole payload xml --domain-xml web1.xml --image once.img --floppy --run-once | virsh create /dev/stdin
  porthole payload xml --domain-xml web1-payload.xml --detach -o web1.xml`)
    .action(async (f: { domainXml: string; image?: string; floppy?: boolean; runOnce?: boolean; detach?: boolean; output?: string }, cmd: Command) => {
      if (!f.detach && !f.image) throw new InvalidArgumentError('--image is required (or --detach)');
      const input = readFileSync(f.domainXml, 'utf8');
      const out = f.detach ? detachPayloadFromDomainXml(input) : attachPayloadToDomainXml(input, {
        image: resolve(f.image!),
        medium: f.floppy ? 'floppy' : 'cd',
        availability: f.runOnce ? 'run-once' : 'permanent',
      });
      if (f.output) writeFileSync(f.output, out);
      if (wantsJson(cmd)) printJson(f.output ? { ok: true, output: f.output } : { ok: true, xml: out });
      else if (!f.output) process.stdout.write(`${out}\n`);
    });

  return payload;
}
