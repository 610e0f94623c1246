// End-to-end tests of /console/ in headless Chromium (Debian's chromium,
// driven by playwright-core). tests/browser.rs starts the platform and runs
// this file with its address; by hand:
//   CONSOLE_URL=http://127.0.0.1:8080 ROOT_PASSWORD=… node --test console.test.mjs
//
// Env: CONSOLE_URL (the platform), ROOT_PASSWORD, DEVICE_TOKEN (when the
// platform requires one for /phones and /vcodes), ARTIFACTS_DIR (where the
// screenshots go), CHROMIUM_PATH (default /usr/bin/chromium).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';
import { chromium } from 'playwright-core';

const BASE = (process.env.CONSOLE_URL || 'http://127.0.0.1:8080').replace(/\/$/, '');
const ROOT_PASSWORD = process.env.ROOT_PASSWORD || '';
const DEVICE_TOKEN = process.env.DEVICE_TOKEN || '';
const ARTIFACTS = process.env.ARTIFACTS_DIR || join(process.cwd(), 'artifacts');
const CHROMIUM = process.env.CHROMIUM_PATH || '/usr/bin/chromium';
const WAIT = 15_000;

let browser;

before(async () => {
  mkdirSync(ARTIFACTS, { recursive: true });
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox'] });
});

after(async () => {
  if (browser) await browser.close();
});

/** A fresh page (its own cookies and storage) that fails the test on any script error or CSP report. */
async function open(t, { locale = 'en-US', viewport = { width: 1280, height: 900 } } = {}) {
  const context = await browser.newContext({ locale, viewport });
  const page = await context.newPage();
  page.setDefaultTimeout(WAIT);
  const problems = [];
  page.on('pageerror', (e) => problems.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    // A refused API call (a 403 the test asks for) is logged by the browser
    // as a failed load: that is the dialect answering, not a fault.
    if (m.type() === 'error' && !m.text().startsWith('Failed to load resource')) {
      problems.push(`console: ${m.text()}`);
    }
  });
  t.after(async () => {
    await context.close();
    assert.deepEqual(problems, [], 'no script errors and no CSP violations');
  });
  const resp = await page.goto(`${BASE}/console/`);
  assert.equal(resp.status(), 200);
  await page.locator('body[data-ready=true]').waitFor();
  return page;
}

async function shot(page, name) {
  const path = join(ARTIFACTS, name);
  await page.screenshot({ path, fullPage: true });
  console.log(`screenshot: ${path}`);
  return path;
}

async function text(locator) {
  return (await locator.textContent()).trim();
}

/** Waits until `locator` has exactly `expected` as its text. */
async function waitText(locator, expected) {
  const re = expected instanceof RegExp ? expected : new RegExp(`^\\s*${expected.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}\\s*$`);
  await locator.filter({ hasText: re }).waitFor();
}

async function tab(page, name) {
  await page.locator(`#tab-${name}`).click();
  await page.locator(`#panel-${name}`).waitFor();
}

async function signup(page, user, password) {
  await page.locator('#auth-user').fill(user);
  await page.locator('#auth-password').fill(password);
  await page.locator('#signup').click();
  await waitText(page.locator('#who-user'), user);
}

async function login(page, user, password) {
  await page.locator('#auth-user').fill(user);
  await page.locator('#auth-password').fill(password);
  // From the keyboard: Enter in the password field submits the form.
  await page.locator('#auth-password').press('Enter');
  await waitText(page.locator('#who-user'), user);
}

/** A root form: fill the fields, submit, wait for the result line. */
async function rootForm(page, form, fields, expected) {
  await tab(page, 'admin');
  for (const [id, value] of Object.entries(fields)) {
    const el = page.locator(`#${id}`);
    if ((await el.evaluate((e) => e.tagName)) === 'SELECT') await el.selectOption(value);
    else await el.fill(String(value));
  }
  await page.locator(`#${form}-form [type=submit]`).click();
  await waitText(page.locator(`#${form}-result`), expected);
}

/** A pool device call over HTTP, as a SIM device makes it. */
async function device(path, body) {
  const headers = { 'content-type': 'application/json' };
  if (DEVICE_TOKEN) headers.authorization = `Bearer ${DEVICE_TOKEN}`;
  const resp = await fetch(`${BASE}${path}`, { method: 'POST', headers, body: JSON.stringify(body) });
  const v = await resp.json();
  assert.equal(v.code, 200, `${path}: ${JSON.stringify(v)}`);
  return v;
}

