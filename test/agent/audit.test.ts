import { strict as assert } from 'node:assert';
import { PassThrough } from 'node:stream';
import { createAuditLogger } from '@porthole/agent';

describe('agent: the audit log', () => {
  async function lines(write: (log: ReturnType<typeof createAuditLogger>) => void): Promise<string[]> {
    const stream = new PassThrough();
    let text = '';
    stream.on('data', (b: Buffer) => { text += b.toString(); });
    const log = createAuditLogger({ silent: true, stream });
    write(log);
    await new Promise((r) => setImmediate(r));
    return text.split('\n').filter(Boolean);
  }

  it('writes one JSON object per line, with its metadata, level, service and time', async () => {
    const [line] = await lines((log) => log.info('request done', { request: 'exec', argv: ['/bin/true'], exitCode: 0 }));
    const o = JSON.parse(line);
    assert.deepEqual({ ...o, timestamp: typeof o.timestamp }, {
      message: 'request done', level: 'info', request: 'exec', argv: ['/bin/true'], exitCode: 0, service: 'porthole-agent', timestamp: 'string',
    });
    assert.ok(!Number.isNaN(Date.parse(o.timestamp)));
  });

  it('still writes a line for metadata JSON.stringify refuses (a cycle, a BigInt)', async () => {
    const cyclic: Record<string, unknown> = { name: 'loop' };
    cyclic.self = cyclic;
    const out = await lines((log) => {
      log.warn('odd metadata', { cyclic });
      log.warn('big', { size: 2n ** 70n });
    });
    assert.equal(out.length, 2);
    assert.equal(JSON.parse(out[0]).cyclic.self, '[Circular]');
    assert.equal(JSON.parse(out[1]).size, '1180591620717411303424');
  });
});
