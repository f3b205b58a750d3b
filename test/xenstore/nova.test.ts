// Nova-style requests (data/host/<id> → data/guest/<id>) served by the agent's
// NovaRequests against the test xenstored, with dom0 writing requests and never
// reading the replies, as Nova's plugin leaves them.
import { strict as assert } from 'node:assert';
import { randomUUID } from 'node:crypto';
import { rmSync } from 'node:fs';
import { PassThrough } from 'node:stream';
import { Agent, NovaRequests, createAuditLogger } from '@porthole/agent';
import { XenstoreClient } from '@porthole/xenstore';
import { Fixture, startServer } from './server-fixture';
import { agentTestConfig } from '../agent/harness';

const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms));
const dom = '/local/domain/5';

describe('Nova-compatible requests when data/guest fills up', function () {
  this.timeout(60000);
  let fx: Fixture;
  let dom0: XenstoreClient;
  let nova: NovaRequests;
  let dir: string;
  const lines: Array<Record<string, unknown>> = [];

  beforeEach(async () => {
    fx = await startServer();
    dom0 = await fx.dom0();
    const t = agentTestConfig('porthole-nova-', () => undefined);
    dir = t.dir;
    const out = new PassThrough();
    out.on('data', (b: Buffer) => { for (const l of b.toString().split('\n').filter(Boolean)) lines.push(JSON.parse(l) as Record<string, unknown>); });
    const agent = new Agent({ connector: { description: 'unused', connect: () => new Promise(() => undefined) }, config: t.config, log: createAuditLogger({ silent: true, stream: out }) });
    nova = new NovaRequests({ path: fx.guestSocket, agent, replyTtlMs: 2000 });
    nova.apply(true);
  });
  afterEach(async () => {
    nova.stop();
    lines.length = 0;
    await fx.cleanup();
    rmSync(dir, { recursive: true, force: true });
  });

  const children = (path: string) => fx.server.node(`${dom}/${path}`)?.children ?? [];

  it('no request is consumed without its reply: past the room for replies they wait in data/host, and are answered once old replies are cleared', async () => {
    const ids = Array.from({ length: 80 }, () => randomUUID());
    for (const id of ids) await dom0.write(`${dom}/data/host/${id}`, '{"name": "version", "value": ""}');
    const answered = new Set<string>();
    const deadline = Date.now() + 30000;
    while (answered.size < ids.length && Date.now() < deadline) {
      const replies = new Set(children('data/guest'));
      const waiting = new Set(children('data/host'));
      for (const id of replies) answered.add(id);
      const lost = ids.filter((id) => !replies.has(id) && !waiting.has(id) && !answered.has(id));
      assert.deepEqual(lost, [], 'requests taken without a reply');
      await sleep(50);
    }
    assert.equal(answered.size, ids.length, 'every request was answered in the end');
    assert.ok(lines.some((l) => /reply cannot be written yet/.test(String(l.message))), 'the wait is logged');
  });

  it('a request id too long for a reply path is removed and reported; one too long to read is reported once', async () => {
    const answerable = randomUUID();
    const tooLongForReply = 'x'.repeat(2048 - 'data/host/'.length); // data/guest/<id> is one character over
    const tooLongToRead = 'y'.repeat(2100);
    for (const id of [tooLongForReply, tooLongToRead, answerable]) await dom0.write(`${dom}/data/host/${id}`, '{"name": "version", "value": ""}');
    for (let i = 0; i < 100 && !children('data/guest').includes(answerable); i++) await sleep(50);
    assert.ok(children('data/guest').includes(answerable), 'the others are served');
    for (let i = 0; i < 100 && children('data/host').includes(tooLongForReply); i++) await sleep(50);
    assert.ok(!children('data/host').includes(tooLongForReply), 'removed');
    assert.ok(lines.some((l) => /request removed: its id is too long for a reply/.test(String(l.message))));
    await sleep(2500);
    const unreadable = lines.filter((l) => /cannot read or remove/.test(String(l.message)));
    assert.equal(unreadable.length, 1, 'reported once');
    assert.equal(unreadable[0].idLength, 2100);
  });
});