test('the console is served with its policy and redirect', async () => {
  const page = await fetch(`${BASE}/console/`);
  assert.equal(page.status, 200);
  assert.match(page.headers.get('content-type'), /^text\/html/);
  const csp = page.headers.get('content-security-policy');
  assert.match(csp, /default-src 'none'/);
  assert.match(csp, /script-src 'self'/);
  assert.equal(page.headers.get('x-content-type-options'), 'nosniff');
  const js = await fetch(`${BASE}/console/app.js`);
  assert.match(js.headers.get('content-type'), /^text\/javascript/);
  const again = await fetch(`${BASE}/console/app.js`, { headers: { 'if-none-match': js.headers.get('etag') } });
  assert.equal(again.status, 304);
  const bare = await fetch(`${BASE}/console`, { redirect: 'manual' });
  assert.equal(bare.status, 308);
  assert.equal(bare.headers.get('location'), '/console/');
});

test('labels follow the browser language and the switch', async (t) => {
  const page = await open(t, { locale: 'zh-CN' });
  assert.equal(await text(page.locator('h1')), '短信控制台');
  assert.equal(await page.evaluate(() => document.documentElement.lang), 'zh-CN');
  await page.locator('#lang').click();
  assert.equal(await text(page.locator('h1')), 'SMS console');
  assert.equal(await text(page.locator('#tab-numbers')), 'Numbers');
  // Keyboard: arrows move between tabs, and the focused tab's panel shows.
  await page.locator('#tab-account').focus();
  await page.keyboard.press('ArrowRight');
  assert.equal(await page.evaluate(() => document.activeElement.id), 'tab-numbers');
  assert.equal(await page.locator('#panel-numbers').isVisible(), true);
  assert.equal(await page.locator('#panel-account').isVisible(), false);
});

test('the code is found in the SMS text', async (t) => {
  const page = await open(t);
  const cases = [
    ['【欢聚】您的验证码是 482913，5 分钟内有效。', '482913'],
    ['尾号 1234 的账户，验证码：567890', '567890'],
    ['Your code is 7731.', '7731'],
    ['G-904411 is your verification code', '904411'],
    ['201708', '201708'],
    ['no digits here', null],
    ['order 123 shipped', null],
  ];
  const found = await page.evaluate(async (texts) => {
    const { extractCode } = await import('/console/sms.js');
    return texts.map((x) => {
      const r = extractCode(x);
      return r && r.before + r.code + r.after === x ? r.code : r && 'mangled';
    });
  }, cases.map((c) => c[0]));
  assert.deepEqual(found, cases.map((c) => c[1]));
});

