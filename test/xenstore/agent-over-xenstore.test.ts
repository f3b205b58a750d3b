// What is particular to the xenstore channel under the agent (test/agent's
// file and exec suites also run over it, see TRANSPORTS): the real agent (in
// this process) as guest 5 of the test xenstored, a broker session as dom0.
import { strict as assert } from 'node:assert';
import { randomBytes } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { v1, PortholeError } from '@porthole/protocol';
import { XenstoreServer } from '@porthole/xenstore';
import { AgentHarness, startAgentHarness, xenstoreLink } from '../agent/harness';
import { exec, info, readFile, sha256, writeFile } from '../agent/client';

const DOMID = 5;
const E = v1.ErrorCode;
const b = (s: string) => Buffer.from(s);
const sh = (script: string): v1.ExecRequest.$Properties => ({ argv: [b('/bin/sh'), b('-c'), b(script)] });

describe('agent over the xenstore channel', function () {
  this.timeout(120000);
  let h: AgentHarness;
  let server: XenstoreServer;
  afterEach(async () => h.cleanup());

  async function start(tune: Parameters<typeof startAgentHarness>[0] = () => undefined) {
    h = await startAgentHarness(tune, async (dir) => {
      const link = await xenstoreLink(dir);
      server = link.server;
      return link;
    });
  }

  it('handshakes: the hello and info travel as xenstore keys', async () => {
    await start();
    assert.match(h.session.peerHello!.softwareVersion!, /^porthole-agent /);
    assert.ok(h.session.peerHello!.capabilities.includes(v1.Capability.CAPABILITY_FILE_WRITE));
    const i = await info(h.session);
    assert.equal(i.hello!.softwareVersion, h.session.peerHello!.softwareVersion);
    assert.deepEqual(server.node(`/local/domain/${DOMID}/data/porthole`)!.children.sort(), ['to-guest', 'to-host']);
  });

  it('injects 16 MiB (sha256-verified, owner and mode) and reads it back; the keys are all consumed', async () => {
    await start();
    const content = randomBytes(16 * 1024 * 1024);
    const path = join(h.root, 'big/file.bin');
    const t0 = Date.now();
    const result = await writeFile(h.session, { path: b(path), mkdirParents: true, mode: 0o600, hasMode: true, group: { numeric: 4242 } }, content);
    const writeMs = Date.now() - t0;
    assert.equal(result.sha256, sha256(content));
    assert.equal(Number(result.size), content.length);
    assert.deepEqual([statSync(path).mode & 0o7777, statSync(path).gid], [0o600, 4242]);
    assert.ok(readFileSync(path).equals(content));
    assert.deepEqual(readdirSync(join(h.root, 'big')), ['file.bin'], 'no temporary left');
    const back = await readFile(h.session, { path: b(path) });
    assert.equal(back.result.sha256, sha256(content));
    assert.ok(back.data.equals(content));
    // Readers delete what they consumed right after reading it.
    for (const dir of ['to-guest', 'to-host']) {
      const keys = () => server.node(`/local/domain/${DOMID}/data/porthole/${dir}`)!.children;
      for (let i = 0; i < 200 && keys().length; i++) await new Promise((r) => setTimeout(r, 10));
      assert.deepEqual(keys(), [], `${dir} still holds keys after the transfer`);
    }
    assert.ok(server.entries(DOMID) < 1000, 'the guest stayed inside its xenstore quota');
    console.log(`      16 MiB injected over xenstore in ${writeMs} ms (${(16 / (writeMs / 1000)).toFixed(1)} MiB/s)`);
  });

  it('refuses what the owner\'s policy forbids, naming the rule, and leaves nothing behind', async () => {
    await start((c, root) => {
      c.fileWrite.allow = [join(root, 'allowed')];
      c.exec.enabled = false;
    });
    mkdirSync(join(h.root, 'allowed'));
    await assert.rejects(writeFile(h.session, { path: b(join(h.root, 'elsewhere.txt')) }, b('x')), (e: PortholeError) =>
      e.code === E.ERROR_CODE_POLICY_DENIED && e.rule === `file_write.allow = [${join(h.root, 'allowed')}]`);
    await assert.rejects(exec(h.session, sh('true')), (e: PortholeError) => e.code === E.ERROR_CODE_POLICY_DENIED && e.rule === 'exec.enabled = false');
    assert.deepEqual(readdirSync(h.root), ['allowed']);
    writeFileSync(join(h.root, 'allowed/ok.txt'), '');
    await writeFile(h.session, { path: b(join(h.root, 'allowed/ok.txt')) }, b('fine'));
    assert.equal(readFileSync(join(h.root, 'allowed/ok.txt'), 'utf8'), 'fine');
  });

  it('a new broker connection over the same keys starts a new session; the agent serves it', async () => {
    await start();
    h.session.close();
    const session = await h.reconnect();
    const r = await exec(session, sh('echo again'));
    assert.equal(r.stdout.toString(), 'again\n');
  });
});
