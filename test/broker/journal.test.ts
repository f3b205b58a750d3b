import { strict as assert } from 'node:assert';
import { appendFileSync, mkdirSync, mkdtempSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { TaskJournal, TaskRecord } from '@porthole/broker';

const task = (id: string, extra: Partial<TaskRecord> = {}): TaskRecord => ({
  id, target: 'unix:/run/vm1.sock', kind: 'exec', params: { argv: ['true'], envNames: ['TOKEN'] }, status: 'running',
  createdAt: new Date().toISOString(), outputBytes: 0, outputRetainedFrom: 0, ...extra,
});

describe('broker: task journal', () => {
  let dir: string;
  let path: string;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'porthole-journal-'));
    path = join(dir, 'sub', 'journal.bin');
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  it('reads back tasks, their last status and their output after a reopen; a running task reads back as interrupted', () => {
    const j = new TaskJournal(path);
    j.create(task('a'));
    j.appendOutput('a', 'stdout', Buffer.from('hello '));
    j.appendOutput('a', 'stderr', Buffer.from([0xff, 0x00, 0x80]));
    j.update('a', { status: 'done', result: { code: 0 } });
    j.create(task('b'));
    j.appendOutput('b', 'stdout', Buffer.from('partial'));
    j.close();
    assert.equal(statSync(path).mode & 0o777, 0o600);

    const again = new TaskJournal(path);
    assert.deepEqual(again.list().map((t) => t.id), ['b', 'a'], 'newest first');
    const a = again.get('a')!;
    assert.equal(a.status, 'done');
    assert.deepEqual(a.result, { code: 0 });
    assert.equal(a.outputBytes, 9);
    assert.deepEqual(again.output('a', 0).map((c) => [c.fd, c.offset, c.data.toString('hex')]), [['stdout', 0, Buffer.from('hello ').toString('hex')], ['stderr', 6, 'ff0080']]);
    assert.deepEqual(again.output('a', 8).map((c) => [c.offset, c.data.toString('hex')]), [[8, '80']], 'replay from inside a chunk');
    const b = again.get('b')!;
    assert.equal(b.status, 'interrupted');
    assert.equal(b.error?.code, 'INTERRUPTED');
    assert.equal(again.output('b', 0)[0].data.toString(), 'partial');
    again.close();
  });

  it('drops a record torn by a crash and keeps everything before it', () => {
    const j = new TaskJournal(path);
    j.create(task('a'));
    j.update('a', { status: 'failed', error: { code: 'POLICY_DENIED', message: 'disabled by the guest\'s owner: exec' } });
    j.close();
    new TaskJournal(path).close(); // compacted: one record of the task
    const whole = statSync(path).size;
    // Half a record: a length that promises more than the file holds.
    appendFileSync(path, Buffer.from([0, 0, 1, 0, 0x82, 0xa1]));
    const again = new TaskJournal(path);
    assert.equal(again.get('a')?.status, 'failed');
    assert.equal(again.get('a')?.error?.code, 'POLICY_DENIED');
    assert.equal(statSync(path).size, whole, 'the torn tail is gone after the compaction at open');
    again.create(task('c'));
    again.close();
    assert.deepEqual(new TaskJournal(path).list().map((t) => t.id), ['c', 'a']);
  });

  it('keeps only the newest output up to the retention limit and says where the retained output starts', () => {
    const j = new TaskJournal(path, { outputRetention: 1000 });
    j.create(task('a'));
    for (let i = 0; i < 10; i++) j.appendOutput('a', 'stdout', Buffer.alloc(300, 48 + i));
    const t = j.get('a')!;
    assert.equal(t.outputBytes, 3000);
    assert.equal(t.outputRetainedFrom, 2000, 'the newest 1000 bytes are kept');
    assert.deepEqual(j.output('a', 0).map((c) => [c.offset, c.data.length, c.data[0]]), [[2000, 100, 54], [2100, 300, 55], [2400, 300, 56], [2700, 300, 57]]);
    j.close();
    const again = new TaskJournal(path, { outputRetention: 1000 });
    assert.equal(again.get('a')!.outputRetainedFrom, 2000);
    assert.equal(again.get('a')!.outputBytes, 3000);
    assert.equal(Buffer.concat(again.output('a', 2950).map((c) => c.data)).toString(), '9'.repeat(50));
  });

  it('compacts: the file stays bounded however much output passes through it', () => {
    const j = new TaskJournal(path, { outputRetention: 64 * 1024, compactSlack: 256 * 1024 });
    j.create(task('a'));
    const piece = Buffer.alloc(16 * 1024, 7);
    for (let i = 0; i < 1000; i++) j.appendOutput('a', 'stdout', piece); // 16 MiB through the journal
    j.update('a', { status: 'done' });
    const size = statSync(path).size;
    assert.ok(size < 2 * 64 * 1024 + 256 * 1024 + 32 * 1024, `journal is ${size} bytes`);
    j.close();
    const again = new TaskJournal(path, { outputRetention: 64 * 1024 });
    assert.equal(again.get('a')!.outputBytes, 16 * 1024 * 1000);
    assert.equal(again.get('a')!.status, 'done');
    assert.equal(Buffer.concat(again.output('a', 0).map((c) => c.data)).length, 64 * 1024);
  });

  it('forgets the oldest finished tasks beyond maxTasks, never a running one', () => {
    const j = new TaskJournal(path, { maxTasks: 3 });
    j.create(task('running-1'));
    for (const id of ['d1', 'd2', 'd3', 'd4']) {
      j.create(task(id));
      j.update(id, { status: 'done' });
    }
    assert.deepEqual(j.list().map((t) => t.id), ['d4', 'd3', 'running-1']);
    j.close();
    assert.deepEqual(new TaskJournal(path, { maxTasks: 3 }).list().map((t) => t.id), ['d4', 'd3', 'running-1']);
  });

  it('names the file when it cannot be read', () => {
    mkdirSync(path, { recursive: true });
    assert.throws(() => new TaskJournal(path), (e: Error) => e.message.includes(`cannot read the task journal ${path}`) && /EISDIR/.test(e.message));
  });
});