test('lease a number and watch its code arrive; the balance moves; a ban kicks out', async (t) => {
  const item = 'com.example.e2e';
  const number = '13900001111';
  const user = 'alice_e2e';

  const root = await open(t);
  await login(root, 'root', ROOT_PASSWORD);
  await rootForm(root, 'item', { 'item-id': item, 'item-name': '<b>E2E</b>', 'item-price': 10, 'item-send-price': 1 }, 'Done.');
  // The pool from root's console: its size, and a number added as a device would.
  await rootForm(root, 'size', { 'pool-size': 50 }, 'Done.');
  await rootForm(root, 'phones', { 'phones-token': DEVICE_TOKEN, 'phones-cid': 'dev-e2e', 'phones-mobiles': number }, `Numbers taken: ${number}.`);

  const page = await open(t);
  await signup(page, user, 'secret12');
  await waitText(page.locator('#balance'), '0');

  await rootForm(root, 'charge', { 'charge-user': user, 'charge-amount': 100 }, `Charged ${user} 100.`);
  await page.locator('#refresh-balance').click();
  await waitText(page.locator('#balance'), '100');

  await tab(page, 'numbers');
  await page.locator('#lease-item').fill(item);
  await page.locator('#lease-operator').selectOption('cmcc');
  await page.locator('#lease-custom').fill(number);
  await page.locator('#lease').click();
  await waitText(page.locator('#lease-result'), 'Leased 1 number(s).');
  assert.equal(await text(page.locator('#lease-table tbody tr td').first()), number);
  // The price is held at once: the available balance drops by it.
  await waitText(page.locator('#balance'), '90');

  await device('/vcodes', { data: [{ mobile: number, vcode: '【Example】您的验证码是 482913，5 分钟内有效。', appname: item }] });
  const mark = page.locator('#messages li mark.code');
  await waitText(mark, '482913');
  assert.match(await text(page.locator('#messages li').first()), /To 13900001111/);
  assert.equal(await page.locator('#messages').getAttribute('aria-live'), 'polite');

  // Texts are shown as text: markup in an SMS stays inert.
  await device('/vcodes', { data: [{ mobile: number, vcode: '<img src=x onerror="document.body.dataset.owned=1"> code 7731', appname: item }] });
  await waitText(page.locator('#messages li').first().locator('mark.code'), '7731');
  assert.match(await text(page.locator('#messages li').first()), /<img src=x/);
  assert.equal(await page.locator('#messages img').count(), 0);
  assert.equal(await page.evaluate(() => document.body.dataset.owned), undefined);

  // The first SMS took the held price: the available balance stays 90.
  await page.locator('#refresh-balance').click();
  await waitText(page.locator('#balance'), '90');

  // Send from the leased number (costs the item's send price).
  await page.locator('#sendmsg-text').fill('hello from the console');
  await page.locator('#sendmsg-form [type=submit]').click();
  await waitText(page.locator('#sendmsg-result'), 'Sent.');
  await waitText(page.locator('#balance'), '89');

  await shot(page, 'console-desktop.png');
  await page.setViewportSize({ width: 390, height: 844 });
  const width = await page.evaluate(() => document.documentElement.scrollWidth);
  assert.ok(width <= 390, `no horizontal scrolling at phone width (page is ${width}px wide)`);
  // The phone shot in Chinese: labels switch in place, data stays.
  await page.locator('#lang').click();
  assert.equal(await text(page.locator('#tab-numbers')), '接码');
  // Result lines are labels too: they follow the switch.
  await waitText(page.locator('#lease-result'), '已获取 1 个号码。');
  await waitText(page.locator('#messages li').last().locator('mark.code'), '482913');
  await shot(page, 'console-phone.png');
  await page.locator('#lang').click();

  await rootForm(root, 'ban', { 'ban-user': user }, 'Done.');
  await waitText(page.locator('#notice'), 'This account has been banned.');
  assert.equal(await page.locator('#auth-form').isVisible(), true);
  await root.locator('#unban').click();
  await waitText(root.locator('#ban-result'), 'Done.');
});

