// porthole-agent.exe is reproducible: built again from the same agent bundle, it has the same
// bytes (no time, path or machine in it). The MSI is not (wixl stamps dates and a new product code).
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { agentExe } from './wine';

const root = join(__dirname, '..', '..');
const sha256 = (file: string) => createHash('sha256').update(readFileSync(file)).digest('hex');

describe('porthole-agent.exe build', function () {
  this.timeout(600_000);

  it('gives the same bytes when built twice from the same bundle', () => {
    const first = agentExe();
    const dir = mkdtempSync(join(tmpdir(), 'porthole-exe-'));
    try {
      const second = join(dir, 'porthole-agent.exe');
      execFileSync(process.execPath, [join(root, 'packages/agent/scripts/sea-windows.mjs'), '--bundle', join(root, 'packages/agent/dist/porthole-agent.bundle.cjs'), '--out', second], { stdio: 'inherit' });
      assert.equal(sha256(second), sha256(first));
      // A Windows PE executable (MZ header), not the Linux one.
      assert.equal(readFileSync(second).subarray(0, 2).toString('latin1'), 'MZ');
    } finally {
      rmSync(dir, { recursive: true, force: true });
    }
  });
});
