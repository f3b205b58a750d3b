import { Command, CommanderError, Option } from 'commander';
import { createWriteStream, readFileSync } from 'node:fs';
import { constants as osConstants } from 'node:os';
import { v1, PortholeError, errorCodeName } from '@porthole/protocol';
import { connect, describeError, PortholeClient } from './client';
import { parseManifest } from './manifest';
import { registerServeCommand } from './serve/command';
import { BROKER_VERSION } from './version';

/** Exit codes of `porthole` (besides a remote command's own code for `exec`). */
export const EXIT = {
  OK: 0,
  FAILED: 1,
  USAGE: 2,
  UNREACHABLE: 3,
  POLICY: 4,
  TIMEOUT: 124,
  INTERRUPTED: 130,
} as const;

const E = v1.ErrorCode;

function exitCodeFor(err: unknown): number {
  const e = err instanceof PortholeError ? err : undefined;
  if (!e) return EXIT.FAILED;
  if (e.code === E.ERROR_CODE_POLICY_DENIED) return EXIT.POLICY;
  if (e.code === E.ERROR_CODE_PROTOCOL || e.code === E.ERROR_CODE_TIMEOUT || e.code === E.ERROR_CODE_NOT_FOUND && /socket|listening|agent answered/.test(e.message)) {
    return EXIT.UNREACHABLE;
  }
  return EXIT.FAILED;
}

interface Globals {
  json?: boolean;
  timeout: string;
}

function fail(program: Command, err: unknown): never {
  const json = program.opts<Globals>().json;
  const e = PortholeError.from(err);
  const code = exitCodeFor(e);
  if (json) process.stdout.write(JSON.stringify({ ok: false, error: { code: errorCodeName(e.code), message: describeError(e), rule: e.rule } }) + '\n');
  else process.stderr.write(`porthole: ${describeError(e)}\n`);
  process.exit(code);
}

async function client(program: Command, target: string): Promise<PortholeClient> {
  return connect(target, { timeoutMs: Number(program.opts<Globals>().timeout) * 1000 });
}

/** target:/path → [target, path]; targets themselves contain a colon (unix:/x.sock:/etc/motd). */
function splitRemote(spec: string): { target: string; path: string } | undefined {
  const m = /^((?:unix|libvirt|serial|xen):[^:]+):(\/.*)$/.exec(spec);
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
    },
  };
}

