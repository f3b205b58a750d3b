import { strict as assert } from 'node:assert';
import { execFileSync } from 'node:child_process';
import { randomUUID } from 'node:crypto';
import { mkdirSync, readdirSync, readFileSync, statSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium, type Browser, type Page } from 'playwright-core';
import { randomFile, sha256, sha256File, startQemuNbd, startRig, type Rig } from './helpers';

const MiB = 1024 * 1024;
const ARTIFACTS = join(__dirname, '..', '..', 'test-artifacts');

describe('images: browser upload page (headless Debian chromium)', function () {
  this.timeout(90_000);
  let rig: Rig;
  let browser: Browser;
  let file: { path: string; data: Buffer };

  before(async () => {
    rig = await startRig();
    file = randomFile(rig.dir, 'workstation.img', 24 * MiB + 123);
    browser = await chromium.launch({
      executablePath: '/usr/bin/chromium',
      args: ['--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run', '--disable-background-networking', '--disable-component-update', '--disable-sync'],
    });
  });
  after(async () => {
    await browser?.close();
    await rig?.close();
  });

  /** A page on the upload form for `ticket`, whose PUTs are slowed down so a test can act mid-upload. */
  async function openPage(ticket: string): Promise<Page> {
    const page = await browser.newPage();
    await page.route('**/images/**', async (route) => {
      if (route.request().method() === 'PUT') await sleep(60);
      await route.continue();
    });
    await page.goto(`${rig.server.url}/upload#ticket=${ticket}&chunk=${MiB}`);
    return page;
  }
  const progressOf = (page: Page) => page.$eval('#bar', (b) => (b as unknown as { value: number }).value);
  const status = (page: Page, text: RegExp, timeout = 15_000) => page.locator('#status', { hasText: text }).waitFor({ timeout });
  async function waitProgress(page: Page, atLeast: number): Promise<void> {
    while ((await progressOf(page)) < atLeast) await sleep(20);
  }

  const disabled = (page: Page, id: string) => page.$eval(`#${id}`, (b) => (b as unknown as { disabled: boolean }).disabled);
  async function allDisabled(page: Page): Promise<boolean[]> {
    return Promise.all(['start', 'pause', 'resume', 'cancel', 'file'].map((id) => disabled(page, id)));
  }

  it('names the target disk, shows speed and time left, pauses, and resumes after a reload with the same file', async () => {
    const t = await rig.server.tickets.create({ image: 'browser.img', size: file.data.length, ops: ['write'] });
    const page = await openPage(t.id);
    assert.equal(await page.inputValue('#ticket'), t.id, 'ticket taken from the URL fragment');
    await page.locator('#target', { hasText: 'browser.img' }).waitFor();
    assert.equal(await page.textContent('#target'), `Target disk: browser.img (24 MiB, ${file.data.length} bytes)`);
    await page.setInputFiles('#file', file.path);
    await page.click('#start');
    await waitProgress(page, 5 * MiB);
    assert.match(String(await page.textContent('#speed')), /^\d+(\.\d)? MiB\/s, \d+:\d\d left$/);
    await page.click('#pause');
    await status(page, /^Paused at byte/);
    await sleep(300);
    const paused = rig.server.tickets.status(t.id);
    assert.ok(paused.upload.resumeOffset >= 5 * MiB && paused.upload.resumeOffset < file.data.length, `server holds ${paused.upload.resumeOffset}`);
    const stopped = paused.upload.covered;
    await sleep(300);
    assert.equal(rig.server.tickets.status(t.id).upload.covered, stopped, 'nothing is sent while paused');

    await page.reload();
    await page.setInputFiles('#file', file.path);
    await page.click('#start');
    await status(page, /^Continuing at byte \d+ \(same file confirmed\)|^Upload complete/);
    await status(page, /^Upload complete/, 60_000);
    assert.equal(await page.textContent('#status'), `Upload complete: browser.img is raw, ${file.data.length} bytes.`);
    assert.equal(await page.textContent('#pct'), `100% (${file.data.length} of ${file.data.length} bytes)`);
    const st = rig.server.tickets.status(t.id);
    assert.equal(st.state, 'finalized');
    assert.ok(st.bytes.written < file.data.length + 3 * MiB, `resumed, not restarted: ${st.bytes.written} bytes written`);
    assert.equal(await sha256File(join(rig.storage, 'browser.img')), sha256(file.data));
    mkdirSync(ARTIFACTS, { recursive: true });
    await page.screenshot({ path: join(ARTIFACTS, 'images-upload-page.png'), fullPage: true });
    await page.close();
  });

  it('a different file after a reload is detected and the upload starts over', async () => {
    const t = await rig.server.tickets.create({ image: 'swap.img', size: file.data.length, ops: ['write'] });
    const other = randomFile(rig.dir, 'other.img', file.data.length);
    const page = await openPage(t.id);
    await page.setInputFiles('#file', file.path);
    await page.click('#start');
    await waitProgress(page, 3 * MiB);
    await page.click('#pause');
    await page.reload();
    await page.setInputFiles('#file', other.path);
    await page.click('#start');
    await status(page, /^This is not the file uploaded before/);
    await status(page, /^Upload complete/, 60_000);
    assert.equal(await sha256File(join(rig.storage, 'swap.img')), sha256(other.data));
    await page.close();
  });

  it('cancel discards the partial upload and disables the controls', async () => {
    const t = await rig.server.tickets.create({ image: 'cancelled.img', size: file.data.length, ops: ['write'] });
    const page = await openPage(t.id);
    await page.setInputFiles('#file', file.path);
    await page.click('#start');
    await waitProgress(page, 2 * MiB);
    await page.click('#cancel');
    await status(page, /^Upload cancelled/);
    assert.equal(rig.server.tickets.status(t.id).state, 'cancelled');
    assert.deepEqual(readdirSync(rig.storage).filter((f) => f.includes('cancelled')), []);
    assert.deepEqual(await allDisabled(page), [true, true, true, true, true]);
    await page.close();
  });

  it('a refusal by the format check is shown and disables every control', async () => {
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', '-b', '/etc/shadow', '-F', 'raw', join(rig.dir, 'evil.qcow2'), '1M']);
    const evil = join(rig.dir, 'evil.qcow2');
    const t = await rig.server.tickets.create({ image: 'evil.qcow2', size: statSync(evil).size, ops: ['write'] });
    const page = await openPage(t.id);
    await page.setInputFiles('#file', evil);
    await page.click('#start');
    await status(page, /refused/);
    assert.equal(await page.textContent('#status'), 'Upload stopped: image refused: qcow2 image has a backing file. This ticket cannot be used any more.');
    assert.deepEqual(await allDisabled(page), [true, true, true, true, true]);
    assert.ok(!readdirSync(rig.storage).includes('evil.qcow2'));
    await page.close();
  });

  it('keeps the ticket alive while the page is open; a ticket that ends is shown and the controls go off', async () => {
    // A long timeout while the page loads (a loaded machine may take seconds), then a short one renewed by the page alone.
    const kept = { uuid: randomUUID(), size: file.data.length, ops: ['write'], timeout: 60, url: `file://${join(rig.storage, 'kept.img')}` };
    await rig.server.tickets.add(kept);
    const page = await browser.newPage();
    await page.goto(`${rig.server.url}/upload#ticket=${kept.uuid}&keepalive=400`);
    await page.locator('#target', { hasText: 'kept.img' }).waitFor();
    await rig.server.tickets.add({ ...kept, timeout: 3 });
    assert.equal(rig.server.tickets.status(kept.uuid).timeout, 3);
    await sleep(7000);
    assert.equal(rig.server.tickets.status(kept.uuid).expired, false, 'alive 7 s into a 3 s timeout');
    await rig.server.tickets.revoke(kept.uuid);
    await status(page, /^The ticket ended: ticket deleted\.$/, 10_000);
    assert.deepEqual(await allDisabled(page), [true, true, true, true, true]);
    await page.close();
    // Without the page, the ticket expires on its own.
    const u = await rig.server.tickets.create({ image: 'left.img', size: 100, ops: ['write'], timeout: 1 });
    await sleep(1500);
    assert.equal(rig.server.tickets.status(u.id).expired, true);
  });

  it('uploads into an NBD export (qemu-nbd serving a qcow2) with an imageio ticket: PUTs and a flush, no finalize', async () => {
    const disk = join(rig.dir, 'vm-disk.qcow2');
    execFileSync('qemu-img', ['create', '-q', '-f', 'qcow2', disk, String(file.data.length)]);
    const nbd = await startQemuNbd(rig.dir, disk, 'qcow2');
    try {
      const uuid = randomUUID();
      await rig.server.tickets.add({ uuid, size: file.data.length, ops: ['write'], timeout: 300, url: nbd.url, filename: 'vm-disk' });
      const page = await openPage(uuid);
      await page.locator('#target', { hasText: 'vm-disk' }).waitFor();
      await page.setInputFiles('#file', file.path);
      await page.click('#start');
      await status(page, /^Upload complete/, 60_000);
      assert.equal(await page.textContent('#status'), `Upload complete: ${file.data.length} bytes written to vm-disk.`);
      await rig.server.tickets.revoke(uuid);
      await page.close();
    } finally {
      await nbd.stop();
    }
    const out = join(rig.dir, 'vm-disk.raw');
    execFileSync('qemu-img', ['convert', '-f', 'qcow2', '-O', 'raw', disk, out]);
    // qcow2 rounds the virtual size up to 512 bytes; the guest sees the file, then zeros.
    const guest = readFileSync(out);
    assert.ok(guest.subarray(0, file.data.length).equals(file.data), 'the guest sees the uploaded file');
  });

  it('shows the server\'s refusal for a bad ticket and keeps the controls off', async () => {
    const page = await openPage('not-a-ticket');
    await status(page, /./);
    assert.equal(await page.textContent('#status'), 'Cannot use this ticket: no such ticket. This ticket cannot be used any more.');
    assert.deepEqual(await allDisabled(page), [true, true, true, true, true]);
    await page.close();
  });
});
