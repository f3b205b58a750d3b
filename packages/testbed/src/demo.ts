// `npm start`: boot a throwaway VM with the agent, show the handshake, inject a
// file and read it back, stream a command's output live, shut the VM down.
import { createHash } from 'node:crypto';
import { connect, PortholeClient } from '@porthole/broker';
import { v1 } from '@porthole/protocol';
import { bootVm, Vm } from './vm';
import { agentBundlePath, agentExecutablePath } from './artifacts';

const bold = (s: string) => (process.stdout.isTTY ? `\x1b[1m${s}\x1b[0m` : s);
const started = Date.now();
const stamp = () => `[${((Date.now() - started) / 1000).toFixed(1).padStart(5)}s]`;
const say = (s: string) => console.log(`${stamp()} ${s}`);

async function demo(vm: Vm, client: PortholeClient): Promise<void> {
  const h = client.hello!;
  const caps = h.capabilities.map((c) => String(v1.Capability[c]).replace('CAPABILITY_', '').toLowerCase());
  say(bold('handshake'));
  console.log(`         agent ${h.softwareVersion}, protocol v${h.protocolVersion}, guest ${h.hostname} ${h.os}/${h.arch} kernel ${h.kernel}`);
  console.log(`         capabilities: ${caps.join(', ')}`);

  say(bold('inject /srv/demo/hello.txt (owner tester:users, mode 0640, parents created)'));
  const content = Buffer.from(`Hello from the host, ${new Date().toISOString()}\n`);
  const r = await client.installFile(content, { path: '/srv/demo/hello.txt', owner: 'tester', group: 'users', mode: 0o640, mkdir: true }).result;
  console.log(`         written: ${r.size} bytes, uid ${r.uid} gid ${r.gid} mode 0${r.mode.toString(8)}, sha256 ${r.sha256}`);
  const read = client.readFile('/srv/demo/hello.txt');
  const parts: Buffer[] = [];
  read.data.on('data', (d: Buffer) => parts.push(d));
  const back = await read.result;
  const local = createHash('sha256').update(content).digest('hex');
  console.log(`         read back: sha256 ${back.sha256} ${back.sha256 === local ? '(matches what was sent)' : '(MISMATCH)'}`);

  say(bold('exec: output streams while the command runs'));
  const task = client.exec({ shell: 'for i in 1 2 3; do echo "line $i from $(hostname), $(date +%T)"; sleep 1; done; echo "to stderr" >&2; exit 0' });
  task.stdout.on('data', (d: Buffer) => d.toString().trimEnd().split('\n').forEach((l) => say(`  stdout | ${l}`)));
  task.stderr.on('data', (d: Buffer) => d.toString().trimEnd().split('\n').forEach((l) => say(`  stderr | ${l}`)));
  const exit = await task.exit;
  say(`exit code ${exit.code} after ${exit.durationMs} ms`);
  void vm;
}

async function main(): Promise<void> {
  const exe = agentExecutablePath();
  say(bold(`booting a throwaway VM (QEMU, TCG) with the Porthole agent${exe ? ' (single executable)' : ''}`));
  const ticker = setInterval(() => process.stdout.write(`${stamp()} booting...\r`), 1000);
  let vm: Vm | undefined;
  let client: PortholeClient | undefined;
  try {
    vm = await bootVm({ agent: exe ? { executable: exe } : { bundle: agentBundlePath() }, log: (m) => { process.stdout.write('\x1b[2K'); say(m); } });
    clearInterval(ticker);
    say(`VM up; channel ${vm.target}`);
    client = await connect(vm.target, { timeoutMs: 90000 });
    await demo(vm, client);
  } catch (err) {
    clearInterval(ticker);
    console.error(`demo failed: ${(err as Error).message}`);
    if (vm) console.error(vm.consoleTail(30));
    process.exitCode = 1;
  } finally {
    client?.close();
    if (vm) {
      say('shutting the VM down');
      await vm.shutdown();
    }
    say('done');
  }
}

void main();
