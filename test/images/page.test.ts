import { strict as assert } from 'node:assert';
import { mkdirSync, readdirSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { chromium, type Browser, type Page } from 'playwright-core';
import { randomFile, sha256, sha256File, startRig, type Rig } from './helpers';

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

  it('uploads in chunks with a progress bar, pauses, and resumes after a reload with the same file', async () => {
    const t = await rig.server.tickets.create({ image: 'browser.img', size: file.data.length, ops: ['write'] });
    const page = await openPage(t.id);
    assert.equal(await page.inputValue('#ticket'), t.id, 'ticket taken from the URL fragment');
    await page.setInputFiles('#file', file.path);
    await page.click('#start');
    await waitProgress(page, 5 * MiB);
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
    assert.equal(await page.textContent('#status'), `Upload complete: raw, ${file.data.length} bytes.`);
    assert.equal(await page.textContent('#pct'), `100% (${file.data.length} of ${file.data.length} bytes)`);
    const st = rig.server.tickets.status(t.id);
    assert.equal(st.state, 'finalized');
    assert.ok(st.transferred.written < file.data.length + 3 * MiB, `resumed, not restarted: ${st.transferred.written} bytes written`);
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

  it('cancel discards the partial upload', async () => {
    const t = await rig.server.tickets.create({ image: 'cancelled.img', size: file.data.length, ops: ['write'] });
    const page = await openPage(t.id);
    await page.setInputFiles('#file', file.path);
    await page.click('#start');
    await waitProgress(page, 2 * MiB);
    await page.click('#cancel');
    await status(page, /^Upload cancelled/);
    assert.equal(rig.server.tickets.status(t.id).state, 'cancelled');
    assert.deepEqual(readdirSync(rig.storage).filter((f) => f.includes('cancelled')), []);
    await page.close();
  });

  it('shows the server\'s refusal for a bad ticket', async () => {
    const page = await openPage('not-a-ticket');
    await page.setInputFiles('#file', file.path);
    await page.click('#start');
    await status(page, /./);
    assert.equal(await page.textContent('#status'), 'Cannot upload: no such ticket');
    await page.close();
  });
});
