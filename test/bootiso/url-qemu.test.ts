import { strict as assert } from 'node:assert';
import { InvalidUrlError, qemuArgs, sniffImage, validateIsoUrl } from '@porthole/bootiso';

describe('bootiso validateIsoUrl', () => {
  it('keeps host, port, path and query exactly', () => {
    assert.deepEqual(validateIsoUrl('https://Mirror.Example.org:8443/a/../b%20c.iso?x=%2F&y'), {
      href: 'https://Mirror.Example.org:8443/a/../b%20c.iso?x=%2F&y',
      host: 'Mirror.Example.org',
      port: 8443,
      path: '/a/../b%20c.iso',
      query: 'x=%2F&y',
    });
    assert.deepEqual(validateIsoUrl('https://[::1]/x.iso'), { href: 'https://[::1]/x.iso', host: '::1', port: 443, path: '/x.iso', query: undefined });
    assert.equal(validateIsoUrl('https://h.example').path, '/');
    assert.equal(validateIsoUrl('https://h.example/x?').query, '');
  });

  const refused: Array<[string, string, RegExp]> = [
    ['http://h.example/x.iso', 'INSECURE_SCHEME', /plain http is refused/],
    ['ftp://h.example/x.iso', 'BAD_SCHEME', /only https/],
    ['https:///x.iso', 'NO_HOST', /no host/],
    ['https:x.iso', 'NO_HOST', /no host/],
    ['/x.iso', 'NOT_A_URL', /absolute URL/],
    ['https://user:pw@h.example/x.iso', 'CREDENTIALS', /credentials.*domain XML/],
    ['https://h.example:0/x.iso', 'BAD_PORT', /1 to 65535/],
    ['https://h.example:65536/x.iso', 'BAD_PORT', /1 to 65535/],
    ['https://h.example:/x.iso', 'BAD_PORT', /port ""/],
    ['https://h.example:44a/x.iso', 'BAD_PORT', /port "44a"/],
    ['https://h.example/a b.iso', 'BAD_CHAR', /U\+0020\) at position 19/],
    ['https://h.example/x.iso\n', 'BAD_CHAR', /U\+000a/],
    ['https://h.example/x\u0000.iso', 'BAD_CHAR', /control character/],
    ['https://h.example/x\u00a0.iso', 'BAD_CHAR', /U\+00a0/],
    ['https://h.example/é.iso', 'BAD_CHAR', /percent-encoded/],
    ['https://h.example/x<.iso', 'BAD_CHAR', /"<"/],
    ['https://h.example/x%zz.iso', 'BAD_ESCAPE', /two hex digits/],
    ['https://h.example/x.iso#frag', 'FRAGMENT', /fragment/],
    ['https://bad_host!/x.iso', 'BAD_HOST', /valid host name/],
    ['https://[::g]/x.iso', 'BAD_HOST', /IPv6/],
    ['', 'EMPTY', /empty/],
  ];
  for (const [url, code, message] of refused) {
    it(`refuses ${JSON.stringify(url)} with ${code}`, () => {
      assert.throws(() => validateIsoUrl(url), (e: unknown) => e instanceof InvalidUrlError && e.code === code && message.test(e.message));
    });
  }
});

