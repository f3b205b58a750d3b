import { Command, InvalidArgumentError, Option } from 'commander';
import { registerBootIsoCommand } from '@porthole/bootiso';
import { registerImageCommands } from '@porthole/images';
import { registerPayloadCommands } from '@porthole/media';
import { createWriteStream, readFileSync } from 'node:fs';
import { finished } from 'node:stream/promises';
import { constants as osConstants } from 'node:os';
import { v1, PortholeError, errorCodeName } from '@porthole/protocol';
import { withLibvirtUri } from '@porthole/libvirt';
import { applyCliConventions, CliOutput, EXIT, reportUsageError, wantsJson } from './cli-conventions';
import { connect, describeError, PortholeClient, UnreachableError } from './client';
import { applyManifest, AppliedFile, checkAgainstHello, fetchSources, InjectError } from './inject';
import { Manifest, ManifestError, parseManifest } from './manifest';
import { BROKER_SOCKET_ENV, DEFAULT_BROKER_SOCKET } from './route';
import { registerServeCommand } from './serve/command';
import { BadTargetError } from './targets';
import { connectGuest, Guest } from './guest';
import { registerAgentCommands } from './agent-command';
import { BROKER_VERSION } from './version';

export { EXIT };

const E = v1.ErrorCode;

function exitCodeFor(err: unknown): number {
  const e = err instanceof PortholeError ? err : undefined;
  if (!e) return EXIT.FAILED;
  if (e.code === E.ERROR_CODE_POLICY_DENIED) return EXIT.POLICY;
  if (e instanceof UnreachableError) return EXIT.UNREACHABLE;
  if (e.code === E.ERROR_CODE_PROTOCOL || e.code === E.ERROR_CODE_TIMEOUT || e.code === E.ERROR_CODE_NOT_FOUND && /socket|listening|agent answered/.test(e.message)) {
    return EXIT.UNREACHABLE;
  }
  return EXIT.FAILED;
}

interface Globals {
  json?: boolean;
  timeout: string;
  connect?: string;
  verbose?: boolean;
  brokerSocket?: string;
  direct?: boolean;
}

/** Reports a failure and exits; `extra` adds fields to the JSON answer and lines to the text one. */
function fail(program: Command, err: unknown, extra: { json?: Record<string, unknown>; text?: string[] } = {}): never {
  const json = program.opts<Globals>().json;
  const e = PortholeError.from(err);
  const usage = err instanceof BadTargetError;
  const code = usage ? EXIT.USAGE : exitCodeFor(e);
  if (json) process.stdout.write(JSON.stringify({ ok: false, error: { code: usage ? 'USAGE' : errorCodeName(e.code), message: describeError(e), rule: e.rule }, ...extra.json }) + '\n');
  else process.stderr.write([`porthole: ${describeError(e)}`, ...(extra.text ?? []).map((l) => `porthole: ${l}`)].join('\n') + '\n');
  process.exit(code);
}

/** Where and how to connect, from the global options: as virsh, --connect else LIBVIRT_DEFAULT_URI, written into the target so it goes wherever the target goes (the daemon too). */
async function connectWith<T extends { route: { detail: string } }>(
  program: Command, target: string, open: (target: string, options: { timeoutMs: number; broker: string | false | undefined }) => Promise<T>,
): Promise<T> {
  const o = program.opts<Globals>();
  const c = await open(withLibvirtUri(target, o.connect ?? process.env.LIBVIRT_DEFAULT_URI), {
    timeoutMs: Number(o.timeout) * 1000, broker: o.direct ? false : o.brokerSocket,
  });
  if (o.verbose) process.stderr.write(`porthole: ${c.route.detail}\n`);
  return c;
}

const client = (program: Command, target: string): Promise<PortholeClient> => connectWith(program, target, connect);

/** A target's agent: Porthole's, or qemu-guest-agent's for `qga:` targets and libvirt domains without Porthole's. */
const guest = (program: Command, target: string): Promise<Guest> => connectWith(program, target, connectGuest);

