import { strict as assert } from 'node:assert';
import { mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
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

  it('appends its lines to a log file, creating its directory; a line the disk refuses is dropped, not fatal', async () => {
    const dir = mkdtempSync(join(tmpdir(), 'porthole-audit-'));
    try {
      const file = join(dir, 'sub', 'audit.log');
      const first = createAuditLogger({ silent: false, file, level: 'info' });
      first.remove(first.transports[0]); // the console's line is not this test's
      first.info('one', { request: 'info' });
      first.close();
      writeFileSync(file, 'kept\n', { flag: 'a' });
      const second = createAuditLogger({ file });
      second.remove(second.transports[0]);
      second.info('two', { request: 'exec', exitCode: 0 });
      await new Promise((r) => setImmediate(r));
      const lines = readFileSync(file, 'utf8').split('\n');
      assert.equal(lines.length, 4);
      assert.equal(JSON.parse(lines[0]).message, 'one');
      assert.equal(lines[1], 'kept');
      assert.deepEqual([JSON.parse(lines[2]).message, JSON.parse(lines[2]).exitCode], ['two', 0]);
      assert.equal(lines[3], '');
      // /dev/full refuses every write with ENOSPC, as a full disk does.
      const full = createAuditLogger({ file: '/dev/full' });
      full.remove(full.transports[0]);
      let errors = 0;
      full.on('error', () => errors++);
      for (let i = 0; i < 3; i++) full.info('lost', { request: 'info' });
      await new Promise((r) => setImmediate(r));
      assert.equal(errors, 0);
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
