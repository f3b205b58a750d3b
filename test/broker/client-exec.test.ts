import { strict as assert } from 'node:assert';
import { createHash, randomBytes } from 'node:crypto';
import { connect, PortholeClient } from '@porthole/broker';
import { Guest, startGuest } from './guest';

describe('broker: the client library runs commands', function () {
  this.timeout(30000);
  let guest: Guest;
  let client: PortholeClient;
  before(async () => {
    guest = await startGuest();
    client = await connect(guest.target, { timeoutMs: 5000 });
  });
  after(async () => {
    client?.close();
    await guest.stop();
  });

  it('takes a stdin write larger than the agent\'s stream window in one piece', async () => {
    const data = randomBytes(1024 * 1024 + 5); // one write; the window is 256 KiB
    const task = client.exec(['sha256sum'], { stdin: true });
    const out: Buffer[] = [];
    task.stdout.on('data', (b: Buffer) => out.push(b));
    task.stdin.end(data);
    const exit = await task.exit;
    assert.equal(exit.code, 0);
    assert.equal(Buffer.concat(out).toString().split(' ')[0], createHash('sha256').update(data).digest('hex'));
  });
});
