import { execFileSync } from 'node:child_process';
import { mkdirSync, readFileSync, writeFileSync } from 'node:fs';
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
