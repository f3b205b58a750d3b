import { strict as assert } from 'node:assert';
import { execFile, execFileSync } from 'node:child_process';
import { promisify } from 'node:util';
import { mkdtempSync, readFileSync, rmSync, writeFileSync, statSync } from 'node:fs';
import * as http from 'node:http';
import * as https from 'node:https';
import type { AddressInfo } from 'node:net';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import {
  CertificateError,
  HttpStatusError,
  InvalidUrlError,
  NotIsoError,
  PreflightTimeoutError,
  RangeNotSupportedError,
  ServerUnreachableError,
  preflight,
  qemuArgs,
  startRangeHttpsServer,
  type RangeHttpsServer,
} from '@porthole/bootiso';
import { makeTestIso, makeTestPki, type TestCert } from './fixtures';

describe('bootiso preflight against local https servers', function () {
  this.timeout(60_000);
  let dir: string;
  let iso: string;
  let good: TestCert;
  let other: TestCert;
  const servers: Array<{ close(): Promise<void> | void }> = [];

  before(() => {
    dir = mkdtempSync(join(tmpdir(), 'porthole-bootiso-'));
    good = makeTestPki(dir, 'good');
    other = makeTestPki(dir, 'other');
    iso = makeTestIso(dir, 'PORTHOLE_TEST', 'test image.iso');
  });
  afterEach(async () => {
    for (const s of servers.splice(0)) await s.close();
  });
  after(() => rmSync(dir, { recursive: true, force: true }));

  async function serve(file: string, range: boolean, pki: TestCert = good): Promise<RangeHttpsServer> {
    const s = await startRangeHttpsServer({ file, cert: pki.cert, key: pki.key, range });
    servers.push(s);
    return s;
  }

  /** A bare https server with a custom handler, for misbehaving servers the product server never imitates. */
  async function customServer(handler: http.RequestListener): Promise<string> {
    const server = https.createServer({ cert: good.cert, key: good.key }, handler);
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    servers.push({ close: () => new Promise<void>((r) => { server.close(() => r()); server.closeAllConnections(); }) });
    return `https://127.0.0.1:${(server.address() as AddressInfo).port}/x.iso`;
  }

  it('accepts a Range-capable server serving a real ISO, with the test CA file', async () => {
    const s = await serve(iso, true);
    assert.match(s.url, /\/test%20image\.iso$/);
    const r = await preflight(s.url, { caFile: good.caFile });
    assert.equal(r.size, statSync(iso).size);
    assert.equal(r.volumeId, 'PORTHOLE_TEST');
    assert.equal(r.certificate.verified, true);
    assert.equal(r.certificate.issuer, 'Porthole good test CA');
    assert.ok(r.latencyMs >= 0 && r.latencyMs < 5000);
    assert.ok(r.warnings.some((w) => /system trust store/.test(w)), 'warns that QEMU will not use the extra CA');
    assert.ok(s.stats.ranged >= 1, 'the server answered ranged reads');
  });

  it('by default trusts only the system store, so the test CA is refused', async () => {
    const s = await serve(iso, true);
    await assert.rejects(preflight(s.url), (e: unknown) => e instanceof CertificateError && /system trust store/.test(e.message));
  });

  it('refuses a certificate signed by another CA, and --insecure passes it with a loud warning', async () => {
    const s = await serve(iso, true, other);
    await assert.rejects(preflight(s.url, { caFile: good.caFile }), (e: unknown) => e instanceof CertificateError && e.code === 'CERT_UNTRUSTED');
    const r = await preflight(s.url, { insecure: true });
    assert.equal(r.certificate.verified, false);
    assert.ok(r.warnings.some((w) => /^INSECURE: .*would have failed/.test(w)), r.warnings.join('|'));
  });

  it('refuses a server without Range support', async () => {
    const s = await serve(iso, false);
    await assert.rejects(
      preflight(s.url, { caFile: good.caFile }),
      (e: unknown) => e instanceof RangeNotSupportedError && e.code === 'NO_ACCEPT_RANGES' && /QEMU refuses/.test(e.message),
    );
  });

  it('refuses a server that announces ranges but answers 200 with the whole file, without downloading it', async () => {
    const url = await customServer((req, res) => {
      res.writeHead(200, { 'accept-ranges': 'bytes', 'content-length': String(64 << 20) });
      if (req.method === 'HEAD') return res.end();
      const chunk = Buffer.alloc(1 << 16);
      let left = 1024;
      const pump = () => { while (left-- > 0) if (!res.write(chunk)) return res.once('drain', pump); res.end(); };
      res.on('error', () => undefined);
      pump();
    });
    const started = Date.now();
    await assert.rejects(preflight(url, { caFile: good.caFile }), (e: unknown) => e instanceof RangeNotSupportedError && e.code === 'RANGE_IGNORED');
    assert.ok(Date.now() - started < 5000);
  });

  it('refuses a wrong Content-Range', async () => {
    const url = await customServer((req, res) => {
      const h = { 'accept-ranges': 'bytes', 'content-length': '100000' };
      if (req.method === 'HEAD') return res.writeHead(200, h).end();
      res.writeHead(206, { 'content-range': 'bytes 0-34815/99999', 'content-length': '34816' }).end(Buffer.alloc(34816));
    });
    await assert.rejects(preflight(url, { caFile: good.caFile }), (e: unknown) => e instanceof RangeNotSupportedError && e.code === 'BAD_CONTENT_RANGE');
  });

  it('names what a non-ISO body looks like (qcow2, HTML)', async () => {
    const qcow = join(dir, 'disk.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', qcow, '64M']);
    const s = await serve(qcow, true);
    await assert.rejects(
      preflight(s.url, { caFile: good.caFile }),
      (e: unknown) => e instanceof NotIsoError && e.looksLike === 'a qcow2 disk image' && /CD001/.test(e.message),
    );
    const html = join(dir, 'login.html');
    writeFileSync(html, '<!DOCTYPE html>\n<html><body>Please sign in</body></html>\n');
    const h = await serve(html, true);
    await assert.rejects(preflight(h.url, { caFile: good.caFile }), (e: unknown) => e instanceof NotIsoError && /HTML page/.test(e.looksLike));
  });

  it('refuses an http URL before contacting the server', async () => {
    let hits = 0;
    const server = http.createServer((_req, res) => { hits++; res.end(); });
    await new Promise<void>((r) => server.listen(0, '127.0.0.1', r));
    servers.push({ close: () => new Promise<void>((r) => server.close(() => r())) });
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/x.iso`;
    await assert.rejects(preflight(url), (e: unknown) => e instanceof InvalidUrlError && e.code === 'INSECURE_SCHEME' && /plain http is refused/.test(e.message));
    assert.equal(hits, 0);
  });

  it('reports a server that never answers as a timeout, and a closed port as unreachable', async () => {
    const url = await customServer(() => undefined);
    await assert.rejects(preflight(url, { caFile: good.caFile, timeoutMs: 300 }), (e: unknown) => e instanceof PreflightTimeoutError);
    const closed = http.createServer();
    await new Promise<void>((r) => closed.listen(0, '127.0.0.1', r));
    const port = (closed.address() as AddressInfo).port;
    await new Promise<void>((r) => closed.close(() => r()));
    await assert.rejects(preflight(`https://127.0.0.1:${port}/x.iso`), (e: unknown) => e instanceof ServerUnreachableError && e.code === 'UNREACHABLE');
  });

  it('follows an https redirect as QEMU does, and refuses one to http', async () => {
    const s = await serve(iso, true);
    const to = (target: string) => customServer((_req, res) => res.writeHead(302, { location: target }).end());
    const r = await preflight(await to(s.url), { caFile: good.caFile });
    assert.equal(r.finalUrl, s.url);
    assert.equal(r.volumeId, 'PORTHOLE_TEST');
    await assert.rejects(
      preflight(await to(s.url.replace('https:', 'http:')), { caFile: good.caFile }),
      (e: unknown) => e instanceof HttpStatusError && e.code === 'BAD_REDIRECT' && /plain http is refused/.test(e.message),
    );
  });

  it('startRangeHttpsServer answers ranges like a real file server', async () => {
    const s = await serve(iso, true);
    const size = statSync(iso).size;
    const get = (path: string, headers: Record<string, string> = {}, method = 'GET') =>
      new Promise<{ status: number; headers: http.IncomingHttpHeaders; body: Buffer }>((resolve, reject) => {
        const req = https.request(new URL(path, s.url), { method, headers, ca: readFileSync(good.caFile) }, (res) => {
          const chunks: Buffer[] = [];
          res.on('data', (c: Buffer) => chunks.push(c));
          res.on('end', () => resolve({ status: res.statusCode!, headers: res.headers, body: Buffer.concat(chunks) }));
        });
        req.on('error', reject);
        req.end();
      });
    const whole = readFileSync(iso);
    const suffix = await get(s.url, { range: 'bytes=-100' });
    assert.equal(suffix.status, 206);
    assert.equal(suffix.headers['content-range'], `bytes ${size - 100}-${size - 1}/${size}`);
    assert.ok(suffix.body.equals(whole.subarray(size - 100)));
    const open = await get(s.url, { range: `bytes=${size - 10}-` });
    assert.ok(open.body.equals(whole.subarray(size - 10)));
    assert.equal((await get(s.url, { range: `bytes=${size}-` })).status, 416);
    assert.equal((await get(s.url, { range: 'bytes=0-1,5-6' })).status, 416);
    const full = await get(s.url);
    assert.equal(full.status, 200);
    assert.equal(full.headers['accept-ranges'], 'bytes');
    assert.ok(full.body.equals(whole));
    assert.equal((await get('/other.iso')).status, 404);
    assert.equal((await get(s.url, {}, 'PUT')).status, 405);
  });

  it('agrees with QEMU: qemu-img reads the good server through the generated https node and rejects the Range-less one', async () => {
    const s = await serve(iso, true);
    const node = (url: string) => {
      const { 'node-name': _n, 'read-only': _r, ...file } = JSON.parse(qemuArgs(url, { insecure: true }).args[1]);
      return `json:${JSON.stringify({ driver: 'raw', file })}`;
    };
    // Asynchronously: the servers run in this process and must keep answering while qemu-img reads.
    const run = promisify(execFile);
    const info = JSON.parse((await run('qemu-img', ['info', '--output=json', node(s.url)])).stdout);
    assert.equal(info['virtual-size'], statSync(iso).size);
    const n = await serve(iso, false);
    await assert.rejects(run('qemu-img', ['info', node(n.url)]), (e: { stderr?: string }) => /range/i.test(String(e.stderr)));
  });
});