/**
 * A request cut by a lost connection: when the VM cannot be reached again (stopped, undefined), that is the
 * reason to report (exit 3); otherwise the request's own error.
 */
async function whyLost(c: Guest, err: unknown): Promise<unknown> {
  if (!(c instanceof PortholeClient) || !(err instanceof PortholeError) || err.code !== E.ERROR_CODE_SESSION_RESET) return err;
  return c.ready().then(() => err, (unreachable: unknown) => (unreachable instanceof UnreachableError ? unreachable : err));
}

/**
 * target:/path → [target, path]; targets themselves contain a colon (unix:/x.sock:/etc/motd), and a
 * libvirt target may name its URI (libvirt:qemu:///session/web1:/etc/motd), a tcp one its port (tcp:127.0.0.1:5150:/x); a
 * Windows guest's path is C:\... or \\server\share\....
 */
function splitRemote(spec: string): { target: string; path: string } | undefined {
  const m = /^((?:unix|serial|xen|qga):[^:]+|tcp:(?:\[[^\]]*\]|[^:]+):\d+|libvirt:(?:[a-z][a-z0-9+.-]*:\/\/[^:]*\/)?[^:/]+):(\/.*|[a-z]:[\\/].*|\\\\.*)$/i.exec(spec);
  return m ? { target: m[1], path: m[2] } : undefined;
}

function progressBar(enabled: boolean, total?: number): { update(bytes: number): void; stop(): void } {
  if (!enabled || !process.stderr.isTTY) return { update() {}, stop() {} };
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const { SingleBar, Presets } = require('cli-progress') as typeof import('cli-progress');
  const bar = new SingleBar({ stream: process.stderr, format: '{bar} {percentage}% | {value}/{total} bytes | {eta}s', hideCursor: true }, Presets.shades_classic);
  bar.start(total ?? 0, 0);
  return { update: (b) => bar.update(b), stop: () => bar.stop() };
}

function output(program: Command, value: unknown, human: string): void {
  if (program.opts<Globals>().json) process.stdout.write(JSON.stringify(value) + '\n');
  else process.stdout.write(human + '\n');
}

function hello(h: v1.Hello.$Properties | v1.Hello | undefined | null) {
  const caps = (h?.capabilities ?? []).map((c) => String(v1.Capability[c as number]).replace('CAPABILITY_', '').toLowerCase());
  const l = h?.limits;
  const text = (b: Uint8Array[] | null | undefined) => (b ?? []).map((x) => Buffer.from(x).toString());
  return {
    agent: h?.softwareVersion, os: h?.os, arch: h?.arch, hostname: h?.hostname, kernel: h?.kernel, protocol: h?.protocolVersion,
    capabilities: caps,
    limits: {
      writeAllow: text(l?.writeAllowPrefixes), writeDeny: text(l?.writeDenyPrefixes), readAllow: text(l?.readAllowPrefixes), readDeny: text(l?.readDenyPrefixes),
      maxFileSize: Number(l?.maxFileSize ?? 0), execUsers: l?.execUsers ?? [], execCommands: l?.execAllowCommands ?? [], maxConcurrentExecs: l?.maxConcurrentExecs ?? 0,
      execGroups: l?.execGroups ?? [], execEnvAllow: l?.execEnvAllow ?? [], execEnvRefused: l?.execEnvRefused ?? [],
      maxStreams: l?.maxStreams ?? 0, maxOpenFiles: l?.maxOpenFiles ?? 0, peerTimeoutSeconds: l?.peerTimeoutSeconds ?? 0,
    },
  };
}

/** Option parser: a number of seconds > 0 (anything else is a usage error). */
function seconds(value: string): string {
  if (!(Number(value) > 0)) throw new InvalidArgumentError('expected a number of seconds greater than 0');
  return value;
}

/** Option parser: permission bits in octal, like 0640. */
function octalMode(value: string): string {
  if (!/^0?[0-7]{3,4}$/.test(value)) throw new InvalidArgumentError('expected octal permission bits like 0644');
  return value;
}

