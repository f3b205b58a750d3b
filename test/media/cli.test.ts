import { strict as assert } from 'node:assert';
import { readFileSync, statSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { createRequire } from 'node:module';
import { BlockInfo, buildIsoPayload, connectQmpSocket, MANIFEST_FILE_NAME, parsePayloadManifest, registerPayloadCommands } from '@porthole/media';
import { ok, okBytes, startQemu, tempDir } from './util';

// The root node_modules holds postject's commander 9; load the commander 14 that
// @porthole/media (and the broker) use, so the test runs the real pairing.
type Commander = typeof import('../../packages/media/node_modules/commander');
const { Command, CommanderError } = createRequire(join(__dirname, '../../packages/media/package.json'))('commander') as Commander;
type CommanderError = InstanceType<Commander['CommanderError']>;

/**
 * Runs `porthole ARGS` in-process; returns what it printed and the error, if
 * any: a CommanderError is a usage error (the porthole CLI exits 2), any other
 * a failure (exit 1). Printing errors is the porthole program's part.
 */
async function porthole(args: string[]): Promise<{ out: string; err: string; error?: Error & Partial<CommanderError> }> {
  let out = '';
  let err = '';
  const program = new Command('porthole').exitOverride().configureOutput({ writeOut: (s) => (out += s), writeErr: (s) => (err += s) });
  registerPayloadCommands(program);
  const write = process.stdout.write;
  process.stdout.write = ((s: string) => ((out += s), true)) as typeof process.stdout.write;
  try {
    await program.parseAsync(args, { from: 'user' });
    return { out, err };
  } catch (e) {
    return { out, err, error: e as Error };
  } finally {
    process.stdout.write = write;
  }
}

describe('media: porthole payload CLI', function () {
  this.timeout(60_000);
  let t: ReturnType<typeof tempDir>;
  beforeEach(() => (t = tempDir()));
  afterEach(() => t.cleanup());

  it('payload build: entries, base64, per-entry owner/group/mode, commands, run-once, JSON output', async () => {
    const local = join(t.dir, 'app.conf');
    writeFileSync(local, 'key=value\n');
    const img = join(t.dir, 'p.img');
    const r = await porthole([
      'payload', 'build', '--floppy', '-o', img,
      '--owner', 'app', '--mode', '0600', '--entry', `/etc/app/app.conf=${local}`,
      '--mode', '0755', '--group', '50', '--b64', '/usr/local/bin/hook=IyEvYmluL3NoCmVjaG8gaGkK',
      '--run', 'echo done > /tmp/x', '--run', '["/usr/local/bin/hook", "a b"]',
      '--run-once', '--id', 'app-1', '--json',
    ]);
    assert.equal(r.error, undefined, r.err);
    const summary = JSON.parse(r.out);
    assert.equal(summary.medium, 'floppy');
    assert.equal(summary.payloads[0].id, 'app-1');
    assert.equal(summary.payloads[0].availability, 'run-once');
    assert.equal(statSync(img).mode & 0o777, 0o600);
    const m = parsePayloadManifest(ok('mtype', ['-i', img, `::${MANIFEST_FILE_NAME}`]));
    assert.equal(m.manifestSha256, summary.manifestSha256);
    const [conf, hook] = m.payloads[0].files;
    assert.deepEqual([conf.pathText, conf.owner, conf.group, conf.mode], ['/etc/app/app.conf', { name: 'app' }, null, 0o600]);
    assert.deepEqual([hook.pathText, hook.owner, hook.group, hook.mode], ['/usr/local/bin/hook', { name: 'app' }, { numeric: 50 }, 0o755]);
    assert.equal(okBytes('mtype', ['-i', img, `::${hook.source}`]).toString(), '#!/bin/sh\necho hi\n');
    assert.deepEqual(m.payloads[0].commands, [{ argv: ['/bin/sh', '-c', 'echo done > /tmp/x'] }, { argv: ['/usr/local/bin/hook', 'a b'] }]);
  });

  it('payload build: a JSON spec with several payloads and relative local files', async () => {
    writeFileSync(join(t.dir, 'data.bin'), Buffer.from([0, 1, 2, 255]));
    const specFile = join(t.dir, 'spec.json');
    const rawPath = Buffer.from([0x2f, 0x78, 0xff]);
    writeFileSync(
      specFile,
      JSON.stringify({
        payloads: [
          { id: 'a', files: [{ path: '/srv/ü.bin', localFile: 'data.bin', owner: 0, mode: '0644' }] },
          { id: 'b', availability: 'permanent', files: [{ pathB64: rawPath.toString('base64'), contentB64: 'aGk=' }], commands: [['/bin/true']] },
        ],
      }),
    );
    const iso = join(t.dir, 'p.iso');
    const r = await porthole(['payload', 'build', '--cd', '-o', iso, '--manifest', specFile, '--run-once']);
    assert.equal(r.error, undefined, r.err);
    assert.match(r.out, /^built cd payload .*p\.iso \(\d+ bytes, label PORTHOLE_[0-9A-F]{8}, manifest sha256 [0-9a-f]{64}\)\n {2}payload a: run-once, 1 files, 0 commands/);
    const out = join(t.dir, 'x');
    ok('osirrox', ['-indev', iso, '-extract', '/', out]);
    const m = parsePayloadManifest(readFileSync(join(out, MANIFEST_FILE_NAME), 'utf8'));
    assert.deepEqual(m.payloads.map((p) => [p.id, p.availability]), [['a', 'run-once'], ['b', 'permanent']]);
    assert.deepEqual(readFileSync(join(out, m.payloads[0].files[0].source)), Buffer.from([0, 1, 2, 255]));
    assert.ok(m.payloads[1].files[0].path.equals(rawPath));
  });

  it('payload build: clear errors; usage errors are commander\'s, failures plain errors', async () => {
    const cases: Array<[string[], RegExp, boolean]> = [
      [['payload', 'build', '-o', join(t.dir, 'a'), '--b64', '/a=YQ=='], /choose the medium: --cd or --floppy/, true],
      [['payload', 'build', '--cd', '--floppy', '-o', join(t.dir, 'a'), '--b64', '/a=YQ=='], /option '--cd' cannot be used with option '--floppy'/, true],
      [['payload', 'build', '--cd', '--b64', '/a=YQ=='], /required option '-o, --output <file>' not specified/, true],
      [['payload', 'build', '--cd', '-o', join(t.dir, 'a')], /nothing to build/, true],
      [['payload', 'build', '--cd', '-o', join(t.dir, 'a'), '--b64', 'noequals'], /--b64 expects GUESTPATH=VALUE/, true],
      [['payload', 'build', '--cd', '-o', join(t.dir, 'a'), '--b64', 'relative=YQ=='], /guest path "relative": path is not absolute/, true],
      [['payload', 'build', '--cd', '-o', join(t.dir, 'a'), '--run', '[1]'], /JSON argv must be an array of strings/, true],
      [['payload', 'build', '--cd', '-o', join(t.dir, 'a'), '--label', 'X', '--b64', '/a=YQ=='], /--label is for --layout vdsm/, true],
      [['payload', 'build', '--cd', '--layout', 'vdsm', '-o', join(t.dir, 'a'), '--mode', '0600', '--b64', 'a=YQ=='], /--mode has no place on a vdsm-layout medium/, true],
      [['payload', 'build', '--cd', '--layout', 'vdsm', '--label', 'PORTHOLE_X', '-o', join(t.dir, 'a'), '--b64', 'a=YQ=='], /labels starting with PORTHOLE are Porthole's own/, true],
      [['payload', 'build', '--floppy', '--layout', 'vdsm', '--label', 'much-too-long', '-o', join(t.dir, 'a'), '--b64', 'a=YQ=='], /a FAT label is 1 to 11/, true],
      [['payload', 'build', '--cd', '--layout', 'vdsm', '-o', join(t.dir, 'a'), '--b64', '../a=YQ=='], /without "\." or "\.\."/, true],
      [['payload', 'build', '--cd', '--layout', 'iso', '-o', join(t.dir, 'a')], /argument 'iso' is invalid\. Allowed choices are porthole, vdsm/, true],
      [['payload', 'build', '--floppy', '-o', join(t.dir, 'a'), '--b64', `/big=${Buffer.alloc(1_600_000).toString('base64')}`], /does not fit on a 1.44 MB floppy: it needs 1600\d{3} bytes/, false],
      [['payload', 'build', '--cd', '-o', join(t.dir, 'a'), '--manifest', join(t.dir, 'none.json')], /ENOENT/, false],
    ];
    for (const [args, message, usage] of cases) {
      const r = await porthole(args);
      assert.ok(r.error, `${args.join(' ')} should fail`);
      assert.match(r.error.message, message);
      assert.equal(r.error.code?.startsWith('commander.') ?? false, usage, `${args.join(' ')}: usage error ${usage}`);
      assert.doesNotMatch(r.err, /Usage:/, 'not the whole help');
    }
    assert.throws(() => statSync(join(t.dir, 'a')), /ENOENT/, 'no image left by a failed build');
  });

  it('payload xml: adds the disk (run-once form) and removes it', async () => {
    const domain = join(t.dir, 'd.xml');
    writeFileSync(domain, `<domain type='kvm'><name>v</name><os><type machine='pc-q35-7.2'>hvm</type></os><devices/></domain>`);
    const r = await porthole(['payload', 'xml', '--domain-xml', domain, '--image', join(t.dir, 'p.iso'), '--run-once']);
    assert.equal(r.error, undefined, r.err);
    assert.match(r.out, /<disk type="file" device="cdrom">/);
    assert.match(r.out, /<target dev="sda" bus="sata"\/>/);
    assert.match(r.out, /availability="run-once"/);
    const attached = join(t.dir, 'a.xml');
    writeFileSync(attached, r.out);
    const back = await porthole(['payload', 'xml', '--domain-xml', attached, '--detach', '-o', join(t.dir, 'b.xml')]);
    assert.equal(back.error, undefined, back.err);
    assert.doesNotMatch(readFileSync(join(t.dir, 'b.xml'), 'utf8'), /cdrom|porthole/);
    const bad = await porthole(['payload', 'xml', '--domain-xml', domain]);
    assert.match(bad.error!.message, /--image is required/);
  });

  it('payload attach / eject over QMP on a real QEMU', async () => {
    const iso = join(t.dir, 'p.iso');
    await buildIsoPayload({ id: 'x', entries: [{ guestPath: '/x', content: { base64: 'eA==' } }] }, iso);
    const vm = await startQemu(t.dir, ['-drive', 'if=none,id=cd0,media=cdrom', '-device', 'ide-cd,drive=cd0']);
    try {
      const a = await porthole(['payload', 'attach', 'vm1', iso, '--qmp', vm.qmpSocket]);
      assert.equal(a.error, undefined, a.err);
      assert.equal(a.out, `inserted ${iso} into drive cd0 of vm1\n`);
      // TARGET is the QMP socket when no --qmp is given.
      const q = await connectQmpSocket(vm.qmpSocket);
      const blocks = (await q.execute('query-block')) as BlockInfo[];
      q.close();
      assert.equal(blocks.find((b) => b.device === 'cd0')?.inserted?.file, iso);
      const e = await porthole(['payload', 'eject', vm.qmpSocket]);
      assert.equal(e.error, undefined, e.err);
      assert.equal(e.out, `ejected drive cd0 of ${vm.qmpSocket}\n`);
      const again = await porthole(['payload', 'eject', 'vm1', '--qmp', vm.qmpSocket]);
      assert.match(again.error!.message, /no CD-ROM drives with a medium; name the one to eject/);
      const fd = await porthole(['payload', 'attach', 'vm1', iso, '--floppy', '--qmp', vm.qmpSocket]);
      assert.match(fd.error!.message, /no empty floppy drive on the VM/);
    } finally {
      await vm.stop();
    }
    const gone = await porthole(['payload', 'attach', 'vm1', iso, '--qmp', join(t.dir, 'qmp.sock')]);
    assert.match(gone.error!.message, /QMP .*qmp\.sock: connect (ENOENT|ECONNREFUSED)/);
  });
});
