import { readFileSync, renameSync, rmSync, writeFileSync } from 'node:fs';
import { basename, dirname, join } from 'node:path';
import type { Command } from 'commander';
import { transformDomainXml, type CdromBus } from './domain-xml';
import { BootIsoError, DomainXmlError, InvalidUrlError, PreflightError } from './errors';
import { preflight, type PreflightResult } from './preflight';
import { qemuArgs } from './qemu-args';
import { validateIsoUrl } from './url';

export interface BootIsoCliOptions {
  xml?: string;
  url: string;
  runOnce?: boolean;
  qemuArgs?: boolean;
  /** commander's --no-preflight sets this to false. */
  preflight?: boolean;
  insecure?: boolean;
  caFile?: string;
  targetDev?: string;
  bus?: string;
  timeout?: string;
  out?: string;
  json?: boolean;
}

export interface CliIo {
  stdout: { write(s: string): unknown };
  stderr: { write(s: string): unknown };
}

/** POSIX shell quoting, so the printed QEMU arguments can be pasted as they are. */
const shellQuote = (s: string) => (/^[A-Za-z0-9_@%+=:,./-]+$/.test(s) ? s : `'${s.replace(/'/g, `'\\''`)}'`);

function writeOutput(text: string, out: string | undefined, io: CliIo): void {
  if (out === undefined) {
    io.stdout.write(text);
    return;
  }
  // Write-then-rename: a failed run never leaves a half-written domain XML behind.
  const tmp = join(dirname(out), `.${basename(out)}.${process.pid}.tmp`);
  try {
    writeFileSync(tmp, text);
    renameSync(tmp, out);
  } catch (err) {
    rmSync(tmp, { force: true });
    throw new BootIsoError('OUTPUT', `cannot write ${out}: ${(err as NodeJS.ErrnoException).code ?? err}`);
  }
}

/**
 * The `boot-iso` command's work, with its output streams injectable. Returns the exit status:
 * 0 done, 1 preflight/transform/file failure, 2 bad usage (invalid URL, missing --xml, bad option value).
 */
export async function runBootIso(o: BootIsoCliOptions, io: CliIo): Promise<number> {
  const say = (line: string) => io.stderr.write(`boot-iso: ${line}\n`);
  // With --json the failure is a JSON object on stdout too, as every porthole command reports it.
  const failed = (code: string, message: string) => {
    if (o.json) io.stdout.write(`${JSON.stringify({ ok: false, error: { code, message } })}\n`);
    else say(message);
  };
  try {
    validateIsoUrl(o.url);
    if (!o.qemuArgs && o.xml === undefined) throw new InvalidUrlError('USAGE', '--xml DOMAIN.xml is required (unless --qemu-args)');
    if (o.bus !== undefined && !['sata', 'ide', 'scsi'].includes(o.bus)) throw new InvalidUrlError('USAGE', `--bus must be sata, ide or scsi`);
    if (o.timeout !== undefined && !/^[1-9][0-9]*$/.test(o.timeout)) throw new InvalidUrlError('USAGE', '--timeout must be milliseconds');
  } catch (err) {
    if (!(err instanceof InvalidUrlError)) throw err;
    failed('USAGE', err.code === 'USAGE' ? err.message : `invalid URL: ${err.message}`);
    return 2;
  }
  try {
    if (o.insecure) {
      say('WARNING: --insecure: the certificate is NOT verified, by the preflight or by QEMU; anyone on the path can substitute the boot image');
    }
    let checked: PreflightResult | undefined;
    if (o.preflight === false) {
      say('preflight skipped (--no-preflight): a bad server will show up as I/O errors in the guest');
    } else {
      checked = await preflight(o.url, { insecure: o.insecure, caFile: o.caFile, timeoutMs: o.timeout ? Number(o.timeout) : undefined });
      say(`preflight OK: ${checked.size} bytes, ISO volume "${checked.volumeId ?? ''}", first read answered in ${checked.latencyMs} ms`);
      for (const w of checked.warnings) say(`warning: ${w}`);
    }

    if (o.qemuArgs) {
      if (o.xml !== undefined) say('--qemu-args prints QEMU arguments; --xml is not read');
      const q = qemuArgs(o.url, { insecure: o.insecure, bus: o.bus === 'scsi' ? 'scsi' : 'ide' });
      if (o.json) writeOutput(JSON.stringify({ qemu: q, preflight: checked }, null, 2) + '\n', o.out, io);
      else {
        writeOutput(q.args.map(shellQuote).join(' ') + '\n', o.out, io);
        for (const n of q.notes) say(`note: ${n}`);
      }
      return 0;
    }

    let xml: string;
    try {
      xml = readFileSync(o.xml!, 'utf8');
    } catch (err) {
      throw new BootIsoError('INPUT', `cannot read ${o.xml}: ${(err as NodeJS.ErrnoException).code ?? err}`);
    }
    const r = transformDomainXml(xml, o.url, {
      runOnce: o.runOnce,
      targetDev: o.targetDev,
      bus: o.bus as CdromBus | undefined,
      insecure: o.insecure,
    });
    if (o.json) {
      writeOutput(JSON.stringify({ ...r, preflight: checked }, null, 2) + '\n', o.out, io);
    } else {
      writeOutput(r.xml, o.out, io);
      say(`CD-ROM ${r.targetDev} on ${r.bus}, boot order 1; ` +
        (r.bootOrder.length ? r.bootOrder.map((b) => `${b.device} ${b.from ?? '-'}→${b.to}`).join(', ') : 'no other boot devices'));
      for (const w of r.warnings) say(`warning: ${w}`);
      say(r.usage);
    }
    return 0;
  } catch (err) {
    if (!(err instanceof BootIsoError)) throw err;
    const what = err instanceof PreflightError ? 'preflight failed' : err instanceof DomainXmlError ? 'domain XML' : 'failed';
    failed(err.code, `${what} [${err.code}]: ${err.message}`);
    return 1;
  }
}

/** Adds `boot-iso` to a commander program (the `porthole` CLI). Its action is async: call `program.parseAsync`. */
export function registerBootIsoCommand(program: Command, io: CliIo = process): Command {
  return program
    .command('boot-iso')
    .description('boot a VM from an ISO served over https: add a network CD-ROM that boots first to a libvirt domain XML')
    .requiredOption('--url <url>', 'https URL of the ISO (http is refused)')
    .option('--xml <file>', 'libvirt domain XML to transform (required unless --qemu-args)')
    .option('--run-once', 'produce the run-once form, for one `virsh create` start')
    .option('--qemu-args', 'print the equivalent QEMU arguments instead of XML')
    .option('--no-preflight', 'skip checking the server (Range, size, ISO 9660, certificate)')
    .option('--insecure', 'do not verify the server certificate (preflight and QEMU); loudly reported')
    .option('--ca-file <file>', 'extra CA for the preflight only (QEMU trusts only the system store)')
    .option('--target-dev <dev>', 'target device for the CD-ROM, e.g. sdc or hdc (default: first free)')
    .option('--bus <bus>', 'sata, ide or scsi (default: the bus of existing CD-ROMs, else sata)')
    .option('--timeout <ms>', 'preflight limit per request in milliseconds', '10000')
    .option('--out <file>', 'write the result here instead of stdout')
    .option('--json', 'print the full result (XML forms, boot order changes, preflight) as JSON')
    .addHelpText('after', `
Examples:
  porthole boot-iso --xml web1.xml --url https://mirror.example/debian-12.iso --out web1-boot.xml && virsh define web1-boot.xml
  porthole boot-iso --xml web1.xml --url https://mirror.example/debian-12.iso --run-once | virsh create /dev/stdin
  porthole boot-iso --qemu-args --url https://mirror.example/debian-12.iso --ca-file ca.pem`)
    .action(async (o: BootIsoCliOptions, cmd: Command) => {
      // --json may be the program's (the porthole CLI defines it too, and parses it first).
      process.exitCode = await runBootIso({ ...o, json: cmd.optsWithGlobals<{ json?: boolean }>().json }, io);
    });
}
