// Wine for the Windows tests: one prefix per test run (creating one takes ~30 s), the agent
// executable built when missing or older than the agent bundle, and the agent's files laid out
// in the prefix as the MSI installs them. Processes started here are ended by their ids, and the
// prefix's own wineserver is stopped at the end (it serves this prefix only).
import { execFileSync, spawn, ChildProcess } from 'node:child_process';
import { createHash } from 'node:crypto';
import { closeSync, existsSync, mkdtempSync, openSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { createServer } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

const root = join(__dirname, '..', '..');
export const AGENT_EXE = join(root, 'packages/agent/dist/porthole-agent.exe');
const BUNDLE = join(root, 'packages/agent/dist/porthole-agent.bundle.cjs');

/** porthole-agent.exe for the current bundle: built (npm run build:exe) when missing or made from another bundle. */
export function agentExe(): string {
  const bundleSha = createHash('sha256').update(readFileSync(BUNDLE)).digest('hex');
  const stamp = `${AGENT_EXE}.bundle-sha256`;
  if (!existsSync(AGENT_EXE) || !existsSync(stamp) || readFileSync(stamp, 'utf8') !== bundleSha) {
    execFileSync(process.execPath, [join(root, 'packages/agent/scripts/sea-windows.mjs'), '--bundle', BUNDLE], { stdio: 'inherit' });
    writeFileSync(stamp, bundleSha);
  }
  return AGENT_EXE;
}

export interface Wine {
  prefix: string;
  env: NodeJS.ProcessEnv;
  /** A C:\ path as Linux sees it. */
  linuxPath(windowsPath: string): string;
  run(args: string[], timeoutMs?: number): Promise<{ stdout: string; stderr: string }>;
}

let shared: Promise<Wine> | undefined;

/** The run's Wine prefix, in Windows 10 mode (node.exe 22 refuses older Windows). */
export function wine(): Promise<Wine> {
  shared ??= (async () => {
    const prefix = mkdtempSync(join(tmpdir(), 'porthole-wine-'));
    // mscoree/mshtml off: no prompt to fetch Mono or Gecko (nothing here needs them).
    const env = { ...process.env, WINEPREFIX: prefix, WINEDEBUG: '-all', WINEDLLOVERRIDES: 'mscoree,mshtml=' };
    let runs = 0;
    // Output goes to files, not pipes: the first Wine process of a session starts services.exe
    // (and through it every service) with its own stdio, which would keep a pipe open for good.
    const run = async (args: string[], timeoutMs = 120_000) => {
      const n = ++runs;
      const [out, err] = [join(prefix, `run-${n}.out`), join(prefix, `run-${n}.err`)];
      const [outFd, errFd] = [openSync(out, 'w'), openSync(err, 'w')];
      const child = spawn('wine', args, { env, stdio: ['ignore', outFd, errFd] });
      closeSync(outFd);
      closeSync(errFd);
      const timer = setTimeout(() => child.kill(), timeoutMs);
      const [code, signal] = (await once(child, 'exit')) as [number | null, string | null];
      clearTimeout(timer);
      const [stdout, stderr] = [readFileSync(out, 'utf8'), readFileSync(err, 'utf8')];
      if (code !== 0) throw new Error(`wine ${args.join(' ')}: ${signal ? `killed (${signal}) after ${timeoutMs} ms` : `exit ${code}`}: ${stderr || stdout}`);
      return { stdout, stderr };
    };
    await run(['wineboot', '-i'], 180_000);
    await run(['reg', 'add', 'HKLM\\Software\\Microsoft\\Windows NT\\CurrentVersion', '/v', 'CurrentVersion', '/d', '10.0', '/f']);
    await run(['winecfg', '-v', 'win10']);
    const linuxPath = (p: string) => join(prefix, 'drive_c', ...p.replace(/^C:\\/i, '').split('\\'));
    process.once('exit', () => {
      try {
        execFileSync('wineserver', ['-k'], { env, stdio: 'ignore', timeout: 20_000 });
      } catch {
        // already gone
      }
      rmSync(prefix, { recursive: true, force: true });
    });
    return { prefix, env, linuxPath, run };
  })();
  return shared;
}

/** The agent's files in C:\Program Files\Porthole as the MSI installs them (build-msi.mjs --layout): koffi and serialport beside the executable. */
export function installAgentFiles(w: Wine, dir = 'C:\\Program Files\\Porthole'): string {
  execFileSync(process.execPath, [join(root, 'installers/windows/build-msi.mjs'), '--layout', w.linuxPath(dir), '--exe', agentExe()], { stdio: 'inherit' });
  return `${dir}\\porthole-agent.exe`;
}

/** A TCP port nobody listens on now. */
export function freePort(): Promise<number> {
  return new Promise((resolve, reject) => {
    const server = createServer();
    server.listen(0, '127.0.0.1', () => {
      const { port } = server.address() as { port: number };
      server.close(() => resolve(port));
    });
    server.on('error', reject);
  });
}

/**
 * A Windows program under Wine. node.exe cannot write to a Linux pipe (EBADF at its first
 * console.log), so its stdout and stderr go to a file.
 */
export function startWindowsProgram(w: Wine, args: string[], output: string): ChildProcess {
  const fd = openSync(output, 'a');
  return spawn('wine', args, { env: w.env, stdio: ['ignore', fd, fd] });
}
