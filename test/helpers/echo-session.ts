import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { Session, Stream } from '@porthole/protocol';
import { Channel } from '@porthole/transport';

/**
 * A full protocol session over two channels: an echoing "agent" on `guest`, a
 * broker on `host` that sends `bytes` in `chunk`-sized messages and checks they
 * all come back in order. Both sessions are closed afterwards.
 */
export async function echoSessionCheck(host: Channel, guest: Channel, opts: { bytes: number; chunk: number; readyMs?: number }): Promise<void> {
  const agent = new Session(guest, {
    role: 'agent',
    hello: { softwareVersion: 't' },
    onStream: (s: Stream) => void (async () => {
      for await (const m of s) await s.send(m);
      s.end();
    })(),
  });
  const broker = new Session(host, { role: 'broker', hello: { softwareVersion: 't' }, keepaliveIntervalMs: 0 });
  try {
    await broker.ready(opts.readyMs ?? 5000);
    const s = broker.openStream({ info: {} });
    const data = randomBytes(opts.bytes);
    const back: Buffer[] = [];
    const reading = (async () => { for await (const m of s) back.push(Buffer.from(m.chunk!.data!)); })();
    for (let off = 0; off < data.length; off += opts.chunk) await s.send({ chunk: { data: data.subarray(off, off + opts.chunk) } });
    s.end();
    await reading;
    assert.ok(Buffer.concat(back).equals(data));
  } finally {
    broker.close();
    agent.close();
  }
}