describe('bootiso qemuArgs', () => {
  const url = 'https://h.example:8443/isos/a,b.iso?t=1';

  it('attaches a read-only https CD-ROM with bootindex=0 (-blockdev and -drive forms)', () => {
    const r = qemuArgs(url);
    assert.equal(r.args[0], '-blockdev');
    assert.deepEqual(JSON.parse(r.args[1]), { driver: 'https', url, sslverify: true, 'node-name': 'bootiso-https', 'read-only': true });
    assert.deepEqual(JSON.parse(r.args[3]), { driver: 'raw', file: 'bootiso-https', 'node-name': 'bootiso', 'read-only': true });
    assert.deepEqual(r.args.slice(4), ['-device', 'ide-cd,drive=bootiso,id=bootiso-cd,bootindex=0']);
    assert.deepEqual(r.driveArgs, [
      '-drive',
      'if=none,id=bootiso,driver=raw,file.driver=https,file.url=https://h.example:8443/isos/a,,b.iso?t=1,file.sslverify=on,readonly=on,media=cdrom',
      '-device',
      'ide-cd,drive=bootiso,id=bootiso-cd,bootindex=0',
    ]);
    assert.equal(r.shiftedArgs, undefined);
    assert.ok(r.notes.some((n) => /I\/O errors/.test(n)));
  });

  it('shifts the bootindex of an existing command line and flags a legacy -boot order', () => {
    const r = qemuArgs(url, {
      insecure: true,
      bus: 'scsi',
      timeoutSec: 30,
      readaheadBytes: 1 << 20,
      existingArgs: ['-boot', 'order=c', '-device', 'virtio-blk-pci,drive=d0,bootindex=0', '-device', '{"driver":"virtio-net-pci","bootindex":2}', '-device', 'e1000,id=n1'],
    });
    assert.deepEqual(r.shiftedArgs, ['-boot', 'order=c', '-device', 'virtio-blk-pci,drive=d0,bootindex=1', '-device', '{"driver":"virtio-net-pci","bootindex":3}', '-device', 'e1000,id=n1']);
    assert.deepEqual(JSON.parse(r.args[1]), { driver: 'https', url, sslverify: false, timeout: 30, readahead: 1048576, 'node-name': 'bootiso-https', 'read-only': true });
    assert.deepEqual(r.args.slice(4), ['-device', 'virtio-scsi-pci,id=bootiso-scsi', '-device', 'scsi-cd,bus=bootiso-scsi.0,drive=bootiso,id=bootiso-cd,bootindex=0']);
    assert.ok(r.notes.some((n) => /-boot order=c/.test(n)));
    assert.ok(r.notes.some((n) => /^WARNING: file.sslverify=off/.test(n)));
  });

  it('validates the URL and the id', () => {
    assert.throws(() => qemuArgs('http://h/x.iso'), InvalidUrlError);
    assert.throws(() => qemuArgs(url, { id: 'a,b' }), /not a valid QEMU id/);
  });
});

describe('bootiso sniffImage', () => {
  const at = (offset: number, bytes: number[] | string, size = 34816) => {
    const b = Buffer.alloc(size);
    Buffer.from(typeof bytes === 'string' ? Buffer.from(bytes, 'latin1') : bytes).copy(b, offset);
    return b;
  };
  it('recognises ISO 9660 and names other content', () => {
    const iso = at(32769, 'CD001');
    iso.write('MY_VOLUME'.padEnd(32, ' '), 32768 + 40, 'latin1');
    assert.deepEqual(sniffImage(iso), { iso: true, looksLike: 'an ISO 9660 image', volumeId: 'MY_VOLUME' });
    assert.match(sniffImage(at(0, [0x1f, 0x8b, 8])).looksLike, /gzip/);
    assert.match(sniffImage(at(0, [0xfd, 0x37, 0x7a, 0x58, 0x5a, 0])).looksLike, /xz/);
    assert.match(sniffImage(at(510, [0x55, 0xaa])).looksLike, /MBR/);
    assert.match(sniffImage(at(512, 'EFI PART')).looksLike, /GPT/);
    assert.match(sniffImage(at(0, 'QFI\xfb')).looksLike, /qcow2/);
    assert.match(sniffImage(Buffer.from('  <!doctype HTML><title>404</title>')).looksLike, /HTML page/);
    assert.match(sniffImage(Buffer.from('{"error":"denied"}')).looksLike, /JSON/);
    assert.equal(sniffImage(Buffer.alloc(0)).looksLike, 'empty');
    assert.match(sniffImage(Buffer.from([0, 1, 2, 3])).looksLike, /too short/);
    assert.equal(sniffImage(Buffer.alloc(40000, 7)).looksLike, 'unrecognised binary data');
  });
});
