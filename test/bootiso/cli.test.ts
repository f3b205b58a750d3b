import { strict as assert } from 'node:assert';
import { existsSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createRequire } from 'node:module';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { registerBootIsoCommand, runBootIso, startRangeHttpsServer, type CliIo, type RangeHttpsServer } from '@porthole/bootiso';
import { makeTestIso, makeTestPki, type TestCert } from './fixtures';

function capture(): CliIo & { out: () => string; err: () => string } {
  let out = '';
  let err = '';
  return { stdout: { write: (s: string) => (out += s) }, stderr: { write: (s: string) => (err += s) }, out: () => out, err: () => err };
}

describe('bootiso boot-iso command', function () {
  this.timeout(60_000);
  let dir: string;
  let pki: TestCert;
  let good: RangeHttpsServer;
  let noRange: RangeHttpsServer;
  const domainXml = join(__dirname, 'fixtures', 'q35-os-boot.xml');

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'porthole-bootiso-cli-'));
    pki = makeTestPki(dir, 'cli');
    const iso = makeTestIso(dir, 'CLI_TEST', 'boot.iso');
    good = await startRangeHttpsServer({ file: iso, cert: pki.cert, key: pki.key, range: true });
    noRange = await startRangeHttpsServer({ file: iso, cert: pki.cert, key: pki.key, range: false });
  });
  after(async () => {
    await good?.close();
    await noRange?.close();
    rmSync(dir, { recursive: true, force: true });
  });

  it('checks the server, writes the persistent XML to --out and explains how to apply it', async () => {
    const io = capture();
    const out = join(dir, 'persistent.xml');
    assert.equal(await runBootIso({ xml: domainXml, url: good.url, caFile: pki.caFile, out }, io), 0);
    assert.equal(io.out(), '');
    const xml = readFileSync(out, 'utf8');
    assert.match(xml, /<source protocol='https' name='\/boot.iso'>\n\s+<host name='127.0.0.1' port='\d+'\/>/);
    assert.match(io.err(), /preflight OK: \d+ bytes, ISO volume "CLI_TEST"/);
    assert.match(io.err(), /CD-ROM sdb on sata, boot order 1; disk sda -→2, disk vda -→3, disk vdb -→4/);
    assert.match(io.err(), /virsh define/);
  });

  it('--run-once --json prints the whole result with the preflight figures', async () => {
    const io = capture();
    assert.equal(await runBootIso({ xml: domainXml, url: good.url, caFile: pki.caFile, runOnce: true, json: true }, io), 0);
    const r = JSON.parse(io.out());
    assert.equal(r.mode, 'run-once');
    assert.equal(r.xml, r.runOnceXml);
    assert.match(r.usage, /virsh create/);
    assert.equal(r.preflight.volumeId, 'CLI_TEST');
    assert.equal(r.preflight.certificate.verified, true);
  });

  it('--qemu-args --no-preflight prints pasteable QEMU arguments and says the check was skipped', async () => {
    const io = capture();
    assert.equal(await runBootIso({ url: noRange.url, qemuArgs: true, preflight: false }, io), 0);
    assert.match(io.out(), /^-blockdev '\{"driver":"https","url":"https:\/\/127\.0\.0\.1:\d+\/boot\.iso","sslverify":true,.*bootindex=0\n$/);
    assert.match(io.err(), /preflight skipped/);
    assert.equal(noRange.stats.requests, 0);
  });

  it('refuses an http URL with status 2 and writes nothing', async () => {
    const io = capture();
    const out = join(dir, 'never.xml');
    assert.equal(await runBootIso({ xml: domainXml, url: good.url.replace('https:', 'http:'), out }, io), 2);
    assert.match(io.err(), /invalid URL: plain http is refused/);
    assert.equal(existsSync(out), false);
  });

  it('stops on a failed preflight with status 1 and the typed cause, writing nothing', async () => {
    const io = capture();
    const out = join(dir, 'never.xml');
    assert.equal(await runBootIso({ xml: domainXml, url: noRange.url, caFile: pki.caFile, out }, io), 1);
    assert.match(io.err(), /preflight failed \[NO_ACCEPT_RANGES\]/);
    assert.equal(existsSync(out), false);
    const untrusted = capture();
    assert.equal(await runBootIso({ xml: domainXml, url: good.url }, untrusted), 1);
    assert.match(untrusted.err(), /preflight failed \[CERT_UNTRUSTED\]/);
  });

  it('--insecure warns loudly and marks the CD-ROM ssl verify="no"', async () => {
    const io = capture();
    assert.equal(await runBootIso({ xml: domainXml, url: good.url, insecure: true }, io), 0);
    assert.match(io.err(), /WARNING: --insecure/);
    assert.match(io.err(), /INSECURE: certificate verification is OFF and it would have failed/);
    assert.match(io.out(), /<ssl verify='no'\/>/);
  });

  it('reports usage errors and unreadable input', async () => {
    const noXml = capture();
    assert.equal(await runBootIso({ url: good.url, preflight: false }, noXml), 2);
    assert.match(noXml.err(), /--xml DOMAIN.xml is required/);
    const missing = capture();
    assert.equal(await runBootIso({ xml: join(dir, 'absent.xml'), url: good.url, preflight: false }, missing), 1);
    assert.match(missing.err(), /cannot read .*absent.xml: ENOENT/);
    const bad = capture();
    writeFileSync(join(dir, 'bad.xml'), '<domain><devices></domain>');
    assert.equal(await runBootIso({ xml: join(dir, 'bad.xml'), url: good.url, preflight: false }, bad), 1);
    assert.match(bad.err(), /domain XML \[XML_MALFORMED\]/);
  });

  it('registers on a commander program (the porthole CLI) and runs through parseAsync', async () => {
    // The commander the broker uses (v14), resolved from the bootiso package as the broker's would be.
    const { Command } = createRequire(require.resolve('@porthole/bootiso'))('commander') as typeof import('commander');
    const program = new Command('porthole').exitOverride();
    const io = capture();
    registerBootIsoCommand(program as unknown as Parameters<typeof registerBootIsoCommand>[0], io);
    const saved = process.exitCode;
    try {
      await program.parseAsync(['boot-iso', '--url', good.url, '--xml', domainXml, '--run-once', '--no-preflight'], { from: 'user' });
      assert.equal(process.exitCode, 0);
    } finally {
      process.exitCode = saved;
    }
    assert.match(io.out(), /<porthole:boot-iso xmlns:porthole='urn:porthole:boot-iso:1' mode='run-once'/);
    const help = program.commands.find((c) => c.name() === 'boot-iso')!.helpInformation();
    for (const flag of ['--xml', '--url', '--run-once', '--qemu-args', '--no-preflight', '--insecure', '--out', '--json']) {
      assert.ok(help.includes(flag), flag);
    }
  });
});
