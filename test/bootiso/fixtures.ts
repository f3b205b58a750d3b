import { execFileSync } from 'node:child_process';
import { copyFileSync, lstatSync, mkdirSync, readdirSync, readFileSync, readlinkSync, rmSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';

export interface TestCert {
  caFile: string;
  cert: string;
  key: string;
}

const openssl = (args: string[], cwd: string) => execFileSync('openssl', args, { cwd, stdio: ['ignore', 'ignore', 'pipe'] });
const ecKey = ['-newkey', 'ec', '-pkeyopt', 'ec_paramgen_curve:prime256v1', '-nodes'];

/** A throw-away CA (named `name`) and a server certificate it signs for 127.0.0.1/localhost, made with openssl in `dir`. */
export function makeTestPki(dir: string, name: string): TestCert {
  const p = (f: string) => join(dir, `${name}-${f}`);
  openssl(['req', '-x509', ...ecKey, '-keyout', p('ca.key'), '-out', p('ca.pem'), '-days', '2', '-subj', `/CN=Porthole ${name} test CA`,
    '-addext', 'basicConstraints=critical,CA:TRUE', '-addext', 'keyUsage=critical,keyCertSign,cRLSign'], dir);
  openssl(['req', ...ecKey, '-keyout', p('server.key'), '-out', p('server.csr'), '-subj', '/CN=127.0.0.1'], dir);
  writeFileSync(p('ext.cnf'), 'subjectAltName=IP:127.0.0.1,DNS:localhost\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n');
  openssl(['x509', '-req', '-in', p('server.csr'), '-CA', p('ca.pem'), '-CAkey', p('ca.key'), '-CAcreateserial',
    '-out', p('server.pem'), '-days', '2', '-extfile', p('ext.cnf')], dir);
  return { caFile: p('ca.pem'), cert: readFileSync(p('server.pem'), 'utf8'), key: readFileSync(p('server.key'), 'utf8') };
}

/** A small real ISO 9660 image with volume id `volume`, made with xorriso in `dir`; returns its path. */
export function makeTestIso(dir: string, volume: string, fileName = 'test.iso'): string {
  const root = join(dir, `${volume}-root`);
  mkdirSync(root);
  writeFileSync(join(root, 'hello.txt'), 'hello from the test ISO\n');
  const iso = join(dir, fileName);
  execFileSync('xorriso', ['-as', 'mkisofs', '-V', volume, '-o', iso, root], { stdio: 'ignore' });
  return iso;
}

const LOCAL_CA_DIR = '/usr/local/share/ca-certificates';
const SYSTEM_CERTS_DIR = '/etc/ssl/certs';
const TEST_CA_PREFIX = 'porthole-test-ca-';

function pidAlive(pid: number): boolean {
  try {
    process.kill(pid, 0);
    return true;
  } catch (err) {
    return (err as NodeJS.ErrnoException).code === 'EPERM';
  }
}

/** Takes one test CA out of the system store: its file, the .pem and hash links update-ca-certificates made, the bundle. */
function untrust(name: string): void {
  rmSync(join(LOCAL_CA_DIR, `${name}.crt`), { force: true });
  // update-ca-certificates only prunes links when it also adds one, so remove ours ourselves.
  for (const entry of readdirSync(SYSTEM_CERTS_DIR)) {
    const path = join(SYSTEM_CERTS_DIR, entry);
    if (lstatSync(path).isSymbolicLink() && (entry === `${name}.pem` || readlinkSync(path) === `${name}.pem`)) rmSync(path);
  }
  execFileSync('update-ca-certificates', [], { stdio: 'ignore' });
}

/**
 * Adds a test CA to the system trust store with update-ca-certificates (QEMU's curl driver trusts only that store and
 * has no CA option); the returned function removes it again. Also removes CAs left by test runs that died. Needs root.
 */
export function trustSystemWide(caFile: string): () => void {
  for (const f of readdirSync(LOCAL_CA_DIR)) {
    const m = new RegExp(`^(${TEST_CA_PREFIX}(\\d+))\\.crt$`).exec(f);
    if (m && Number(m[2]) !== process.pid && !pidAlive(Number(m[2]))) untrust(m[1]);
  }
  const name = `${TEST_CA_PREFIX}${process.pid}`;
  try {
    copyFileSync(caFile, join(LOCAL_CA_DIR, `${name}.crt`));
  } catch (err) {
    throw new Error(`cannot add the test CA to ${LOCAL_CA_DIR} (${(err as NodeJS.ErrnoException).code}): this test needs root`);
  }
  execFileSync('update-ca-certificates', [], { stdio: 'ignore' });
  return () => untrust(name);
}
