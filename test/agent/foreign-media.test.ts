// Foreign media (built as oVirt's vdsm builds payloads) in the agent, without a VM:
// the real image read back by the real tools into a directory standing in for the
// mounted medium, reported, and applied only where the owner maps its label.
import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { createHash } from 'node:crypto';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync, symlinkSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { PassThrough } from 'node:stream';
import { v1 } from '@porthole/protocol';
import { buildVdsmMedium, MediumFile } from '@porthole/media';
import { AgentConfig, applyForeignMedium, createAuditLogger, defaultConfig, MAX_LISTED_FILES, parseConfig, Policy, TransferStore, UserDb } from '@porthole/agent';

const S = v1.PayloadState;
const sha256 = (b: Buffer | string) => createHash('sha256').update(b).digest('hex');

const CONFIG_DRIVE: MediumFile[] = [
  { path: 'openstack/latest/meta_data.json', content: { data: Buffer.from('{"uuid": "0001"}') } },
  { path: 'openstack/latest/user_data', content: { data: Buffer.from('#cloud-config\n') } },
  { path: 'openstack/content/0000', content: { data: Buffer.from('nameserver 192.0.2.53\n') } },
];

describe('agent: foreign media (vdsm layout, applied from a directory standing in for the mounted medium)', function () {
  this.timeout(30000);
  let dir: string;
  let root: string;
  let config: AgentConfig;
  let audit: Array<Record<string, unknown>>;
  beforeEach(() => {
    dir = mkdtempSync(join(tmpdir(), 'porthole-foreign-'));
    root = join(dir, 'guest');
    mkdirSync(root);
    config = defaultConfig();
    config.payload.stateDir = join(dir, 'payload-state');
    config.transfers.stateDir = join(dir, 'transfers');
    audit = [];
  });
  afterEach(() => rmSync(dir, { recursive: true, force: true }));

  const apply = async (medium: string, label = 'config-2', fsType = 'iso9660') => {
    const lines = new PassThrough();
    lines.on('data', (b: Buffer) => b.toString().split('\n').filter(Boolean).forEach((l) => audit.push(JSON.parse(l) as Record<string, unknown>)));
    const log = createAuditLogger({ silent: true, stream: lines });
    const event = await applyForeignMedium({
      files: { policy: new Policy(config), users: new UserDb(), transfers: new TransferStore(config.transfers.stateDir, 86400_000), log },
      stateDir: config.payload.stateDir, bootId: 'boot-1',
    }, { root: medium, device: '/dev/sr0', label }, fsType);
    await new Promise((r) => setImmediate(r));
    return event;
  };
  /** The vdsm-layout CD, extracted as the mounted medium shows it. */
  const cdTree = async (files = CONFIG_DRIVE, name = 'cd') => {
    const iso = join(dir, `${name}.iso`);
    await buildVdsmMedium('cd', files, iso, { label: 'config-2', tmpDir: dir });
    const tree = join(dir, name);
    execFileSync('xorriso', ['-osirrox', 'on', '-indev', iso, '-extract', '/', tree], { stdio: 'ignore' });
    return tree;
  };
  const listed = (e: v1.PayloadEvent.$Properties) => e.mediumFiles!.map((f) => [Buffer.from(f.path!).toString(), Number(f.size)]);

  it('is reported with its label and files, and never applied by default', async () => {
    const e = await apply(await cdTree());
    assert.equal(e.state, S.PAYLOAD_REPORTED);
    assert.deepEqual([e.foreign, e.label, e.fsType, e.mediumFilesTruncated], [true, 'config-2', 'iso9660', false]);
    assert.deepEqual(listed(e), [['openstack/content/0000', 22], ['openstack/latest/meta_data.json', 16], ['openstack/latest/user_data', 14]]);
    assert.equal(e.files?.length ?? 0, 0);
    assert.deepEqual(e.targetDir?.length ?? 0, 0);
    const line = audit.find((l) => l.message === 'foreign medium reported, not applied');
    assert.deepEqual([line?.label, line?.files, line?.rule], ['config-2', 3, 'payload.foreign_targets has no directory for this label']);
  });

  it('is applied where payload.foreign_targets maps its label (regardless of case): files at their medium paths, root\'s, 0640; not again unless changed', async () => {
    const target = join(root, 'var/lib/config-drive');
    config.payload.foreignTargets = { 'CONFIG-2': target };
    const tree = await cdTree();
    const e = await apply(tree);
    assert.equal(e.state, S.PAYLOAD_APPLIED, e.error?.message ?? '');
    assert.equal(Buffer.from(e.targetDir!).toString(), target);
    assert.equal(readFileSync(join(target, 'openstack/latest/user_data'), 'utf8'), '#cloud-config\n');
    const st = statSync(join(target, 'openstack/content/0000'));
    assert.deepEqual([st.mode & 0o7777, st.uid, st.gid], [0o640, 0, 0]);
    assert.deepEqual(e.files!.map((f) => [Buffer.from(f.path!).toString(), f.sha256]), [
      [join(target, 'openstack/content/0000'), sha256('nameserver 192.0.2.53\n')],
      [join(target, 'openstack/latest/meta_data.json'), sha256('{"uuid": "0001"}')],
      [join(target, 'openstack/latest/user_data'), sha256('#cloud-config\n')],
    ]);
    assert.match(e.contentSha256!, /^[0-9a-f]{64}$/);
    writeFileSync(join(target, 'openstack/latest/user_data'), 'edited in the guest\n');
    const again = await apply(tree);
    assert.equal(again.state, S.PAYLOAD_SKIPPED);
    assert.equal(readFileSync(join(target, 'openstack/latest/user_data'), 'utf8'), 'edited in the guest\n');
    const changed = await apply(await cdTree([...CONFIG_DRIVE, { path: 'openstack/latest/vendor_data.json', content: { data: Buffer.from('{}') } }], 'cd2'));
    assert.equal(changed.state, S.PAYLOAD_APPLIED);
    assert.equal(readFileSync(join(target, 'openstack/latest/user_data'), 'utf8'), '#cloud-config\n');
  });

  it("follows the owner's write policy: a target outside the allowed prefixes is refused before anything is written", async () => {
    config.fileWrite.allow = [join(root, 'allowed')];
    config.payload.foreignTargets = { 'config-2': join(root, 'elsewhere') };
    const e = await apply(await cdTree());
    assert.equal(e.state, S.PAYLOAD_REFUSED);
    assert.equal(e.error!.code, v1.ErrorCode.ERROR_CODE_POLICY_DENIED);
    assert.match(e.error!.rule!, /file_write\.allow/);
    assert.equal(existsSync(join(root, 'elsewhere')), false);
  });

  it('is not applied when it holds a link, or more files than an event lists (the list says so)', async () => {
    config.payload.foreignTargets = { 'config-2': join(root, 'drive') };
    const tree = await cdTree();
    symlinkSync('/etc/shadow', join(tree, 'openstack/latest/evil'));
    const linked = await apply(tree);
    assert.equal(linked.state, S.PAYLOAD_REFUSED);
    assert.match(linked.error!.message!, /openstack\/latest\/evil on the medium is neither a file nor a directory/);
    const many = join(dir, 'many');
    mkdirSync(many);
    for (let i = 0; i <= MAX_LISTED_FILES; i++) writeFileSync(join(many, `f${String(i).padStart(4, '0')}`), '');
    const big = await apply(many);
    assert.equal(big.state, S.PAYLOAD_REFUSED);
    assert.equal(big.mediumFilesTruncated, true);
    assert.equal(big.mediumFiles!.length, MAX_LISTED_FILES);
    assert.equal(existsSync(join(root, 'drive')), false);
  });

  it('reads a vdsm floppy as FAT shows it', async () => {
    const img = join(dir, 'fd.img');
    await buildVdsmMedium('floppy', CONFIG_DRIVE, img, { label: 'config-2' });
    const tree = join(dir, 'fd');
    mkdirSync(tree);
    execFileSync('mcopy', ['-s', '-i', img, '::/openstack', tree], { env: { ...process.env, MTOOLS_SKIP_CHECK: '1' } });
    const e = await apply(tree, 'config-2', 'vfat');
    assert.deepEqual(listed(e).map(([p]) => p), ['openstack/content/0000', 'openstack/latest/meta_data.json', 'openstack/latest/user_data']);
  });

  it('foreign_media and foreign_targets in agent.conf: defaults, checks', () => {
    assert.deepEqual([defaultConfig().payload.foreignMedia, defaultConfig().payload.foreignTargets], [true, {}]);
    const c = parseConfig('[payload]\nforeign_media = true\nforeign_targets = { config-2 = "/var/lib/cloud/seed/config_drive", SYSPREP = "/srv/sysprep" }\n');
    assert.deepEqual(c.payload.foreignTargets, { 'config-2': '/var/lib/cloud/seed/config_drive', SYSPREP: '/srv/sysprep' });
    assert.deepEqual(parseConfig('[payload.foreign_targets]\n"config-2" = "/x"\n').payload.foreignTargets, { 'config-2': '/x' });
    assert.throws(() => parseConfig('[payload]\nforeign_targets = { a = "relative" }\n'), /payload\.foreign_targets\."a": expected an absolute directory/);
    assert.throws(() => parseConfig('[payload]\nforeign_targets = { a = "/x", A = "/y" }\n'), /label "A" given twice/);
    assert.throws(() => parseConfig('[payload]\nforeign_targets = ["/x"]\n'), /expected a table of volume label/);
  });
});
