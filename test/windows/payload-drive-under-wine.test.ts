// Payload media on Windows under Wine: the broker's payload ISO in a CD drive letter, found by
// porthole-agent.exe by its volume label (GetDriveTypeW, GetVolumeInformationW) and applied.
// The CD is in the drive when the agent starts: Wine cannot insert one later (see below).
// Wine cannot read an ISO image itself: the image's files are extracted into a directory that
// Wine serves as drive P: (a CD-ROM drive by HKLM\Software\Wine\Drives), with the image's own
// volume id in .windows-label, where Wine reads a Unix directory's label from.
import { strict as assert } from 'node:assert';
import { ChildProcess, execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { closeSync, existsSync, mkdirSync, openSync, readFileSync, readSync, symlinkSync, writeFileSync } from 'node:fs';
import { once } from 'node:events';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { connect, PortholeClient } from '@porthole/broker';
import { buildIsoPayload } from '@porthole/media';
import { v1 } from '@porthole/protocol';
import { freePort, installAgentFiles, startWindowsProgram, wine, Wine } from './wine';

const sha256 = (b: Buffer) => createHash('sha256').update(b).digest('hex');

const CONFIG = `
[file_write]
allow = ["C:\\\\pl-test\\\\out"]
[exec]
enabled = true
[payload]
state_dir = "C:\\\\pl-test\\\\payloads"
[log]
file = "C:\\\\pl-test\\\\agent.log"
`;

/** The ISO 9660 volume id (primary volume descriptor, sector 16), as the image holds it. */
function isoVolumeId(iso: string): string {
  const pvd = Buffer.alloc(2048);
  const fd = openSync(iso, 'r');
  try {
    readSync(fd, pvd, 0, pvd.length, 16 * 2048);
  } finally {
    closeSync(fd);
  }
  assert.equal(pvd.toString('latin1', 1, 6), 'CD001');
  return pvd.toString('latin1', 40, 72).trim();
}

describe('Windows agent under Wine: payload CD found by volume label on a drive letter', function () {
  this.timeout(600_000);
  let w: Wine;
  let agent: ChildProcess;
  let vm: PortholeClient;
  const events: v1.PayloadEvent[] = [];

  let label: string;
  let built: Awaited<ReturnType<typeof buildIsoPayload>>;
  const content = randomBytes(300 * 1024 + 5);

  before(async () => {
    w = await wine();
    const exe = installAgentFiles(w);
    const dir = w.linuxPath('C:\\pl-test');
    mkdirSync(dir, { recursive: true });
    writeFileSync(join(dir, 'agent.conf'), CONFIG);
    const iso = join(w.prefix, 'payload.iso');
    built = await buildIsoPayload({
      id: 'wine-cd',
      entries: [{ guestPath: 'C:\\pl-test\\out\\payload.bin', content: { data: content } }],
      commands: [['cmd.exe', '/c', 'echo ran> C:\\pl-test\\out\\command.txt']],
    }, iso);
    label = isoVolumeId(iso);

    // Another CD in Q: with a manifest but no Porthole label: nothing is applied from it.
    const [cd, other] = [join(w.prefix, 'cd-p'), join(w.prefix, 'cd-q')];
    mkdirSync(other);
    writeFileSync(join(other, '.windows-label'), 'INSTALL_CD');
    writeFileSync(join(other, 'porthole-payload.json'), '{}');
    mkdirSync(cd);
    execFileSync('xorriso', ['-osirrox', 'on', '-indev', iso, '-extract', '/', cd], { stdio: 'ignore' });
    writeFileSync(join(cd, '.windows-label'), label);
    for (const drive of ['p:', 'q:']) await w.run(['reg', 'add', 'HKLM\\Software\\Wine\\Drives', '/v', drive, '/d', 'cdrom', '/f']);
    symlinkSync(other, join(w.prefix, 'dosdevices', 'q:'));
    symlinkSync(cd, join(w.prefix, 'dosdevices', 'p:'));
    // Wine's mount manager learns of drives when it starts (or from udisks hot-plug, which
    // is not here): this prefix's Wine is restarted, so the CDs are in their drives at boot.
    execFileSync('wineserver', ['-k'], { env: w.env, stdio: 'ignore', timeout: 20_000 });
    execFileSync('wineserver', ['-w'], { env: w.env, stdio: 'ignore', timeout: 20_000 });

    const port = await freePort();
    agent = startWindowsProgram(w, [exe, '--channel', `tcp-listen:127.0.0.1:${port}`, '--config', 'C:\\pl-test\\agent.conf'], join(w.prefix, 'payload-agent.out'));
    vm = await connect(`tcp:127.0.0.1:${port}`, { timeoutMs: 120_000 });
    vm.on('event', (e: v1.Event) => { if (e.payload) events.push(e.payload as v1.PayloadEvent); });
    await vm.ready();
  });

  after(async () => {
    vm?.close();
    // Gone before the next test (the MSI's uninstall cannot remove an executable still running).
    if (agent && agent.exitCode === null && agent.kill()) await once(agent, 'exit');
  });

  it('applies the payload ISO in drive P:, found by its volume label, and leaves other labels alone', async () => {
    assert.equal(label, built.label);
    assert.match(label, /^PORTHOLE_/);
    const out = w.linuxPath('C:\\pl-test\\out\\payload.bin');
    for (const until = Date.now() + 60_000; !events.some((e) => e.state === v1.PayloadState.PAYLOAD_APPLIED); await sleep(500)) {
      if (Date.now() > until) throw new Error(`no payload applied within 60 s; events: ${JSON.stringify(events)}`);
    }
    const applied = events.find((e) => e.state === v1.PayloadState.PAYLOAD_APPLIED)!;
    assert.equal(applied.device, 'P:');
    assert.equal(applied.label, label);
    assert.equal(applied.payloadId, 'wine-cd');
    assert.equal(Buffer.from(applied.files[0].path!).toString(), 'C:\\pl-test\\out\\payload.bin');
    assert.equal(applied.files[0].sha256, sha256(content));
    assert.deepEqual(readFileSync(out), content);
    assert.equal(applied.commands[0].exit?.code, 0);
    assert.match(readFileSync(w.linuxPath('C:\\pl-test\\out\\command.txt'), 'utf8'), /^ran/);
    assert.ok(existsSync(w.linuxPath('C:\\pl-test\\payloads\\applied\\wine-cd.json')));
    // Q:'s medium was seen and passed over: no event names it.
    assert.equal(events.filter((e) => e.device === 'Q:').length, 0);
    const log = readFileSync(w.linuxPath('C:\\pl-test\\agent.log'), 'utf8');
    assert.match(log, /"message":"payload medium detected"/);
  });
});
