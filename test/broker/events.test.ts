import { strict as assert } from 'node:assert';
import { join } from 'node:path';
import { connect, PortholeClient } from '@porthole/broker';
import { PayloadWatcher } from '@porthole/agent';
import { v1 } from '@porthole/protocol';
import { Guest, startGuest } from './guest';

const S = v1.PayloadState;

describe('broker: agent events', function () {
  this.timeout(30000);
  let guest: Guest;
  let watcher: PayloadWatcher;
  let client: PortholeClient | undefined;

  beforeEach(async () => {
    guest = await startGuest();
    watcher = new PayloadWatcher(guest.agent, { sysBlock: join(guest.dir, 'no-drives') });
    watcher.start();
  });
  afterEach(async () => {
    client?.close();
    watcher.stop();
    await guest.stop();
  });

  it('an event sent right after the handshake (before connect() returned) reaches the first listener', async () => {
    // Reported before any broker connected: the agent sends it as soon as a session is up.
    watcher.report({ payloadId: 'at-boot', state: S.PAYLOAD_APPLIED, device: '/dev/sr0' });
    client = await connect(guest.target, { timeoutMs: 5000 });
    await client.ping(); // the event is on the wire before the pong
    const got: v1.PayloadEvent[] = [];
    client.on('event', (e: v1.Event) => got.push(e.payload as v1.PayloadEvent));
    await new Promise((r) => setImmediate(r));
    assert.deepEqual(got.map((e) => [e.payloadId, e.state]), [['at-boot', S.PAYLOAD_APPLIED]]);
    watcher.report({ payloadId: 'later', state: S.PAYLOAD_SKIPPED });
    for (let i = 0; i < 100 && got.length < 2; i++) await new Promise((r) => setTimeout(r, 10));
    assert.deepEqual(got.map((e) => e.payloadId), ['at-boot', 'later'], 'later events go straight to the listener, once');
  });
});
