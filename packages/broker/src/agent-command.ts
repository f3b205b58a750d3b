// `porthole agent install`: see agent-install.ts.
import { Command } from 'commander';
import { existsSync } from 'node:fs';
import { join } from 'node:path';
import { installAgent } from './agent-install';

type Fail = (program: Command, err: unknown) => never;
type Output = (program: Command, value: unknown, human: string) => void;

/** The agent's single executable of this checkout, when built (npm run build). */
function builtAgent(): string | undefined {
  const exe = join(__dirname, '..', '..', 'agent', 'dist', 'porthole-agent');
  return existsSync(exe) ? exe : undefined;
}

export function registerAgentCommands(program: Command, fail: Fail, output: Output): void {
  const agent = program.command('agent').description('the Porthole agent in a VM that has only qemu-guest-agent')
    .addHelpText('after', `
Examples:
  porthole agent install libvirt:web1 --executable ./porthole-agent
  porthole agent install qga:/run/vm1/qga.sock --qmp /run/vm1/qmp.sock`);
  agent.command('install').argument('<target>', 'qga:/path/to/qga.sock (plain QEMU, with --qmp) or libvirt:[URI/]DOMAIN')
    .description('hot-plug the Porthole port into the running VM, install and start the agent through qemu-guest-agent; no reboot')
    .option('--qmp <socket>', 'plain QEMU: the VM\'s QMP socket')
    .option('--socket <path>', 'plain QEMU: the new port\'s socket (default: porthole-agent.sock beside the qga socket)')
    .option('--deb <file>', 'the agent .deb (npm run package:deb), used when the guest has dpkg')
    .option('--executable <file>', 'the agent\'s single executable, used otherwise (default: this build\'s, when there)')
    .addHelpText('after', `
Idempotent: a second run upgrades the agent, or says it is current.
Refused (exit 4) when qemu-ga's --block-rpcs disables guest-exec or guest-file-*.

Examples:
  porthole agent install libvirt:web1 --deb porthole-agent_0.1.0_amd64.deb --executable porthole-agent
  porthole agent install qga:/run/vm1/qga.sock --qmp /run/vm1/qmp.sock --executable ./porthole-agent`)
    .action(async (target: string, o: { qmp?: string; socket?: string; deb?: string; executable?: string }) => {
      const json = program.opts<{ json?: boolean }>().json;
      const timeout = Number(program.opts<{ timeout: string }>().timeout);
      try {
        const r = await installAgent({
          target, qmp: o.qmp, socket: o.socket, deb: o.deb, executable: o.executable ?? (o.deb ? undefined : builtAgent()),
          timeoutMs: Math.max(60, timeout) * 1000, progress: json ? undefined : (step) => process.stderr.write(`porthole: ${step}\n`),
        });
        output(program, { ok: true, ...r },
          `${r.action === 'current' ? 'porthole-agent is current' : `porthole-agent ${r.action}`}: ${r.agent} (${r.method}) on ${r.portholeTarget}` +
          `${r.previousAgent && r.action !== 'current' ? `, was ${r.previousAgent}` : ''}; ${r.qemuGuestAgent}${r.hotplugged ? '; port hot-plugged' : ''}`);
      } catch (err) {
        fail(program, err);
      }
    });
}
