// A child process of the scale bench: real agents, each serving a Unix socket as a VM's channel
// would (QEMU's chardev is such a socket), stand-ins for VMs FIRST..FIRST+COUNT-1 of one host.
//   node scale-agents.js DIR FIRST COUNT     prints "ready" once every socket exists
import { existsSync, mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { setTimeout as sleep } from 'node:timers/promises';
import { Agent, createAuditLogger, defaultConfig } from '@porthole/agent';
import { UnixSocketConnector } from '@porthole/transport';

/** The channel socket of stand-in VM `i`. */
export function standInSocket(dir: string, i: number): string {
  return join(dir, `vm-${i}.sock`);
}

async function main(dir: string, first: number, count: number): Promise<void> {
  // Audit lines are the agent's work too, but not this bench's subject: they go nowhere.
  const log = createAuditLogger({ silent: true, stream: new PassThrough().resume(), level: 'error' });
  const vms = Array.from({ length: count }, (_, i) => first + i);
  for (const i of vms) {
    const config = defaultConfig();
    config.transfers.stateDir = join(dir, 'state', String(i));
    config.payload.stateDir = join(dir, 'payloads', String(i));
    mkdirSync(config.transfers.stateDir, { recursive: true });
    const agent = new Agent({ connector: new UnixSocketConnector(standInSocket(dir, i), { listen: true }), config, log });
    void agent.run().catch((err: Error) => process.stderr.write(`agent ${i}: ${err.message}\n`));
  }
  for (const i of vms) {
    while (!existsSync(standInSocket(dir, i))) await sleep(10);
  }
  process.stdout.write('ready\n');
}

if (require.main === module) {
  const [dir, first, count] = process.argv.slice(2);
  void main(dir, Number(first), Number(count));
}
