// qemu-guest-agent of a libvirt domain through `virsh qemu-agent-command` (a stand-in virsh that answers as libvirt does).
import { strict as assert } from 'node:assert';
import { chmodSync, mkdtempSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { Virsh } from '@porthole/libvirt';
import { QgaError } from '@porthole/qga';
import { LibvirtQga, qgaFailure } from '@porthole/broker';
import { v1 } from '@porthole/protocol';

describe('qemu-guest-agent through libvirtd', () => {
  let dir: string;
  let qga: LibvirtQga;
  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'porthole-qga-virsh-'));
    const virsh = join(dir, 'virsh');
    writeFileSync(virsh, `#!/bin/sh
for a in "$@"; do printf '%s\\n' "$a" | wc -c >> ${dir}/lengths; done
case "$*" in
  *'"guest-exec"'*) echo "error: internal error: unable to execute QEMU agent command 'guest-exec': The command guest-exec has been disabled for this instance" >&2; exit 1 ;;
  *'"guest-file-write"'*) echo '{"return":{"count":1,"eof":false}}' ;;
  *'"guest-file-open"'*) echo '{"return":1000}' ;;
  *) echo '{"return":{"version":"7.2.19"}}' ;;
esac
`);
    chmodSync(virsh, 0o755);
    qga = new LibvirtQga(new Virsh({ uri: 'qemu:///system', binary: virsh }), 'web1');
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  it('answers with qemu-ga\'s return value', async () => {
    assert.deepEqual(await qga.command('guest-info'), { version: '7.2.19' });
  });

  it('turns libvirt\'s report of a --block-rpcs refusal into qemu-ga\'s error, a policy error for the broker', async () => {
    const err = await qga.command('guest-exec', { path: '/bin/true' }).catch((e: unknown) => e);
    assert.ok(err instanceof QgaError);
    assert.ok(err.disabled);
    assert.equal(qgaFailure(err).code, v1.ErrorCode.ERROR_CODE_POLICY_DENIED);
  });

  it('writes files in chunks whose command fits in one argument (128 KiB)', async () => {
    rmSync(join(dir, 'lengths'), { force: true });
    await qga.writeFile('/tmp/x', Buffer.alloc(300_000, 7));
    const lengths = readFileSync(join(dir, 'lengths'), 'utf8').trim().split('\n').map(Number);
    assert.ok(Math.max(...lengths) > 64 * 1024, 'a chunk went as one argument');
    assert.ok(Math.max(...lengths) < 128 * 1024, `an argument of ${Math.max(...lengths)} bytes`);
  });
});