test('signature and template under audit, root approves, the user sends and sees the recipients', async (t) => {
  const user = 'bob_e2e';
  const page = await open(t);
  await signup(page, user, 'secret12');
  const root = await open(t);
  await login(root, 'root', ROOT_PASSWORD);
  await rootForm(root, 'charge', { 'charge-user': user, 'charge-amount': 50 }, `Charged ${user} 50.`);

  await tab(page, 'sending');
  await page.locator('#sig-text').fill('Example');
  await page.locator('#sig-source').fill('app');
  await page.locator('#sig-form [type=submit]').click();
  await waitText(page.locator('#sig-result'), /^Signature \d+ created/);
  const signRow = page.locator('#sig-table tbody tr').first();
  const signId = await text(signRow.locator('td').first());
  assert.equal(await text(signRow.locator('td').nth(3)), 'pending');

  assert.equal(await page.locator('#tpl-sign').inputValue(), signId);
  await page.locator('#tpl-name').fill('login');
  await page.locator('#tpl-content').fill('Your code is ${code}');
  await page.locator('#tpl-type').selectOption('1');
  await page.locator('#tpl-desc').fill('login codes');
  await page.locator('#tpl-form [type=submit]').click();
  await waitText(page.locator('#tpl-result'), /^Template \d+ created/);
  const tempId = await text(page.locator('#tpl-table tbody tr td').first());

  // Not approved yet: the send is refused with the seed's error.
  await page.locator('#task-mobiles').fill('13811112222');
  await page.locator('#task-params').fill('code=482913');
  await page.locator('#task-form [type=submit]').click();
  await waitText(page.locator('#task-result'), 'ER:0031 sign is not passed');

  // A second signature, deleted again from its row.
  await page.locator('#sig-text').fill('Spare');
  await page.locator('#sig-source').fill('app');
  await page.locator('#sig-form [type=submit]').click();
  await waitText(page.locator('#sig-result'), /^Signature \d+ created/);
  assert.equal(await page.locator('#sig-table tbody tr').count(), 2);
  const spare = page.locator('#sig-table tbody tr', { hasText: 'Spare' });
  const spareId = await text(spare.locator('td').first());
  await spare.getByRole('button', { name: `Delete ${spareId}` }).click();
  await waitText(page.locator('#sig-result'), `${spareId} deleted.`);
  assert.equal(await page.locator('#sig-table tbody tr').count(), 1);

  // Root rejects the template with a reason; the user edits it, which sends it back to review.
  // Root sees both waiting in "Platform state" and approves the signature from its row.
  await tab(root, 'admin');
  await root.locator('#state-refresh').click();
  await root.locator('#review-table tbody tr').nth(1).waitFor();
  assert.equal(await root.locator('#review-table tbody tr').count(), 2, 'the signature and the template wait');
  await waitText(root.locator('#pool-state'), /^Pool: size \d+, \d+ numbers stored, \d+ leased, \d+ available\.$/);
  assert.ok((await root.locator('#items-table tbody tr').count()) >= 1, 'flow (a) created an item');
  await root.getByRole('button', { name: `Approve Signature ${signId}` }).click();
  await root.locator('#review-table tbody tr').nth(1).waitFor({ state: 'detached' });
  assert.equal(await root.locator('#review-table tbody tr').count(), 1, 'only the template waits');
  await rootForm(root, 'review', { 'review-kind': 'temp', 'review-id': tempId, 'review-status': 'rejected', 'review-reason': 'say what the code is for' }, 'Done.');
  await page.locator('#tpl-refresh').click();
  const tplRow = page.locator('#tpl-table tbody tr').first();
  await waitText(tplRow.locator('td').nth(5), 'rejected');
  assert.equal(await text(tplRow.locator('td').nth(6)), 'say what the code is for');
  await tplRow.getByRole('button', { name: `Edit ${tempId}` }).click();
  assert.equal(await page.evaluate(() => document.activeElement.id), 'tpl-name');
  assert.equal(await page.locator('#tpl-content').inputValue(), 'Your code is ${code}');
  await page.locator('#tpl-content').fill('Your login code is ${code}');
  await page.locator('#tpl-form [type=submit]').click();
  await waitText(page.locator('#tpl-result'), `Template ${tempId} saved (pending review again).`);
  await waitText(page.locator('#tpl-table tbody tr').first().locator('td').nth(5), 'pending');
  await rootForm(root, 'review', { 'review-kind': 'temp', 'review-id': tempId, 'review-status': 'passed', 'review-reason': '' }, 'Done.');
  await root.locator('#state-refresh').click();
  await waitText(root.locator('#state-result'), 'Nothing waits for review.');
  assert.equal(await root.locator('#review-table tbody tr').count(), 0);
  await shot(root, 'console-admin.png');

  await page.locator('#sig-refresh').click();
  await waitText(page.locator('#sig-table tbody tr').first().locator('td').nth(3), 'passed');
  await page.locator('#tpl-refresh').click();
  await waitText(page.locator('#tpl-table tbody tr').first().locator('td').nth(5), 'passed');

  assert.equal(await page.locator('#task-sign').inputValue(), signId);
  assert.equal(await page.locator('#task-temp').inputValue(), tempId);
  await page.locator('#task-mobiles').fill('13811112222\n+86 138-1111-3333');
  await page.locator('#task-form [type=submit]').click();
  await waitText(page.locator('#task-result'), /^Task [0-9a-f-]+ started\.$/);
  const rows = page.locator('#recipient-table tbody tr');
  await rows.nth(1).waitFor();
  assert.deepEqual(await rows.locator('td.mono').allTextContents(), ['13811112222', '13811113333']);
  // The worker sends in the background: ask again until both are sent.
  const deadline = Date.now() + WAIT;
  while ((await rows.locator('td.audit-sent').count()) < 2) {
    assert.ok(Date.now() < deadline, `recipients: ${await rows.allTextContents()}`);
    await page.locator('#status-show').click();
    await page.locator('#status-show:not([disabled])').waitFor();
  }
  assert.match(await text(page.locator('#task-summary')), /【Example】Your login code is 482913/);
  // Two recipients, one segment each.
  await page.locator('#refresh-balance').click();
  await waitText(page.locator('#balance'), '48');
  await shot(page, 'console-sending.png');
});