export function buildProgram(): Command {
  const program = new Command('porthole')
    .description('Porthole: put files into VMs and run commands in them over virtio-serial, serial or xenstore — no guest network needed')
    .version(BROKER_VERSION, '--version')
    .option('--json', 'machine-readable output (one JSON object per result)')
    .option('--timeout <seconds>', 'how long to wait for the VM\'s agent', '10')
    .showHelpAfterError()
    .addHelpText('after', `
Targets: unix:/path/to/chardev.sock (QEMU), libvirt:DOMAIN, serial:/dev/ttyS1, xen:DOMID

Examples:
  porthole info unix:/run/vm1/porthole.sock
  porthole exec libvirt:web1 -- uname -a
  porthole cp ./app.conf unix:/run/vm1.sock:/etc/app/app.conf --owner root --group app --mode 0640 --mkdir
  porthole cp unix:/run/vm1.sock:/var/log/syslog ./syslog
  porthole inject libvirt:web1 user-data.yaml        # cloud-init write_files
  porthole serve --listen tcp:127.0.0.1:8750 --token-file /etc/porthole/broker.token

Exit codes: 0 ok; 1 failed (the reason is printed); 2 usage; 3 VM or agent unreachable (no socket, no answer, version
mismatch); 4 refused by the guest owner's policy; exec: the command's own code, 128+N for signal N, 124 on
--command-timeout, 130 when interrupted.`);

  program.command('info').argument('<target>').description('agent version, OS, enabled capabilities and policy limits')
    .action(async (target: string) => {
      try {
        const c = await client(program, target);
        const info = await c.info();
        const h = hello(info.hello);
        output(program, { ok: true, ...h, protocol: c.hello?.protocolVersion, uptimeMs: Number(info.uptimeMs), activeExecs: info.activeExecs },
          [`agent:        ${h.agent} (protocol v${c.hello?.protocolVersion})`, `guest:        ${h.hostname} ${h.os}/${h.arch} ${h.kernel}`,
            `capabilities: ${h.capabilities.join(', ') || 'none'}`, `write allow:  ${h.limits.writeAllow.join(', ')}  deny: ${h.limits.writeDeny.join(', ') || '-'}`,
            `read allow:   ${h.limits.readAllow.join(', ')}  deny: ${h.limits.readDeny.join(', ') || '-'}`,
            `exec:         users ${h.limits.execUsers.join(', ') || 'any'}; commands ${h.limits.execCommands.join(', ') || 'any'}; max concurrent ${h.limits.maxConcurrentExecs || 'unlimited'}`].join('\n'));
        c.close();
      } catch (err) {
        fail(program, err);
      }
    });

  program.command('ping').argument('<target>').description('round trip to the agent')
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
    .option('-t, --command-timeout <seconds>', 'kill the command (its whole process group) after this long')
    .action(async (target: string, command: string[], o: { stdin?: boolean; shell?: boolean; powershell?: boolean; user?: string; group?: string; cwd?: string; env?: string[]; commandTimeout?: string }) => {
      let c: PortholeClient;
      try {
        c = await client(program, target);
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
        await new Promise((r) => process.stdout.write('', r));
        if (program.opts<Globals>().json) process.stderr.write(JSON.stringify({ ok: true, ...exit }) + '\n');
        c.close();
        if (exit.timedOut) process.exit(EXIT.TIMEOUT);
        if (interrupted) process.exit(EXIT.INTERRUPTED);
        if (exit.signal) process.exit(128 + ((osConstants.signals as Record<string, number>)[exit.signal] ?? 0));
        process.exit(exit.code ?? EXIT.FAILED);
      } catch (err) {
        // With stdin closed, a cancel can only reset the command's stream: it ends without a status.
        if (interrupted) process.exit(EXIT.INTERRUPTED);
        fail(program, err);
      }
    });

  program.command('cp').argument('<source>').argument('<destination>')
    .description('copy a local file into the guest (LOCAL TARGET:/path) or out of it (TARGET:/path LOCAL); "-" is stdin/stdout')
    .option('--owner <user>').option('--group <group>').option('--mode <octal>').option('--mkdir', 'create missing parent directories')
    .option('--no-progress', 'no progress bar')
    .action(async (source: string, destination: string, o: { owner?: string; group?: string; mode?: string; mkdir?: boolean; progress: boolean }) => {
      const into = splitRemote(destination);
      const from = splitRemote(source);
      if (!into === !from) {
        process.stderr.write('porthole: exactly one of SOURCE and DESTINATION must be TARGET:/path\n');
        process.exit(EXIT.USAGE);
      }
      try {
        if (into) {
          if (o.mode && !/^0?[0-7]{3,4}$/.test(o.mode)) throw new PortholeError(E.ERROR_CODE_INVALID_ARGUMENT, `--mode must be octal like 0644, got ${o.mode}`);
          const c = await client(program, into.target);
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
          const c = await client(program, from!.target);
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

  program.command('inject').argument('<target>').argument('<manifest>')
    .description('apply many files at once: cloud-init write_files (YAML/JSON) or {"/path": "base64"}')
    .action(async (target: string, manifestPath: string) => {
      let files;
      try {
        files = parseManifest(readFileSync(manifestPath === '-' ? 0 : manifestPath, 'utf8'));
      } catch (err) {
        process.stderr.write(`porthole: ${manifestPath}: ${(err as Error).message}\n`);
        process.exit(EXIT.USAGE);
      }
      try {
        const c = await client(program, target);
        const results = [];
        for (const f of files) {
          const r = await c.installFile(f.content, { path: f.path, owner: f.owner, group: f.group, mode: f.mode, mkdir: true, overwrite: f.append ? 'append' : 'replace' }).result;
          results.push({ path: f.path, size: r.size, sha256: r.sha256, uid: r.uid, gid: r.gid, mode: `0${r.mode.toString(8)}` });
          if (!program.opts<Globals>().json) process.stdout.write(`${f.path}: ${r.size} bytes, sha256 ${r.sha256}\n`);
        }
        if (program.opts<Globals>().json) process.stdout.write(JSON.stringify({ ok: true, files: results }) + '\n');
        c.close();
      } catch (err) {
        fail(program, err);
      }
    });

  registerServeCommand(program, EXIT);
  mountPluginCommands(program);
  program.addOption(new Option('--debug').hideHelp());
  return program;
}

/** Commands other packages provide (boot from https ISO, payload media, image transfer). */
function mountPluginCommands(program: Command): void {
  // eslint-disable-next-line @typescript-eslint/no-require-imports
  const plugins: Array<[string, string]> = [['@porthole/bootiso', 'registerBootIsoCommand'], ['@porthole/media', 'registerPayloadCommands'], ['@porthole/images', 'registerImageCommands']];
  for (const [pkg, fn] of plugins) {
    // eslint-disable-next-line @typescript-eslint/no-require-imports
    const register = (require(pkg) as Record<string, unknown>)[fn];
    if (typeof register === 'function') (register as (p: Command) => void)(program);
  }
}

export async function main(argv = process.argv): Promise<void> {
  const program = buildProgram();
  program.exitOverride((err: CommanderError) => {
    process.exit(err.exitCode === 0 ? 0 : EXIT.USAGE);
  });
  await program.parseAsync(argv);
}

if (require.main === module) {
  main().catch((err) => {
    process.stderr.write(`porthole: ${(err as Error).message}\n`);
    process.exit(EXIT.FAILED);
  });
}