export function buildProgram(): Command {
  const program = new Command('porthole')
    .description('Porthole: put files into VMs and run commands in them over virtio-serial, serial or xenstore — no guest network needed')
    .version(BROKER_VERSION, '--version')
    .option('--json', 'machine-readable output (one JSON object per result)')
    .option('--timeout <seconds>', 'how long to wait for the VM\'s agent', seconds, '10')
    .option('-c, --connect <uri>', 'libvirt connection URI for libvirt:DOMAIN targets (default: $LIBVIRT_DEFAULT_URI, else qemu:///system)')
    .option('--broker-socket <path>', `the broker daemon to go through (default $${BROKER_SOCKET_ENV}, else ${DEFAULT_BROKER_SOCKET} when a daemon listens there)`)
    .option('--direct', 'connect to the VM\'s channel directly, not through the broker daemon')
    .option('-v, --verbose', 'say how the VM is reached (through the broker daemon or directly)')
    .addHelpText('after', `
Targets: unix:/path/to/chardev.sock (QEMU), libvirt:DOMAIN or libvirt:URI/DOMAIN, serial:/dev/ttyS1, xen:DOMID
VMs are reached through the host's broker daemon (porthole serve) when one listens on ${DEFAULT_BROKER_SOCKET}
(or $${BROKER_SOCKET_ENV}), directly otherwise; --verbose says which.

Examples:
  porthole info unix:/run/vm1/porthole.sock
  porthole exec libvirt:web1 -- uname -a
  porthole info libvirt:qemu:///session/web1     # same as: porthole --connect qemu:///session info libvirt:web1
  porthole cp ./app.conf unix:/run/vm1.sock:/etc/app/app.conf --owner root --group app --mode 0640 --mkdir
  porthole cp unix:/run/vm1.sock:/var/log/syslog ./syslog
  porthole inject libvirt:web1 user-data.yaml        # cloud-init write_files
  porthole serve --listen tcp:127.0.0.1:8750 --token-file /etc/porthole/broker.token

Exit codes: 0 ok; 1 failed (the reason is printed); 2 usage; 3 VM or agent unreachable (no socket, libvirt domain
undefined or not running, no answer, version mismatch); 4 refused by the guest owner's policy; exec: the command's own
code, 128+N for signal N, 124 on --command-timeout, 130 when interrupted.`);

  program.command('info').argument('<target>').description('agent version, OS, enabled capabilities and policy limits')
    .addHelpText('after', `
Examples:
  porthole info unix:/run/vm1/porthole.sock
  porthole --json info libvirt:web1 | jq .limits`)
    .action(async (target: string) => {
      try {
        const c = await guest(program, target);
        const info = await c.info();
        const h = hello(info.hello);
        const qga = c instanceof PortholeClient ? undefined : c;
        const backend = qga ? { backend: qga.backend, disabledCommands: qga.disabledCommands } : { backend: 'porthole', protocol: c.hello?.protocolVersion };
        output(program, { ok: true, ...h, ...backend, uptimeMs: Number(info.uptimeMs), activeExecs: info.activeExecs },
          [qga ? `agent:        ${h.agent} (no Porthole agent: output at exit, files as base64; disabled: ${qga.disabledCommands.join(', ') || 'none'})`
            : `agent:        ${h.agent} (protocol v${c.hello?.protocolVersion})`, `guest:        ${h.hostname} ${h.os}/${h.arch} ${h.kernel}`,
            `capabilities: ${h.capabilities.join(', ') || 'none'}`, `write allow:  ${h.limits.writeAllow.join(', ')}  deny: ${h.limits.writeDeny.join(', ') || '-'}`,
            `read allow:   ${h.limits.readAllow.join(', ')}  deny: ${h.limits.readDeny.join(', ') || '-'}`,
            `exec:         users ${h.limits.execUsers.join(', ') || 'any'}; groups ${["each user's own", ...h.limits.execGroups].join(', ')}; commands ${h.limits.execCommands.join(', ') || 'any'}; max concurrent ${h.limits.maxConcurrentExecs || 'unlimited'}`,
            `exec env:     refused ${h.limits.execEnvRefused.join(' ') || '-'}; allowed anyway ${h.limits.execEnvAllow.join(' ') || '-'}`,
            `per host:     max streams ${h.limits.maxStreams || 'unlimited'}; max open files ${h.limits.maxOpenFiles || 'unlimited'}; dropped after ${h.limits.peerTimeoutSeconds || '-'} s of silence`].join('\n'));
        c.close();
      } catch (err) {
        fail(program, err);
      }
    });

  program.command('ping').argument('<target>').description('round trip to the agent')
    .addHelpText('after', `
Examples:
  porthole ping libvirt:web1
  porthole --timeout 60 ping xen:7                   # wait up to a minute for a booting guest`)
    .action(async (target: string) => {
      try {
        const c = await client(program, target);
        const ms = await c.ping();
        output(program, { ok: true, rttMs: ms }, `pong from ${c.hello?.softwareVersion} in ${ms.toFixed(2)} ms`);
        c.close();
      } catch (err) {
        fail(program, err);
      }
    });

  program.command('exec').argument('<target>').argument('<command...>')
    .description('run a command in the guest; its output streams live, the exit code is passed through')
    .option('-i, --stdin', 'forward this process\'s stdin (default: when stdin is not a terminal)')
    .option('--shell', 'run the command line through /bin/sh -c (cmd.exe /c on Windows guests)')
    .option('--powershell', 'run the command line through PowerShell (Windows guests)')
    .option('-u, --user <user>', 'run as this user').option('-g, --group <group>', 'run with this group')
    .option('-C, --cwd <dir>', 'working directory').option('-e, --env <NAME=VALUE...>', 'environment entries')
    .option('-t, --command-timeout <seconds>', 'kill the command (its whole process group) after this long', seconds)
    .addHelpText('after', `
Examples:
  porthole exec libvirt:web1 -- uname -a
  porthole exec libvirt:web1 --shell 'journalctl -u app | tail'
  porthole exec -u app -C /srv/app -e MODE=prod libvirt:web1 -- ./migrate --dry-run
  porthole exec tcp:127.0.0.1:5150 --powershell 'Get-Service porthole-agent'
  tar c ./site | porthole exec -i libvirt:web1 -- tar x -C /srv/www`)
    .action(async (target: string, command: string[], o: { stdin?: boolean; shell?: boolean; powershell?: boolean; user?: string; group?: string; cwd?: string; env?: string[]; commandTimeout?: string }) => {
      let c: Guest;
      try {
        c = await guest(program, target);
      } catch (err) {
        fail(program, err);
      }
      const env = Object.fromEntries((o.env ?? []).map((kv) => [kv.slice(0, kv.indexOf('=')), kv.slice(kv.indexOf('=') + 1)]));
      const withStdin = o.stdin ?? !process.stdin.isTTY;
      const line = command.join(' ');
      const task = c.exec(o.powershell ? { shell: line, powershell: true } : o.shell ? { shell: line } : command, {
        user: o.user, group: o.group, cwd: o.cwd, env, stdin: withStdin, timeoutMs: o.commandTimeout ? Number(o.commandTimeout) * 1000 : 0,
      });
      task.stdout.pipe(process.stdout);
      task.stderr.pipe(process.stderr);
      if (withStdin) process.stdin.pipe(task.stdin);
      let interrupted = false;
      process.on('SIGINT', () => {
        if (interrupted) process.exit(EXIT.INTERRUPTED);
        interrupted = true;
        process.stderr.write('porthole: cancelling the remote command (Ctrl-C again to leave it running)\n');
        task.cancel('interrupted on the host');
      });
      try {
        const exit = await task.exit;
        // The output may still sit in the pipes to our stdout/stderr (they were slower than the guest):
        // exit only once all of it was handed on and written.
        await Promise.all([finished(task.stdout), finished(task.stderr)]);
        await new Promise((r) => process.stdout.write('', r));
        if (program.opts<Globals>().json) process.stderr.write(JSON.stringify({ ok: true, ...exit }) + '\n');
        else if ('outputTruncated' in exit && exit.outputTruncated) process.stderr.write('porthole: qemu-guest-agent cut the command\'s output at its limit\n');
        c.close();
        if (exit.timedOut) process.exit(EXIT.TIMEOUT);
        if (interrupted) process.exit(EXIT.INTERRUPTED);
        if (exit.signal) process.exit(128 + ((osConstants.signals as Record<string, number>)[exit.signal] ?? 0));
        process.exit(exit.code ?? EXIT.FAILED);
      } catch (err) {
        // With stdin closed, a cancel can only reset the command's stream: it ends without a status.
        if (interrupted) process.exit(EXIT.INTERRUPTED);
        fail(program, await whyLost(c, err));
      }
    });

  program.command('cp').argument('<source>').argument('<destination>')
    .description('copy a local file into the guest (LOCAL TARGET:/path) or out of it (TARGET:/path LOCAL); "-" is stdin/stdout')
    .option('--owner <user>').option('--group <group>').option('--mode <octal>', 'permission bits, e.g. 0640', octalMode).option('--mkdir', 'create missing parent directories')
    .option('--no-progress', 'no progress bar')
    .addHelpText('after', `
Examples:
  porthole cp ./app.conf libvirt:web1:/etc/app/app.conf --owner root --group app --mode 0640 --mkdir
  porthole cp libvirt:web1:/var/log/syslog ./syslog
  echo 'ready' | porthole cp - unix:/run/vm1.sock:/run/app/flag`)
    .action(async (source: string, destination: string, o: { owner?: string; group?: string; mode?: string; mkdir?: boolean; progress: boolean }) => {
      const into = splitRemote(destination);
      const from = splitRemote(source);
      if (!into === !from) throw new InvalidArgumentError('exactly one of SOURCE and DESTINATION must be TARGET:/path');
      try {
        if (into) {
          const c = await guest(program, into.target);
          const task = c.installFile(source === '-' ? process.stdin : { path: source }, {
            path: into.path, owner: o.owner, group: o.group, mode: o.mode ? parseInt(o.mode, 8) : undefined, mkdir: o.mkdir,
          });
          const bar = progressBar(o.progress && !program.opts<Globals>().json, undefined);
          task.on('progress', (p: { bytes: number; total?: number }) => bar.update(p.bytes));
          const r = await task.result.finally(() => bar.stop());
          output(program, { ok: true, path: r.path.toString(), size: r.size, sha256: r.sha256, uid: r.uid, gid: r.gid, mode: `0${r.mode.toString(8)}`, resumedFrom: r.resumedFrom },
            `${r.path.toString()}: ${r.size} bytes, sha256 ${r.sha256}, uid ${r.uid} gid ${r.gid} mode 0${r.mode.toString(8)}`);
          c.close();
        } else {
          const c = await guest(program, from!.target);
          const task = c.readFile(from!.path);
          const bar = progressBar(o.progress && destination !== '-' && !program.opts<Globals>().json);
          task.on('progress', (p: { bytes: number }) => bar.update(p.bytes));
          const out = destination === '-' ? process.stdout : createWriteStream(destination);
          task.data.pipe(out);
          const r = await task.result.finally(() => bar.stop());
          if (out !== process.stdout) await new Promise<void>((res) => (out as NodeJS.WritableStream).once('finish', () => res()));
          if (destination !== '-') output(program, { ok: true, path: from!.path, size: r.length, sha256: r.sha256 }, `${destination}: ${r.length} bytes, sha256 ${r.sha256}`);
          c.close();
        }
      } catch (err) {
        fail(program, err);
      }
    });

  program.command('inject').argument('<target>').argument('<manifest>', 'YAML or JSON file, "-" for stdin')
    .description('apply many files at once: cloud-init write_files (YAML/JSON) or {"/path": "base64"}; all are checked before the first is written')
    .addHelpText('after', `
As cloud-init writes them: permissions default to 0644 and owner to root:root, also when a file is replaced;
"owner: user" leaves the group as it was (root for a new file); append, encoding (b64, gzip, gz+b64 …) and
source (http/https with headers, falling back to content) are honoured; defer is written at once, with a warning.
Sources are fetched and every entry is checked against the guest owner's limits before anything is written;
if a write still fails, the files before it stay and the report names what was applied and what was not.

Examples:
  porthole inject libvirt:web1 user-data.yaml
  porthole --json inject unix:/run/vm1.sock files.json          # {"/etc/app.conf": "<base64>"}
  porthole inject xen:7 - < user-data.yaml`)
    .action(async (target: string, manifestPath: string) => {
      const json = program.opts<Globals>().json;
      let manifest: Manifest;
      try {
        manifest = parseManifest(readFileSync(manifestPath === '-' ? 0 : manifestPath, 'utf8'));
      } catch (err) {
        if (err instanceof ManifestError) throw new InvalidArgumentError(`${manifestPath}: ${err.message}`);
        fail(program, err);
      }
      const { files, warnings } = manifest;
      const entry = (a: AppliedFile) => ({ index: a.index, path: a.path, size: a.result.size, sha256: a.result.sha256, uid: a.result.uid, gid: a.result.gid, mode: `0${a.result.mode.toString(8)}` });
      const named = (f: { index: number; path: string }) => ({ index: f.index, path: f.path });
      let c: PortholeClient | undefined;
      let told = 0;
      const tell = () => { if (!json) for (const w of warnings.slice(told)) process.stderr.write(`porthole: warning: ${w}\n`); told = warnings.length; };
      try {
        await fetchSources(files, warnings);
        tell();
        c = await client(program, target);
        checkAgainstHello(files, c.hello);
        const applied = await applyManifest(c, files, (a) => {
          if (!json) process.stdout.write(`${a.path}: ${a.result.size} bytes, sha256 ${a.result.sha256}\n`);
        });
        if (json) process.stdout.write(JSON.stringify({ ok: true, files: applied.map(entry), warnings }) + '\n');
        c.close();
      } catch (err) {
        c?.close();
        tell();
        if (!(err instanceof InjectError)) fail(program, err, { json: { files: [], warnings } });
        const where = (fs: Array<{ where: string }>) => fs.map((f) => f.where).join(', ') || 'none';
        fail(program, err, {
          json: { files: err.applied.map(entry), failed: named(err.failed), notApplied: [err.failed, ...err.notApplied].map(named), warnings },
          text: [`applied ${err.applied.length} of ${files.length} entries: ${where(files.slice(0, err.applied.length))}`,
            `not applied: ${where([err.failed, ...err.notApplied])}`],
        });
      }
    });

  registerServeCommand(program, EXIT);
  registerAgentCommands(program, fail, output);
  mountPluginCommands(program);
  program.addOption(new Option('--debug').hideHelp());
  return program;
}

/** Commands other packages provide (boot from https ISO, payload media, image transfer); imported statically so a bundle carries them. */
function mountPluginCommands(program: Command): void {
  registerBootIsoCommand(program);
  registerPayloadCommands(program);
  registerImageCommands(program);
}

/**
 * Runs `porthole ARGS` (without node and the script). Returns the exit code
 * when the run ended in a usage error or in help; undefined when a command ran
 * (it exits with its own code). Any other error is reported as a failure.
 */
export async function runPorthole(args: string[], io: CliOutput = process): Promise<number | undefined> {
  const program = buildProgram();
  applyCliConventions(program, io);
  try {
    await program.parseAsync(args, { from: 'user' });
    return undefined;
  } catch (err) {
    const usage = reportUsageError(err, wantsJson(args), io);
    if (usage === undefined) fail(program, err);
    return usage;
  }
}

export async function main(argv = process.argv): Promise<void> {
  const code = await runPorthole(argv.slice(2));
  if (code !== undefined) process.exit(code);
}

if (require.main === module) {
  main().catch((err) => {
    process.stderr.write(`porthole: ${(err as Error).message}\n`);
    process.exit(EXIT.FAILED);
  });
}
