// End-to-end tests of the FastGate admin dashboard in a real Chromium.
//
// Starts the REAL fastgate binary ($FASTGATE_BIN) in front of the mock backend
// ($MOCK_BACKEND_BIN), drives /admin/ui/ with playwright-core + Debian's chromium,
// and sends proxy traffic from node. Run: `npm ci && node --test` in e2e/ with
// FASTGATE_BIN and MOCK_BACKEND_BIN set (CHROMIUM_PATH or CHROMIUM_BIN, default /usr/bin/chromium).

import { test, before, after, describe } from 'node:test';
import assert from 'node:assert/strict';
import { execFileSync, spawn } from 'node:child_process';
import fs from 'node:fs';
import net from 'node:net';
import os from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = path.dirname(fileURLToPath(import.meta.url));
const SHOTS = path.join(HERE, 'screenshots');
const ADMIN_TOKEN = 'e2e-admin-token';
const XSS = '<img src=x onerror=alert(1)>';
const CHROMIUM = process.env.CHROMIUM_PATH || process.env.CHROMIUM_BIN || '/usr/bin/chromium';
const CHROME_ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const children = [];
let tmp;
let base; // http://127.0.0.1:PORT
let mockBase; // the mock backend's http://127.0.0.1:PORT
let browser;
const dialogs = []; // every JS dialog any page opened (must stay empty)
const foreignRequests = []; // requests to anything but the gateway (must stay empty: no CDN)
const failedAssets = []; // dashboard assets that did not load
const pageErrors = []; // uncaught exceptions and console errors (CSP violations included)
const tokenInUrl = []; // requests other than the first navigation that carry ?token=
// The CSP the server is meant to send; the tests enforce it themselves so the page is
// proven to work under it whatever the server sends. data: images are for the icons
// inside Bootstrap's CSS (select arrows, checkbox ticks).
const CSP = "default-src 'self'; img-src 'self' data:; object-src 'none'; base-uri 'none'; frame-ancestors 'none'";

function need(name) {
  const v = process.env[name];
  if (!v) throw new Error(`${name} must point at the built binary (see e2e/dashboard.test.mjs header)`);
  if (!fs.existsSync(v)) throw new Error(`${name}=${v} does not exist`);
  return v;
}

function freePort() {
  return new Promise((resolve, reject) => {
    const srv = net.createServer();
    srv.unref();
    srv.on('error', reject);
    srv.listen(0, '127.0.0.1', () => {
      const { port } = srv.address();
      srv.close(() => resolve(port));
    });
  });
}

function startChild(name, bin, args) {
  const log = fs.openSync(path.join(tmp, `${name}.log`), 'a');
  const child = spawn(bin, args, { stdio: ['ignore', log, log], env: { ...process.env, RUST_LOG: process.env.RUST_LOG || 'info' } });
  child.name = name;
  child.on('exit', (code, sig) => { child.exited = { code, sig }; });
  children.push(child);
  return child;
}

function logTail(name) {
  try {
    const txt = fs.readFileSync(path.join(tmp, `${name}.log`), 'utf8');
    return txt.split('\n').slice(-40).join('\n');
  } catch { return '(no log)'; }
}

async function killAll() {
  await Promise.all(children.map((c) => new Promise((resolve) => {
    if (c.exitCode !== null || c.signalCode !== null) return resolve();
    const t = setTimeout(() => { try { c.kill('SIGKILL'); } catch { /* gone */ } }, 3000);
    c.once('exit', () => { clearTimeout(t); resolve(); });
    try { c.kill('SIGTERM'); } catch { clearTimeout(t); resolve(); }
  })));
}
// Last resort if the runner dies before `after` runs.
process.on('exit', () => { for (const c of children) { try { c.kill('SIGKILL'); } catch { /* gone */ } } });

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));

async function waitFor(what, fn, { timeout = 15000, interval = 200 } = {}) {
  const deadline = Date.now() + timeout;
  let last;
  while (Date.now() < deadline) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (e) { last = e; }
    await sleep(interval);
  }
  throw new Error(`timed out waiting for ${what}${last ? `: ${last.message}` : ''}`);
}

async function waitHealthy(child, name, url) {
  await waitFor(`${url} to answer 200`, async () => {
    if (child.exited) throw new Error(`${name} exited early (${JSON.stringify(child.exited)}):\n${logTail(name)}`);
    const res = await fetch(url).catch(() => null);
    return res && res.status === 200;
  }, { timeout: 30000, interval: 250 }).catch((e) => {
    throw new Error(`${e.message}\n--- ${name} log ---\n${logTail(name)}`);
  });
}

function chat(apiKey, { stream = false, model = 'gpt-e2e', headers = {} } = {}) {
  return fetch(`${base}/proxy/v1/chat/completions`, {
    method: 'POST',
    headers: { 'content-type': 'application/json', authorization: `Bearer ${apiKey}`, ...headers },
    body: JSON.stringify({ model, stream, messages: [{ role: 'user', content: 'hello from e2e' }] }),
  });
}

/** Call the admin API from node, not through the page; resolves to the JSON body (null for 204). */
async function admin(method, p, body) {
  const res = await fetch(`${base}${p}`, {
    method,
    headers: { authorization: `Bearer ${ADMIN_TOKEN}`, ...(body ? { 'content-type': 'application/json' } : {}) },
    body: body ? JSON.stringify(body) : undefined,
  });
  const text = await res.text();
  assert.ok(res.ok, `${method} ${p}: ${res.status} ${text}`);
  return text ? JSON.parse(text) : null;
}

/** Create a key through the admin API and send one request with it; resolves once its audit record is stored. */
async function keyWithTraffic(source) {
  const created = await admin('POST', '/admin/keys', { source_path: source });
  const res = await chat(created.api_key);
  assert.equal(res.status, 200, await res.text());
  const record = await waitFor(`the audit record of ${source}`, async () =>
    (await admin('GET', `/admin/logs?source_path=${encodeURIComponent(source)}`)).items[0], { timeout: 20000, interval: 250 });
  return { key: created, record };
}

async function newPage({ width = 1280, height = 800, locale = 'en-US', timezoneId } = {}) {
  const context = await browser.newContext({ viewport: { width, height }, locale, timezoneId, deviceScaleFactor: 1 });
  const page = await context.newPage();
  page.on('dialog', async (d) => { dialogs.push(`${d.type()}: ${d.message()}`); await d.dismiss().catch(() => {}); });
  page.on('request', (r) => {
    const u = new URL(r.url());
    if (!['http:', 'https:'].includes(u.protocol)) return; // data: URIs from Bootstrap's CSS
    if (`${u.protocol}//${u.host}` !== base) foreignRequests.push(r.url());
    // The entry pages: the dashboard, and M-FastGate's page URLs that open it on a tab.
    const isEntry = r.isNavigationRequest() && ['/admin/ui/', '/admin/ui/keys', '/admin/ui/logs'].includes(u.pathname);
    if (u.searchParams.has('token') && !isEntry) tokenInUrl.push(r.url());
  });
  page.on('response', (r) => {
    if (r.url().includes('/admin/ui/') && r.status() >= 400) failedAssets.push(`${r.status()} ${r.url()}`);
  });
  page.on('requestfailed', (r) => {
    // net::ERR_ABORTED is the browser cancelling a request itself: a navigation or a closed
    // context while the favicon was still loading. A missing asset is a 4xx above; a broken
    // server is any other failure (refused, reset, empty response).
    const why = r.failure()?.errorText ?? 'unknown';
    if (r.url().includes('/admin/ui/') && why !== 'net::ERR_ABORTED') failedAssets.push(`failed (${why}) ${r.url()}`);
  });
  page.on('pageerror', (e) => pageErrors.push(`pageerror: ${e.message}`));
  page.on('console', (m) => {
    // Failed API calls (401 for a wrong token, 404 for a stale row) are logged by the
    // browser as "Failed to load resource"; they are expected in some tests.
    if (m.type() === 'error' && !/Failed to load resource/.test(m.text())) pageErrors.push(`console: ${m.text()}`);
  });
  await context.route('**/admin/ui/**', async (route) => {
    if (route.request().resourceType() !== 'document') return route.continue();
    const response = await route.fetch();
    await route.fulfill({ response, headers: { ...response.headers(), 'content-security-policy': CSP } });
  });
  return { context, page };
}

async function signIn(page, token = ADMIN_TOKEN) {
  await page.goto(`${base}/admin/ui/?token=${encodeURIComponent(token)}`);
}

async function shot(page, name, { fullPage = true } = {}) {
  fs.mkdirSync(SHOTS, { recursive: true });
  await page.waitForFunction(() => !document.querySelector('.modal-backdrop:not(.show)'));
  await page.screenshot({ path: path.join(SHOTS, `${name}.png`), fullPage, animations: 'disabled' });
}

const tid = (page, id) => page.locator(`[data-testid="${id}"]`);

/** Click refresh and wait for the dashboard's API calls to finish. */
async function refresh(page) {
  const done = page.waitForResponse((r) => r.url().includes('/admin/metrics'));
  await tid(page, 'refresh-btn').click();
  await done;
  await page.waitForFunction(() => document.getElementById('refresh-spinner').classList.contains('d-none'));
}

function keyRow(page, sourceText) {
  return page.locator('[data-testid="key-row"]', { has: page.locator('[data-testid="key-source-text"]', { hasText: sourceText }) });
}

/** A signed-in page (`newPage` options) on the keys tab filtered to `source`, and its row. */
async function openKeyRow(source, opts = {}) {
  const { context, page } = await newPage(opts);
  await signIn(page);
  await tid(page, 'app-view').waitFor({ state: 'visible' });
  await tid(page, 'tab-keys').click();
  await tid(page, 'keys-filter-source').fill(source);
  await tid(page, 'keys-filter-source').press('Enter');
  const row = keyRow(page, source);
  await row.waitFor({ state: 'visible' });
  return { context, page, row };
}

async function createKeyInUi(page, source, name, { never = false, days = '' } = {}) {
  await tid(page, 'tab-keys').click();
  await tid(page, 'key-source').fill(source);
  if (name) await tid(page, 'key-name').fill(name);
  await tid(page, 'key-never').setChecked(never);
  if (!never) await tid(page, 'key-days').fill(String(days));
  await tid(page, 'key-create-submit').click();
  await tid(page, 'new-key-box').waitFor({ state: 'visible' });
  const apiKey = await tid(page, 'new-key-value').inputValue();
  await keyRow(page, source).first().waitFor();
  return apiKey;
}

/** Start a FastGate (fresh SQLite file) in front of the mock; resolves to its base URL. */
async function startGateway(name) {
  const port = await freePort();
  const cfg = path.join(tmp, `${name}.yaml`);
  fs.writeFileSync(cfg, [
    `app: {host: "127.0.0.1", port: ${port}}`,
    `database: {url: "sqlite:///${path.join(tmp, `${name}.db`)}"}`,
    `security: {admin_token: "${ADMIN_TOKEN}", key_prefix: "fg_", default_expiry_days: 365}`,
    'api_gateway:',
    `  backend_url: "${mockBase}"`,
    '  backend_path: "/v1/chat/completions"',
    '  real_api_key: "sk-e2e-real"',
    '  strip_headers: ["host", "x-api-key", "authorization", "x-forwarded-for"]',
    '  async_audit: true',
    '  timeout: 60',
    // Each gateway its own spool file in the temp dir (the default is relative to the working
    // directory, where a second gateway would find the first one's lock and run without one).
    `audit: {spool_file: "${path.join(tmp, `${name}.spool`)}"}`,
    '',
  ].join('\n'));
  const gate = startChild(name, need('FASTGATE_BIN'), ['--config', cfg]);
  const url = `http://127.0.0.1:${port}`;
  await waitHealthy(gate, name, `${url}/health`);
  return url;
}

/**
 * Run `fn(page)` on the dashboard of the gateway at `url` (signed in through `?token=`, English,
 * 1280 px) in a context of its own, closed afterwards; fails if the page threw.
 */
async function onDashboard(url, fn) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 800 }, locale: 'en-US' });
  const errors = [];
  try {
    const page = await context.newPage();
    page.on('pageerror', (e) => errors.push(e.message));
    await page.goto(`${url}/admin/ui/?token=${encodeURIComponent(ADMIN_TOKEN)}`);
    await fn(page);
  } finally {
    await context.close();
  }
  assert.deepEqual(errors, []);
}

before(async () => {
  need('FASTGATE_BIN');
  const mockBin = need('MOCK_BACKEND_BIN');
  assert.ok(fs.existsSync(CHROMIUM), `chromium not found at ${CHROMIUM} (apt-get install -y chromium, or set CHROMIUM_PATH)`);
  tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'fastgate-e2e-'));

  const mockPort = await freePort();
  const mock = startChild('mock_backend', mockBin, ['--listen', `127.0.0.1:${mockPort}`]);
  await waitFor('mock backend to listen', async () => {
    if (mock.exited) throw new Error(`mock_backend exited early:\n${logTail('mock_backend')}`);
    return new Promise((resolve) => {
      const s = net.connect(mockPort, '127.0.0.1', () => { s.destroy(); resolve(true); });
      s.on('error', () => resolve(false));
    });
  });

  mockBase = `http://127.0.0.1:${mockPort}`;
  base = await startGateway('fastgate');

  browser = await chromium.launch({ executablePath: CHROMIUM, headless: true, args: CHROME_ARGS });
});

after(async () => {
  try { if (browser) await browser.close(); } finally {
    await killAll();
    if (tmp && !process.env.E2E_KEEP_TMP) fs.rmSync(tmp, { recursive: true, force: true });
  }
});

describe('FastGate dashboard', { concurrency: 1 }, () => {
  let page;
  let context;
  let apiKey;
  const source = 'e2e-user';

  test('opens with ?token=, then removes the token from the address bar', async () => {
    ({ context, page } = await newPage());
    await signIn(page);
    await tid(page, 'app-view').waitFor({ state: 'visible' });
    assert.ok(!page.url().includes('token'), `token still in URL: ${page.url()}`);
    assert.equal(new URL(page.url()).pathname, '/admin/ui/');
    const stored = await page.evaluate(() => sessionStorage.getItem('fastgate.admin_token'));
    assert.equal(stored, ADMIN_TOKEN);
    assert.equal(await tid(page, 'signin-view').isVisible(), false);
    // System status comes from /health.
    await page.waitForFunction(() => document.querySelector('[data-testid="health-status"]').getAttribute('data-status') === 'healthy');
    assert.match(await tid(page, 'health-db').textContent(), /reachable/);
    await tid(page, 'health-uptime').filter({ hasNotText: '—' }).waitFor();
    // Fresh instance: the empty states are shown.
    await tid(page, 'chart-empty').waitFor({ state: 'visible' });
    assert.equal(await tid(page, 'stat-requests').getAttribute('data-value'), '0');
  });

  test('creates a key in the UI and shows it once in the copy box', async () => {
    apiKey = await createKeyInUi(page, source, 'e2e laptop');
    assert.match(apiKey, /^fg_\S{16,}$/, `unexpected key: ${apiKey}`);
    assert.match(await tid(page, 'new-key-box').textContent(), /shown only once/);
    const row = keyRow(page, source);
    assert.equal(await row.locator('[data-testid="key-status"]').getAttribute('data-status'), 'active');
    // The list shows the masked form only, never the full key.
    assert.ok(!(await tid(page, 'keys-body').textContent()).includes(apiKey), 'full key shown in the list');
    await shot(page, 'desktop-keys');
    await tid(page, 'new-key-dismiss').click();
    await tid(page, 'new-key-box').waitFor({ state: 'hidden' });
    assert.equal(await tid(page, 'new-key-value').inputValue(), '');
  });

  test('proxy traffic (plain and stream) shows up in the audit log, cards and chart', async () => {
    await tid(page, 'tab-dashboard').click();
    const before = Number(await tid(page, 'stat-requests').getAttribute('data-value'));
    const chartBefore = Number(await tid(page, 'trend-chart').getAttribute('data-total-requests'));

    for (let i = 0; i < 3; i++) {
      const res = await chat(apiKey);
      const body = await res.text();
      assert.equal(res.status, 200, `plain request ${i}: ${body}`);
      assert.ok(JSON.parse(body).choices, `no choices in ${body}`);
    }
    for (let i = 0; i < 2; i++) {
      const res = await chat(apiKey, { stream: true });
      const body = await res.text();
      assert.equal(res.status, 200, `stream request ${i}: ${body}`);
      assert.match(body, /^data: /m);
    }

    await tid(page, 'tab-logs').click();
    await waitFor('5 audit rows', async () => {
      await refresh(page);
      return (await tid(page, 'log-row').count()) >= 5;
    }, { timeout: 20000, interval: 500 });

    const rows = await page.$$eval('[data-testid="log-row"]', (trs) => trs.map((tr) => ({
      stream: tr.getAttribute('data-stream'),
      badge: tr.querySelector('[data-testid="log-stream-badge"]').textContent,
      badgeStream: tr.querySelector('[data-testid="log-stream-badge"]').getAttribute('data-stream'),
      status: tr.getAttribute('data-status'),
      text: tr.textContent,
    })));
    assert.equal(rows.length, 5, JSON.stringify(rows));
    assert.equal(rows.filter((r) => r.stream === 'true').length, 2);
    assert.equal(rows.filter((r) => r.stream === 'false').length, 3);
    for (const r of rows) {
      assert.equal(r.badgeStream, r.stream);
      assert.equal(r.badge, r.stream === 'true' ? 'Stream' : 'Plain');
      assert.equal(r.status, '200');
      assert.ok(r.text.includes(source), `row lacks source path: ${r.text}`);
    }
    // Newest first: the two stream requests were sent last.
    assert.deepEqual(rows.map((r) => r.stream), ['true', 'true', 'false', 'false', 'false']);

    // Filter: stream only.
    await tid(page, 'logs-filter-stream').selectOption('true');
    await waitFor('stream filter', async () => {
      const s = await page.$$eval('[data-testid="log-row"]', (trs) => trs.map((tr) => tr.getAttribute('data-stream')));
      return s.length === 2 && s.every((x) => x === 'true');
    });
    await tid(page, 'logs-filter-reset').click();
    await waitFor('filter reset', async () => (await tid(page, 'log-row').count()) === 5);

    // Detail view of one record.
    await tid(page, 'log-row').first().click();
    await tid(page, 'log-detail').waitFor({ state: 'visible' });
    const detail = await tid(page, 'log-detail-body').textContent();
    assert.ok(detail.includes('/proxy/v1/chat/completions'), detail);
    assert.ok(detail.includes(source), detail);
    await shot(page, 'desktop-log-detail');
    await tid(page, 'log-detail-close').click();
    await tid(page, 'log-detail').waitFor({ state: 'hidden' });
    await page.locator('.modal-backdrop').waitFor({ state: 'detached' });
    await shot(page, 'desktop-logs');

    // Cards and chart changed.
    await tid(page, 'tab-dashboard').click();
    await refresh(page);
    const after = Number(await tid(page, 'stat-requests').getAttribute('data-value'));
    const chartAfter = Number(await tid(page, 'trend-chart').getAttribute('data-total-requests'));
    assert.ok(after >= before + 5, `requests card ${before} -> ${after}`);
    assert.ok(chartAfter >= chartBefore + 5, `chart total ${chartBefore} -> ${chartAfter}`);
    assert.equal(await tid(page, 'stat-stream').getAttribute('data-value'), '2');
    assert.equal(await tid(page, 'chart-empty').isVisible(), false);
    assert.match(await tid(page, 'stat-success').textContent(), /100/);
    // Latency figures over the 5 proxied requests (the mock answers in well under a second).
    assert.ok(Number(await tid(page, 'stat-latency').getAttribute('data-samples')) >= 5);
    assert.match(await tid(page, 'stat-latency').textContent(), /^\d+(\.\d+)? m?s \/ /);
    // The chart follows the window selector.
    await tid(page, 'window-1h').click();
    await page.waitForFunction(() => document.querySelector('[data-testid="trend-chart"]').getAttribute('data-points') === '60'
      || document.querySelector('[data-testid="trend-chart"]').getAttribute('data-points') === '61');
    assert.ok(Number(await tid(page, 'trend-chart').getAttribute('data-total-requests')) >= 5);
    // 30 days: one point per UTC day (31 with the partial first day).
    await tid(page, 'window-30d').click();
    await page.waitForFunction(() => document.querySelector('[data-testid="trend-chart"]').getAttribute('data-points') === '31');
    assert.ok(Number(await tid(page, 'trend-chart').getAttribute('data-total-requests')) >= 5);
    assert.ok(Number(await tid(page, 'stat-requests').getAttribute('data-value')) >= 5);
    await tid(page, 'window-1h').click();
    await page.waitForFunction(() => document.querySelector('[data-testid="trend-chart"]').getAttribute('data-points') === '60'
      || document.querySelector('[data-testid="trend-chart"]').getAttribute('data-points') === '61');
    await shot(page, 'desktop-dashboard');
    // Key list shows the usage; "Logs" on a key filters the audit log by it.
    await tid(page, 'tab-keys').click();
    await refresh(page);
    const row = keyRow(page, source);
    assert.equal((await row.locator('[data-testid="key-requests"]').textContent()).trim(), '5');
    assert.notEqual((await row.locator('[data-testid="key-lastused"]').textContent()).trim(), 'never');
    assert.match(await row.locator('[data-testid="key-expires"]').textContent(), /\d{4}/); // default expiry: 365 days
    const keyId = await row.getAttribute('data-key-id');
    await row.locator('[data-testid="key-logs"]').click();
    await tid(page, 'view-logs').waitFor({ state: 'visible' });
    assert.equal(await tid(page, 'logs-filter-key').inputValue(), keyId);
    await waitFor('key-filtered rows', async () => (await tid(page, 'log-row').count()) === 5);
    await tid(page, 'logs-filter-reset').click();
    await tid(page, 'tab-dashboard').click();
  });

  test('disabling the key in the UI makes the proxy answer 401', async () => {
    await tid(page, 'tab-keys').click();
    const row = keyRow(page, source);
    await row.locator('[data-testid="key-toggle"]').click();
    await tid(page, 'confirm-modal').waitFor({ state: 'visible' });
    await tid(page, 'confirm-ok').click();
    await waitFor('status badge "disabled"', async () =>
      (await row.locator('[data-testid="key-status"]').getAttribute('data-status')) === 'disabled');
    const res = await chat(apiKey);
    assert.equal(res.status, 401, await res.text());
    // And back on.
    await row.locator('[data-testid="key-toggle"]').click();
    await waitFor('status badge "active"', async () =>
      (await row.locator('[data-testid="key-status"]').getAttribute('data-status')) === 'active');
    const again = await chat(apiKey);
    assert.equal(again.status, 200, await again.text());
  });

  test('rotate shows the new key once; delete asks for confirmation', async () => {
    const oldKey = await createKeyInUi(page, 'e2e-rotate', '', { never: true });
    await tid(page, 'new-key-dismiss').click();
    const row = keyRow(page, 'e2e-rotate');
    assert.equal((await row.locator('[data-testid="key-expires"]').textContent()).trim(), 'never');
    await row.locator('[data-testid="key-rotate"]').click();
    await tid(page, 'confirm-ok').click();
    await tid(page, 'new-key-box').waitFor({ state: 'visible' });
    const newKey = await tid(page, 'new-key-value').inputValue();
    assert.match(newKey, /^fg_/);
    assert.notEqual(newKey, oldKey);
    assert.equal((await chat(newKey)).status, 200);
    assert.equal((await chat(oldKey)).status, 401);
    await tid(page, 'new-key-dismiss').click();

    // Cancel first: the key stays.
    await row.locator('[data-testid="key-delete"]').click();
    await tid(page, 'confirm-modal').waitFor({ state: 'visible' });
    await tid(page, 'confirm-cancel').click();
    await tid(page, 'confirm-modal').waitFor({ state: 'hidden' });
    assert.equal(await row.count(), 1);
    await row.locator('[data-testid="key-delete"]').click();
    await tid(page, 'confirm-modal').waitFor({ state: 'visible' });
    await tid(page, 'confirm-ok').click();
    await waitFor('deleted row to disappear', async () => (await row.count()) === 0);
    assert.equal((await chat(newKey)).status, 401);
  });

  test('rotate can keep the old key working for a grace period', async () => {
    const { key } = await keyWithTraffic('e2e-rotate-grace');
    const { context: ctx, page: p } = await newPage();
    await signIn(p);
    await tid(p, 'app-view').waitFor({ state: 'visible' });
    await tid(p, 'tab-keys').click();
    const row = keyRow(p, 'e2e-rotate-grace');
    await row.waitFor({ state: 'visible' });
    await row.locator('[data-testid="key-rotate"]').click();
    await tid(p, 'confirm-grace').waitFor({ state: 'visible' });
    assert.equal(await tid(p, 'confirm-grace').inputValue(), '0');
    await tid(p, 'confirm-grace').selectOption('300');
    await tid(p, 'confirm-ok').click();
    await tid(p, 'new-key-box').waitFor({ state: 'visible' });
    const newKey = await tid(p, 'new-key-value').inputValue();
    assert.equal((await chat(newKey)).status, 200);
    assert.equal((await chat(key.api_key)).status, 200, 'the old key works during the grace period');
    assert.match(await tid(p, 'toast').textContent(), /The old key works until/);
    // The dialog for a delete has no grace choice.
    await row.locator('[data-testid="key-delete"]').click();
    await tid(p, 'confirm-modal').waitFor({ state: 'visible' });
    assert.equal(await tid(p, 'confirm-grace').isVisible(), false);
    await tid(p, 'confirm-cancel').click();
    await ctx.close();
  });

  test('editing a key in the UI changes what the gateway lets it do, at once', async () => {
    const created = await admin('POST', '/admin/keys', { source_path: 'e2e-edit', name: 'before' });
    assert.equal((await chat(created.api_key)).status, 200); // the key is now in the gateway's cache
    // A time zone far from UTC (CI runs in UTC): a date-time read as UTC would be 8 hours off.
    const { context: ctx, page: p, row } = await openKeyRow('e2e-edit', { timezoneId: 'Asia/Shanghai' });
    assert.equal(await row.locator('[data-testid="key-perms"]').getAttribute('data-perms'), 'chat');
    const patches = [];
    p.on('request', (r) => { if (r.method() === 'PATCH') patches.push(r.postDataJSON()); });

    // Cancel changes nothing; an empty source path is refused in the page.
    await row.locator('[data-testid="key-edit"]').click();
    await tid(p, 'edit-modal').waitFor({ state: 'visible' });
    assert.equal(await tid(p, 'edit-source').inputValue(), 'e2e-edit');
    assert.equal(await tid(p, 'edit-name').inputValue(), 'before');
    assert.equal(await tid(p, 'edit-perms').inputValue(), 'chat');
    await tid(p, 'edit-source').fill('  ');
    await tid(p, 'edit-save').click();
    assert.equal(await tid(p, 'edit-error').textContent(), 'Source path is required.');
    await tid(p, 'edit-cancel').click();
    await tid(p, 'edit-modal').waitFor({ state: 'hidden' });
    assert.deepEqual(patches, []);

    // Name, permissions and expiry in one save: only the changed fields are sent.
    await row.locator('[data-testid="key-edit"]').click();
    await tid(p, 'edit-modal').waitFor({ state: 'visible' });
    assert.equal(await tid(p, 'edit-source').inputValue(), 'e2e-edit', 'the form starts from the key, not the cancelled edit');
    await tid(p, 'edit-name').fill('after');
    await tid(p, 'edit-perms').fill('embeddings');
    await tid(p, 'edit-expiry').selectOption('days');
    await tid(p, 'edit-days').fill('3');
    await shot(p, 'desktop-edit-key', { fullPage: false });
    await tid(p, 'edit-save').click();
    await tid(p, 'edit-modal').waitFor({ state: 'hidden' });
    await waitFor('the row to show the new permissions', async () =>
      (await row.locator('[data-testid="key-perms"]').getAttribute('data-perms')) === 'embeddings');
    assert.equal(await row.locator('[data-testid="key-name-text"]').textContent(), 'after');
    assert.deepEqual(patches, [{ name: 'after', permissions: ['embeddings'], expires_days: 3 }]);
    let stored = await admin('GET', `/admin/keys/${created.id}`);
    assert.equal(stored.name, 'after');
    assert.deepEqual(stored.permissions, ['embeddings']);
    const left = Date.parse(stored.expires_at) - Date.now();
    assert.ok(left > 3 * 86400e3 - 600e3 && left <= 3 * 86400e3, `expires in ${left} ms`);
    // The gateway had the key cached with ["chat"]: the unified endpoint refuses it now.
    const refused = await chat(created.api_key);
    const refusedBody = await refused.text();
    assert.equal(refused.status, 403, refusedBody);
    assert.equal(JSON.parse(refusedBody).error.code, 'permission_denied');

    // Back to chat, without expiry: served again.
    await row.locator('[data-testid="key-edit"]').click();
    await tid(p, 'edit-modal').waitFor({ state: 'visible' });
    await tid(p, 'edit-perms').fill('chat');
    await tid(p, 'edit-expiry').selectOption('never');
    await tid(p, 'edit-save').click();
    await tid(p, 'edit-modal').waitFor({ state: 'hidden' });
    await waitFor('the row to show "never"', async () =>
      (await row.locator('[data-testid="key-expires"]').textContent()).trim() === 'never');
    stored = await admin('GET', `/admin/keys/${created.id}`);
    assert.equal(stored.expires_at, null);
    assert.deepEqual(stored.permissions, ['chat']);
    assert.equal((await chat(created.api_key)).status, 200);

    // An expiry in the past, picked as a date and time: the key is refused at once.
    await row.locator('[data-testid="key-edit"]').click();
    await tid(p, 'edit-modal').waitFor({ state: 'visible' });
    await tid(p, 'edit-expiry').selectOption('at');
    const hourAgo = await p.evaluate(() => {
      const d = new Date(Date.now() - 3600e3);
      const z = (n) => String(n).padStart(2, '0');
      return `${d.getFullYear()}-${z(d.getMonth() + 1)}-${z(d.getDate())}T${z(d.getHours())}:${z(d.getMinutes())}:${z(d.getSeconds())}`;
    });
    await tid(p, 'edit-at').fill(hourAgo);
    await tid(p, 'edit-save').click();
    await tid(p, 'edit-modal').waitFor({ state: 'hidden' });
    await waitFor('the status badge "expired"', async () =>
      (await row.locator('[data-testid="key-status"]').getAttribute('data-status')) === 'expired');
    stored = await admin('GET', `/admin/keys/${created.id}`);
    const ago = Date.now() - Date.parse(stored.expires_at);
    assert.ok(ago > 3500e3 && ago < 3700e3, `expired ${ago} ms ago`);
    assert.equal((await chat(created.api_key)).status, 401);

    // The server's limits are checked in the page, in its language, before anything is sent;
    // the dialog stays open.
    const patchesBefore = patches.length;
    await row.locator('[data-testid="key-edit"]').click();
    await tid(p, 'edit-modal').waitFor({ state: 'visible' });
    await tid(p, 'edit-perms').fill(Array.from({ length: 33 }, (_, i) => `p${i}`).join(','));
    await tid(p, 'edit-save').click();
    assert.equal(await tid(p, 'edit-error').textContent(), 'At most 32 permissions.');
    await tid(p, 'edit-perms').fill('chat models');
    await tid(p, 'edit-save').click();
    assert.match(await tid(p, 'edit-error').textContent(), /^Permission “chat models” is not valid/);
    await tid(p, 'edit-perms').fill('chat');
    await tid(p, 'edit-name').fill('名'.repeat(90)); // 270 bytes in UTF-8
    await tid(p, 'edit-save').click();
    assert.match(await tid(p, 'edit-error').textContent(), /^Name is too long/);
    assert.equal(await tid(p, 'edit-modal').isVisible(), true);
    assert.equal(patches.length, patchesBefore, 'an invalid edit was sent');
    // A date in the past is warned about before saving.
    await tid(p, 'edit-expiry').selectOption('at');
    await tid(p, 'edit-at').fill('2020-01-01T00:00:00');
    await tid(p, 'edit-at-past').waitFor({ state: 'visible' });
    // Escape closes it, and the focus goes back to the key's Edit button.
    await p.keyboard.press('Escape');
    await tid(p, 'edit-modal').waitFor({ state: 'hidden' });
    await p.waitForFunction((id) => {
      const a = document.activeElement;
      return a && a.getAttribute('data-testid') === 'key-edit' && a.closest('[data-key-id]').getAttribute('data-key-id') === id;
    }, created.id);

    // A key deleted elsewhere while its dialog is open: saving says so, closes the dialog and
    // takes the key off the list.
    await row.locator('[data-testid="key-edit"]').click();
    await tid(p, 'edit-modal').waitFor({ state: 'visible' });
    await admin('DELETE', `/admin/keys/${created.id}`);
    await tid(p, 'edit-name').fill('too late');
    await tid(p, 'edit-save').click();
    await tid(p, 'edit-modal').waitFor({ state: 'hidden' });
    assert.equal(await tid(p, 'error-text').textContent(), 'This key no longer exists: it was deleted elsewhere.');
    await waitFor('the deleted key off the list', async () => (await row.count()) === 0);
    await ctx.close();
  });

  test('a key the form could not have made (an import) can still be renamed', async () => {
    // A permission the admin API and its form refuse (a space), as a key imported from
    // M-FastGate may have: `fastgate keys create` refuses it too, so it is set in the database
    // (Python's sqlite3 module: no sqlite3 CLI needed).
    const out = execFileSync(need('FASTGATE_BIN'), ['--config', path.join(tmp, 'fastgate.yaml'), 'keys', 'create',
      '--source-path', 'e2e-cli-key', '--permission', 'chat'], { cwd: tmp, encoding: 'utf8' });
    assert.match(out, /fg_/);
    execFileSync('python3', ['-c',
      'import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit(); c.close()',
      path.join(tmp, 'fastgate.db'),
      `UPDATE api_keys SET permissions = '["chat completions"]' WHERE source_path = 'e2e-cli-key'`]);
    const { context: ctx, page: p, row } = await openKeyRow('e2e-cli-key');
    const id = await row.getAttribute('data-key-id');
    await row.locator('[data-testid="key-edit"]').click();
    await tid(p, 'edit-modal').waitFor({ state: 'visible' });
    await tid(p, 'edit-name').fill('renamed');
    await tid(p, 'edit-save').click();
    await tid(p, 'edit-modal').waitFor({ state: 'hidden' });
    const stored = await admin('GET', `/admin/keys/${id}`);
    assert.equal(stored.name, 'renamed');
    assert.deepEqual(stored.permissions, ['chat completions'], 'the permissions were left alone');
    // The list was drawn again: the focus is on the key's (new) Edit button.
    await p.waitForFunction((kid) => {
      const a = document.activeElement;
      return a && a.getAttribute('data-testid') === 'key-edit' && a.closest('[data-key-id]').getAttribute('data-key-id') === kid;
    }, id);
    await ctx.close();
  });

  test('the audit log filters by a time range, kept across a reload', async () => {
    const { key, record } = await keyWithTraffic('e2e-range');
    const { context: ctx, page: p } = await newPage({ timezoneId: 'Asia/Shanghai' });
    await signIn(p);
    await tid(p, 'app-view').waitFor({ state: 'visible' });
    await tid(p, 'tab-logs').click();
    // Local date-time input values, in the page's own time zone.
    const local = (ms) => p.evaluate((at) => {
      const d = new Date(at);
      const z = (n) => String(n).padStart(2, '0');
      return `${d.getFullYear()}-${z(d.getMonth() + 1)}-${z(d.getDate())}T${z(d.getHours())}:${z(d.getMinutes())}:${z(d.getSeconds())}`;
    }, ms);
    const at = Date.parse(record.timestamp);
    await p.waitForFunction((id) => [...document.querySelectorAll('#lf-key option')].some((o) => o.value === id), key.id);
    await tid(p, 'logs-filter-key').selectOption(key.id);
    await tid(p, 'logs-filter-since').fill(await local(at - 60e3));
    await tid(p, 'logs-filter-until').fill(await local(at + 60e3));
    let answered = p.waitForResponse((r) => r.url().includes('/admin/logs?') && r.url().includes('since='));
    await tid(p, 'logs-filter-apply').click();
    const q = new URL((await answered).url()).searchParams;
    // Whole seconds in the form: within a second of the minute each side.
    const near = (iso, secs) => Math.abs((Date.parse(iso) - at) / 1000 - secs) <= 1;
    assert.ok(near(q.get('since'), -60) && near(q.get('until'), 60), `since=${q.get('since')} until=${q.get('until')} at=${record.timestamp}`);
    await waitFor('the one record in range', async () =>
      (await tid(p, 'log-row').count()) === 1 && (await tid(p, 'log-row').getAttribute('data-request-id')) === record.request_id);

    // A range that ends before the request: nothing, and the page says the filters match nothing.
    await tid(p, 'logs-filter-until').fill(await local(at - 30e3));
    answered = p.waitForResponse((r) => r.url().includes('/admin/logs?') && r.url().includes('until='));
    await tid(p, 'logs-filter-apply').click();
    await answered;
    await tid(p, 'logs-empty').waitFor({ state: 'visible' });
    assert.equal(await tid(p, 'logs-empty').textContent(), 'No records match these filters.');
    assert.equal(await tid(p, 'log-row').count(), 0);

    // A start after the end is refused in the page, without a request.
    await tid(p, 'logs-filter-until').fill(await local(at + 60e3));
    await tid(p, 'logs-filter-since').fill(await local(at + 120e3));
    let asked = false;
    const spy = (r) => { if (r.url().includes('/admin/logs?')) asked = true; };
    p.on('request', spy);
    await tid(p, 'logs-filter-apply').click();
    await tid(p, 'logs-filter-error').waitFor({ state: 'visible' });
    await shot(p, 'desktop-logs-range', { fullPage: false });
    await sleep(300);
    p.off('request', spy);
    assert.equal(asked, false, 'an inverted range was sent to the API');

    // The applied range (the last valid one) is in the address and survives a reload.
    await tid(p, 'logs-filter-since').fill(await local(at - 60e3));
    answered = p.waitForResponse((r) => r.url().includes('/admin/logs?') && r.url().includes('since='));
    await tid(p, 'logs-filter-apply').click();
    await answered;
    assert.equal(await tid(p, 'logs-filter-error').isVisible(), false);
    const url = new URL(p.url());
    assert.ok(near(url.searchParams.get('log_since'), -60) && near(url.searchParams.get('log_until'), 60), url.search);
    const reloaded = p.waitForResponse((r) => r.url().includes('/admin/logs?') && r.url().includes('since='));
    await p.reload();
    await reloaded;
    assert.equal(await tid(p, 'logs-filter-since').inputValue(), await local(at - 60e3));
    assert.equal(await tid(p, 'logs-filter-until').inputValue(), await local(at + 60e3));
    await waitFor('the record again after the reload', async () => (await tid(p, 'log-row').count()) === 1);
    // Reset clears the range too.
    await tid(p, 'logs-filter-reset').click();
    await waitFor('the range cleared', async () => !new URL(p.url()).searchParams.has('log_since'));
    assert.equal(await tid(p, 'logs-filter-since').inputValue(), '');
    await ctx.close();
  });

  test('a dialog answered while it is still fading in closes all the same', async () => {
    await admin('POST', '/admin/keys', { source_path: 'e2e-fast-click' });
    const { context: ctx, page: p, row } = await openKeyRow('e2e-fast-click');
    // OK clicked in the same tick as the dialog opens (Bootstrap ignores hide() mid-fade).
    await row.locator('[data-testid="key-toggle"]').click({ noWaitAfter: true });
    await p.evaluate(() => document.querySelector('[data-testid="confirm-ok"]').click());
    await p.waitForFunction(() => document.getElementById('confirm-modal').getAttribute('data-modal') === 'hidden',
      null, { timeout: 5000 });
    await waitFor('status badge "disabled"', async () =>
      (await row.locator('[data-testid="key-status"]').getAttribute('data-status')) === 'disabled');
    // The page is usable: the next dialog opens and closes normally.
    await row.locator('[data-testid="key-edit"]').click();
    await tid(p, 'edit-modal').waitFor({ state: 'visible' });
    await tid(p, 'edit-cancel').click();
    await tid(p, 'edit-modal').waitFor({ state: 'hidden' });
    await ctx.close();
  });

  test('Escape pressed while a dialog still fades in closes it', async () => {
    await keyWithTraffic('e2e-fast-escape');
    const { context: ctx, page: p, row } = await openKeyRow('e2e-fast-escape');
    // The state each dialog was in when Escape went down: it must be the fade-in.
    await p.evaluate(() => {
      window.fgEscapeStates = [];
      document.addEventListener('keydown', (ev) => {
        if (ev.key !== 'Escape') return;
        for (const m of document.querySelectorAll('.modal')) if (m.getAttribute('data-modal') === 'showing') window.fgEscapeStates.push(m.id);
      }, true);
    });
    const escapeWhileShowing = async (open, id) => {
      await open();
      await p.keyboard.press('Escape');
      await p.waitForFunction((m) => document.getElementById(m).getAttribute('data-modal') === 'hidden', id, { timeout: 5000 });
      assert.equal(await p.evaluate(() => window.fgEscapeStates.pop()), id, `${id} was still fading in`);
      await p.waitForFunction(() => !document.querySelector('.modal-backdrop'));
    };
    await escapeWhileShowing(() => row.locator('[data-testid="key-edit"]').click({ noWaitAfter: true }), 'edit-modal');
    await escapeWhileShowing(() => row.locator('[data-testid="key-delete"]').click({ noWaitAfter: true }), 'confirm-modal');
    await tid(p, 'tab-logs').click();
    const logRow = p.locator('[data-testid="log-row"]').first();
    await logRow.waitFor({ state: 'visible' });
    await escapeWhileShowing(() => logRow.click({ noWaitAfter: true }), 'log-modal');
    // Escape closed them, so nothing was deleted.
    await tid(p, 'tab-keys').click();
    await row.waitFor({ state: 'visible' });
    await ctx.close();
  });

  test('the 30-day chart says its days are UTC days (axis and tooltip), in both languages', async () => {
    const { context: ctx, page: p } = await newPage({ timezoneId: 'America/New_York' });
    await signIn(p);
    await tid(p, 'app-view').waitFor({ state: 'visible' });
    const axis = () => p.evaluate(() => {
      const c = window.Chart.getChart(document.getElementById('trend-chart'));
      const title = c.options.plugins.tooltip.callbacks.title;
      return { shown: c.options.scales.x.title.display, text: c.options.scales.x.title.text,
        tip: title.call(c.tooltip, [{ chart: c, dataIndex: c.data.labels.length - 1, label: c.data.labels[c.data.labels.length - 1] }]),
        last: c.data.labels[c.data.labels.length - 1] };
    });
    await tid(p, 'window-30d').click();
    await p.waitForFunction(() => document.getElementById('trend-chart').getAttribute('data-points') === '31');
    let a = await axis();
    assert.equal(a.shown, true);
    assert.equal(a.text, 'Day (UTC)');
    assert.equal(a.tip, `${a.last} UTC`);
    // The last bar is today in UTC, not in New York.
    const today = new Date().toLocaleString('en-US', { month: '2-digit', day: '2-digit', timeZone: 'UTC' });
    assert.equal(a.last, today);
    await tid(p, 'lang-select').selectOption('zh');
    await p.waitForFunction(() => document.getElementById('trend-chart').getAttribute('data-x-title') === '日期（UTC）');
    assert.equal((await axis()).shown, true);
    // Hours are local times: no UTC title there.
    await tid(p, 'window-24h').click();
    await p.waitForFunction(() => document.getElementById('trend-chart').getAttribute('data-points') !== '31');
    a = await axis();
    assert.equal(a.shown, false);
    assert.doesNotMatch(a.tip, /UTC/);
    await ctx.close();
  });

  test('every control has a label in the page\'s language (placeholders are not labels)', async () => {
    const { context: ctx, page: p } = await newPage({ locale: 'zh-CN' });
    await signIn(p);
    await tid(p, 'app-view').waitFor({ state: 'visible' });
    await p.waitForFunction(() => document.documentElement.lang === 'zh-CN');
    const unlabelled = () => p.evaluate(() => [...document.querySelectorAll('input, select, textarea, button')]
      .filter((e) => e.offsetParent !== null)
      .filter((e) => {
        const label = e.labels && [...e.labels].some((l) => l.textContent.trim());
        const aria = (e.getAttribute('aria-label') || '').trim() || e.getAttribute('aria-labelledby') || e.getAttribute('title');
        return !label && !aria && !(e.tagName === 'BUTTON' && e.textContent.trim());
      })
      .map((e) => e.id || e.outerHTML.slice(0, 80)));
    for (const tab of ['dashboard', 'keys', 'logs']) {
      await tid(p, `tab-${tab}`).click();
      await tid(p, `view-${tab}`).waitFor({ state: 'visible' });
      assert.deepEqual(await unlabelled(), [], `unlabelled controls on ${tab}`);
    }
    await tid(p, 'tab-keys').click();
    const names = () => p.evaluate(() => ({
      source: [...document.getElementById('kfl-source').labels].map((l) => l.textContent.trim()).join(' '),
      status: document.getElementById('kfl-status').getAttribute('aria-label'),
    }));
    assert.deepEqual(await names(), { source: '来源路径 (source_path)', status: '状态' });
    await tid(p, 'lang-select').selectOption('en');
    await p.waitForFunction(() => document.documentElement.lang === 'en');
    assert.deepEqual(await names(), { source: 'Source path', status: 'Status' });
    await ctx.close();
  });

  test('API errors are shown as readable messages', async () => {
    // A key with a 7-day expiry, deleted behind the page's back: acting on the stale row
    // gets a 404 whose error.message the page must show.
    await createKeyInUi(page, 'e2e-stale', '', { days: 7 });
    await tid(page, 'new-key-dismiss').click();
    const row = keyRow(page, 'e2e-stale');
    const id = await row.getAttribute('data-key-id');
    const del = await fetch(`${base}/admin/keys/${encodeURIComponent(id)}`, { method: 'DELETE', headers: { authorization: `Bearer ${ADMIN_TOKEN}` } });
    assert.equal(del.status, 200);
    await row.locator('[data-testid="key-toggle"]').click();
    const patched = page.waitForResponse((r) => r.request().method() === 'PATCH');
    await tid(page, 'confirm-ok').click();
    const res = await patched;
    assert.equal(res.status(), 404);
    const body = await res.json();
    assert.equal(typeof body.error.message, 'string');
    // The page says what happened and drops the stale row (as Edit does).
    await tid(page, 'error-banner').waitFor({ state: 'visible' });
    assert.equal(await tid(page, 'error-text').textContent(), 'This key no longer exists: it was deleted elsewhere.');
    await waitFor('the stale row to go', async () => (await keyRow(page, 'e2e-stale').count()) === 0);
    // Client-side validation of the form.
    await tid(page, 'key-source').fill('');
    await tid(page, 'key-create-submit').click();
    await tid(page, 'key-form-error').waitFor({ state: 'visible' });
    await tid(page, 'key-days').fill('0');
    await tid(page, 'key-source').fill('x');
    await tid(page, 'key-create-submit').click();
    assert.match(await tid(page, 'key-form-error').textContent(), /36500/);
    await tid(page, 'key-days').fill('');
    await tid(page, 'key-source').fill('');
    await refresh(page);
    await tid(page, 'error-banner').waitFor({ state: 'hidden' }); // a good manual refresh clears it
  });

  test('rotating an expired or disabled key warns first; a deleted key\'s one-time box goes', async () => {
    const made = await admin('POST', '/admin/keys', { source_path: 'e2e-rot-exp' });
    await admin('PATCH', `/admin/keys/${encodeURIComponent(made.id)}`, { expires_at: '2020-01-01T00:00:00Z' });
    await refresh(page);
    await tid(page, 'tab-keys').click();
    await tid(page, 'keys-filter-source').fill('e2e-rot-exp');
    await tid(page, 'keys-filter-source').press('Enter');
    const row = keyRow(page, 'e2e-rot-exp');
    await row.waitFor({ state: 'visible' });
    await row.locator('[data-testid="key-rotate"]').click();
    await tid(page, 'confirm-ok').waitFor({ state: 'visible' });
    assert.match(await page.locator('#confirm-body').textContent(), /has expired.*Extend the expiry/);
    await tid(page, 'confirm-ok').click();
    await tid(page, 'new-key-box').waitFor({ state: 'visible' });
    // Every key action's text is readable: WCAG's 4.5:1 against the page (Bootstrap's
    // outline-warning "Disable" was 1.6:1).
    const ratios = await page.evaluate(() => {
      const lum = (css) => {
        const [r, g, b] = css.match(/\d+(\.\d+)?/g).slice(0, 3).map(Number).map((v) => {
          const c = v / 255;
          return c <= 0.03928 ? c / 12.92 : ((c + 0.055) / 1.055) ** 2.4;
        });
        return 0.2126 * r + 0.7152 * g + 0.0722 * b;
      };
      // The colour behind a button: its nearest ancestor (or itself) with a background.
      const behind = (node) => {
        for (let n = node; n; n = n.parentElement) {
          const c = getComputedStyle(n).backgroundColor;
          if (c && !/rgba\(0, 0, 0, 0\)|transparent/.test(c)) return c;
        }
        return 'rgb(255, 255, 255)';
      };
      return [...document.querySelectorAll('[data-testid="key-row"] button')].map((b) => {
        const fg = lum(getComputedStyle(b).color);
        const bg = lum(behind(b));
        return [b.textContent, (Math.max(fg, bg) + 0.05) / (Math.min(fg, bg) + 0.05)];
      });
    });
    assert.ok(ratios.length > 0);
    for (const [label, ratio] of ratios) assert.ok(ratio >= 4.5, `${label}: ${ratio.toFixed(2)}:1`);
    // Deleted from the page: the box no longer offers its (dead) secret.
    await row.locator('[data-testid="key-delete"]').click();
    await tid(page, 'confirm-ok').click();
    await tid(page, 'new-key-box').waitFor({ state: 'hidden' });
    await tid(page, 'keys-filter-source').fill('');
    await tid(page, 'keys-filter-source').press('Enter');
  });

  test('user-provided strings are rendered as text (no HTML injection)', async () => {
    const xssKey = await createKeyInUi(page, XSS, '<b id="pwn">bold</b>');
    await tid(page, 'new-key-dismiss').click();
    const row = keyRow(page, XSS);
    assert.equal(await row.count(), 1);
    assert.equal(await row.locator('[data-testid="key-source-text"]').textContent(), XSS);
    assert.equal(await row.locator('[data-testid="key-name-text"]').textContent(), '<b id="pwn">bold</b>');
    // Traffic carrying markup in the user agent and model.
    const res = await chat(xssKey, { model: '<svg onload=alert(2)>', headers: { 'user-agent': '<script>alert(3)</script>' } });
    assert.equal(res.status, 200, await res.text());
    await tid(page, 'tab-logs').click();
    await waitFor('audit row of the XSS key', async () => {
      await refresh(page);
      return page.locator('[data-testid="log-row"]', { hasText: XSS }).count();
    }, { timeout: 20000, interval: 500 });
    await page.locator('[data-testid="log-row"]', { hasText: XSS }).first().click();
    await tid(page, 'log-detail').waitFor({ state: 'visible' });
    await waitFor('detail to show the user agent', async () =>
      (await tid(page, 'log-detail-body').textContent()).includes('<script>alert(3)</script>'));
    await tid(page, 'log-detail-close').click();
    await tid(page, 'tab-dashboard').click();
    await refresh(page);
    await sleep(500);
    const injected = await page.evaluate(() => ({
      img: document.querySelectorAll('#app-view img').length,
      svg: document.querySelectorAll('#app-view svg').length,
      pwn: !!document.getElementById('pwn'),
      scripts: [...document.scripts].map((s) => s.getAttribute('src')),
    }));
    assert.deepEqual(injected, { img: 0, svg: 0, pwn: false, scripts: ['vendor/bootstrap/bootstrap.bundle.min.js', 'vendor/chartjs/chart.umd.min.js', 'app.js'] });
    assert.deepEqual(dialogs, [], `dialogs fired: ${dialogs.join(', ')}`);
  });

  test('bidirectional controls a client sent are shown, not obeyed (no spoofed file names)', async () => {
    // U+202E (right-to-left override) made the model `approved-\u202etxt.exe` read as
    // "approved-exe.txt", and a user agent `ua-\u202eevil` as "ua-live".
    const key = (await admin('POST', '/admin/keys', { source_path: 'bidi-e2e' })).api_key;
    const model = 'approved-\u202etxt.exe';
    const ua = Buffer.from('ua-\u202eevil', 'utf8').toString('latin1'); // UTF-8 bytes on the wire
    const res = await chat(key, { model, headers: { 'user-agent': ua } });
    assert.equal(res.status, 200, await res.text());
    await tid(page, 'tab-logs').click();
    const row = page.locator('[data-testid="log-row"]', { hasText: 'bidi-e2e' }).first();
    await waitFor('audit row of the bidi key', async () => {
      await refresh(page);
      return row.count();
    }, { timeout: 20000, interval: 500 });
    assert.match(await row.textContent(), /approved-\[U\+202E\]txt\.exe/);
    assert.doesNotMatch(await row.textContent(), /\u202e/);
    // The marker stands out from the text around it (it is not part of the name).
    const marker = row.locator('.fg-bidi').first();
    assert.equal(await marker.textContent(), '[U+202E]');
    assert.notEqual(await marker.evaluate((m) => getComputedStyle(m).backgroundColor), 'rgba(0, 0, 0, 0)');
    await row.click();
    await tid(page, 'log-detail').waitFor({ state: 'visible' });
    const detail = await tid(page, 'log-detail-body').textContent();
    assert.match(detail, /ua-\[U\+202E\]evil/);
    assert.match(detail, /approved-\[U\+202E\]txt\.exe/);
    assert.doesNotMatch(detail, /\u202e/);
    assert.equal(await tid(page, 'log-detail-body').locator('.fg-bidi').count(), 2);
    await tid(page, 'log-detail-close').click();
    await tid(page, 'tab-dashboard').click();
  });

  test('dialogs give the focus back to what opened them; a confirmation opens on Cancel', async () => {
    await tid(page, 'tab-logs').click();
    const row = page.locator('[data-testid="log-row"]').first();
    await row.waitFor({ state: 'visible' });
    const rid = await row.getAttribute('data-request-id');
    await row.focus();
    await page.keyboard.press('Enter');
    await page.waitForFunction(() => document.querySelector('#log-modal').getAttribute('data-modal') === 'shown');
    await page.keyboard.press('Escape');
    await page.waitForFunction(() => document.querySelector('#log-modal').getAttribute('data-modal') === 'hidden');
    await waitFor('the focus back on the log row', () => page.evaluate(
      (id) => document.activeElement && document.activeElement.getAttribute('data-request-id') === id, rid));

    await tid(page, 'tab-keys').click();
    const rotate = page.locator('[data-testid="key-row"] [data-testid="key-rotate"]').first();
    await rotate.focus();
    await rotate.press('Enter');
    await page.waitForFunction(() => document.querySelector('#confirm-modal').getAttribute('data-modal') === 'shown');
    assert.equal(await page.evaluate(() => document.activeElement.id), 'confirm-cancel');
    await page.keyboard.press('Enter'); // Cancel: nothing rotated
    await page.waitForFunction(() => document.querySelector('#confirm-modal').getAttribute('data-modal') === 'hidden');
    await waitFor('the focus back on the Rotate button', () => page.evaluate(
      () => document.activeElement && document.activeElement.getAttribute('data-testid') === 'key-rotate'));
    await tid(page, 'new-key-box').waitFor({ state: 'hidden' });
    await tid(page, 'tab-dashboard').click();
  });

  test('the audit log pages with next_cursor ("Load older")', async () => {
    const adminGet = async (p) => (await fetch(`${base}${p}`, { headers: { authorization: `Bearer ${ADMIN_TOKEN}` } })).json();
    const have = (await adminGet('/admin/logs?limit=1000')).items.length;
    const send = Math.max(0, 60 - have);
    for (let i = 0; i < send; i++) assert.equal((await chat(apiKey, { stream: i % 4 === 0 })).status, 200);
    const total = await waitFor('all audit records written', async () => {
      const n = (await adminGet('/admin/logs?limit=1000')).items.length;
      return n >= have + send ? n : 0;
    });
    await tid(page, 'tab-logs').click();
    await refresh(page);
    assert.equal(await tid(page, 'log-row').count(), 50);
    await tid(page, 'logs-more').waitFor({ state: 'visible' });
    await tid(page, 'logs-more').click();
    await waitFor('older page appended', async () => (await tid(page, 'log-row').count()) === total);
    await tid(page, 'logs-more').waitFor({ state: 'hidden' }); // no next_cursor after the last page
    const ids = await page.$$eval('[data-testid="log-row"]', (trs) => trs.map((tr) => tr.getAttribute('data-request-id')));
    assert.equal(new Set(ids).size, ids.length, 'a record appears twice across pages');
    const times = await page.$$eval('[data-testid="log-row"]', (trs) => trs.map((tr) => Date.parse(tr.getAttribute('data-ts'))));
    for (let i = 1; i < times.length; i++) assert.ok(times[i - 1] >= times[i], `not newest first at row ${i}`);
    await tid(page, 'tab-dashboard').click();
  });

  test('a request id reused by another client does not replace a record in the detail view', async () => {
    // Request ids come from clients: an unauthenticated request can reuse one, and
    // GET /admin/logs/{id} answers the newest record with it.
    const source = `dup-id-${Date.now()}`;
    const key = (await admin('POST', '/admin/keys', { source_path: source })).api_key;
    const rid = `dup-${Date.now()}`;
    const ok = await chat(key, { model: 'victim-model', headers: { 'x-request-id': rid } });
    assert.equal(ok.status, 200, await ok.text());
    const bad = await fetch(`${base}/proxy/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-request-id': rid, 'user-agent': 'no-key-client' },
      body: '{}',
    });
    assert.equal(bad.status, 401);
    await waitFor('the unauthenticated record to be the newest with that id', async () => {
      const r = await admin('GET', `/admin/logs/${rid}`).catch(() => null);
      return r !== null && r.status === 401;
    }, { timeout: 20000, interval: 200 });
    await tid(page, 'tab-logs').click();
    const row = page.locator('[data-testid="log-row"]', { hasText: source });
    await waitFor('the record of the keyed request', async () => {
      await refresh(page);
      return (await row.count()) === 1;
    }, { timeout: 20000, interval: 500 });
    const fetched = page.waitForResponse((r) => r.url().includes(`/admin/logs/${rid}`));
    await row.click();
    await tid(page, 'log-detail').waitFor({ state: 'visible' });
    await fetched;
    await sleep(300);
    const detail = await tid(page, 'log-detail-body').textContent();
    assert.ok(detail.includes('victim-model') && detail.includes(source), detail);
    assert.ok(!detail.includes('no-key-client'), detail);
    await tid(page, 'log-detail-close').click();
    await tid(page, 'log-detail').waitFor({ state: 'hidden' });
    await tid(page, 'tab-dashboard').click();
  });

  test('the language switch offers 中文 and is remembered', async () => {
    await tid(page, 'lang-select').selectOption('zh');
    assert.equal(await tid(page, 'tab-dashboard').textContent(), '仪表板');
    assert.equal(await page.evaluate(() => document.documentElement.lang), 'zh-CN');
    await page.reload();
    await tid(page, 'app-view').waitFor({ state: 'visible' }); // token survived the reload (sessionStorage)
    assert.equal(await tid(page, 'tab-logs').textContent(), '审计日志');
    await shot(page, 'desktop-dashboard-zh');
    await tid(page, 'lang-select').selectOption('en');
    assert.equal(await tid(page, 'tab-dashboard').textContent(), 'Dashboard');
    await context.close();
  });

  test('a Chinese browser gets Chinese by default', async () => {
    const { context: ctx, page: p } = await newPage({ locale: 'zh-CN' });
    await signIn(p);
    await tid(p, 'app-view').waitFor({ state: 'visible' });
    assert.equal(await tid(p, 'tab-keys').textContent(), 'API Key');
    assert.equal(await tid(p, 'tab-dashboard').textContent(), '仪表板');
    await ctx.close();
  });

  test('at 375 px width nothing overflows horizontally', async () => {
    const { context: ctx, page: p } = await newPage({ width: 375, height: 812 });
    await signIn(p);
    await tid(p, 'app-view').waitFor({ state: 'visible' });
    await p.waitForFunction(() => document.querySelectorAll('[data-testid="key-row"]').length > 0);
    const overflow = () => p.evaluate(() => ({ sw: document.documentElement.scrollWidth, bw: document.body.scrollWidth }));
    for (const view of ['dashboard', 'keys', 'logs']) {
      await tid(p, `tab-${view}`).click();
      await tid(p, `view-${view}`).waitFor({ state: 'visible' });
      if (view === 'logs') await p.waitForFunction(() => document.querySelectorAll('[data-testid="log-row"]').length > 0);
      const o = await overflow();
      assert.ok(o.sw <= 375 && o.bw <= 375, `${view}: scrollWidth ${JSON.stringify(o)} > 375`);
      await shot(p, `phone-${view}`, { fullPage: view !== 'logs' });
    }
    // The key created on a phone is shown in full inside the copy box.
    await tid(p, 'tab-keys').click();
    await createKeyInUi(p, 'e2e-phone');
    const o = await overflow();
    assert.ok(o.sw <= 375, `keys with new-key box: scrollWidth ${o.sw}`);
    await shot(p, 'phone-new-key');
    await ctx.close();
  });

  test('auto-refresh every 30 s, and it can be paused', async () => {
    const { context: ctx, page: p } = await newPage();
    await p.clock.install();
    await signIn(p);
    await tid(p, 'app-view').waitFor({ state: 'visible' });
    await p.waitForFunction(() => document.getElementById('refresh-spinner').classList.contains('d-none'));
    let metricsCalls = 0;
    p.on('request', (r) => { if (r.url().includes('/admin/metrics')) metricsCalls++; });
    await p.clock.runFor(31000);
    await waitFor('an automatic refresh', async () => metricsCalls >= 1);
    await p.waitForFunction(() => document.getElementById('refresh-spinner').classList.contains('d-none'));
    await tid(p, 'autorefresh-toggle').uncheck();
    const paused = metricsCalls;
    await p.clock.runFor(95000);
    await sleep(300);
    assert.equal(metricsCalls, paused, 'refreshed while paused');
    assert.match(await tid(p, 'last-updated').textContent(), /paused/);
    await tid(p, 'autorefresh-toggle').check(); // resuming refreshes at once
    await waitFor('refresh on resume', async () => metricsCalls > paused);
    await ctx.close();
  });

  test('quick action "Create API key" opens the key form, and the key it creates is listed by the API', async () => {
    const src = 'e2e-quick-create';
    const { context: ctx, page: p } = await newPage();
    await signIn(p);
    await tid(p, 'view-dashboard').waitFor({ state: 'visible' });
    assert.equal(await tid(p, 'view-keys').isVisible(), false);
    await tid(p, 'quick-create-key').click();
    await tid(p, 'view-keys').waitFor({ state: 'visible' });
    assert.equal(await tid(p, 'view-dashboard').isVisible(), false);
    assert.equal(await tid(p, 'tab-keys').getAttribute('aria-current'), 'page');
    assert.equal(await tid(p, 'tab-dashboard').getAttribute('aria-current'), null);
    // The form's first field has the focus: typing goes straight into it.
    assert.equal(await p.evaluate(() => document.activeElement && document.activeElement.getAttribute('data-testid')), 'key-source');
    await p.keyboard.type(src);
    assert.equal(await tid(p, 'key-source').inputValue(), src);
    await tid(p, 'key-name').fill('quick action');
    await tid(p, 'key-create-submit').click();
    await tid(p, 'new-key-box').waitFor({ state: 'visible' });
    const newKey = await tid(p, 'new-key-value').inputValue();
    assert.match(newKey, /^fg_\S{16,}$/, `unexpected key: ${newKey}`);
    const row = keyRow(p, src);
    await row.first().waitFor();
    assert.equal(await row.count(), 1);
    // The admin API lists the key the page created, and the key works.
    const listed = await admin('GET', `/admin/keys?source_path=${encodeURIComponent(src)}`);
    assert.deepEqual(listed.items.map((k) => k.id), [await row.getAttribute('data-key-id')]);
    assert.equal(listed.items[0].name, 'quick action');
    assert.equal(listed.items[0].status, 'active');
    const res = await chat(newKey);
    assert.equal(res.status, 200, await res.text());
    await ctx.close();
  });

  test('quick action "Refresh status" re-fetches the system status, cards and key list', async () => {
    const src = 'e2e-quick-refresh';
    const { context: ctx, page: p } = await newPage();
    const isHealth = (r) => new URL(r.url()).pathname === '/health';
    const isMetrics = (r) => new URL(r.url()).pathname === '/admin/metrics';
    const firstHealth = p.waitForResponse(isHealth);
    const firstMetrics = p.waitForResponse(isMetrics);
    await signIn(p);
    const h0 = await (await firstHealth).json();
    const m0 = await (await firstMetrics).json();
    await tid(p, 'view-dashboard').waitFor({ state: 'visible' });
    await p.waitForFunction(() => document.getElementById('refresh-spinner').classList.contains('d-none'));
    // No timer may do the button's work.
    await tid(p, 'autorefresh-toggle').uncheck();
    const written = (n) => `${new Intl.NumberFormat('en-US').format(n)} written`;
    assert.ok((await tid(p, 'health-panel').textContent()).includes(written(h0.audit.written)));
    assert.equal(await tid(p, 'stat-keys').getAttribute('data-value'), String(m0.active_keys));
    assert.equal(await tid(p, 'stat-requests').getAttribute('data-value'), String(m0.total_requests));

    // Behind the page's back: a new key and one request with it.
    await keyWithTraffic(src);
    await waitFor('the audit write to be counted by /health', async () =>
      (await (await fetch(`${base}/health`)).json()).audit.written > h0.audit.written);
    assert.equal(await tid(p, 'stat-keys').getAttribute('data-value'), String(m0.active_keys)); // still stale
    assert.equal(await keyRow(p, src).count(), 0);

    const health = p.waitForResponse(isHealth);
    const metrics = p.waitForResponse(isMetrics);
    const keys = p.waitForResponse((r) => new URL(r.url()).pathname === '/admin/keys' && r.request().method() === 'GET');
    await tid(p, 'quick-refresh').click();
    const h1 = await (await health).json();
    const m1 = await (await metrics).json();
    await keys;
    await p.waitForFunction(() => document.getElementById('refresh-spinner').classList.contains('d-none'));
    // System status card: the new audit write.
    assert.ok(h1.audit.written > h0.audit.written, `audit written ${h0.audit.written} -> ${h1.audit.written}`);
    const panel = await tid(p, 'health-panel').textContent();
    assert.ok(panel.includes(written(h1.audit.written)), `status card not refreshed: ${panel}`);
    // Cards: one more active key, one more request.
    assert.equal(m1.active_keys, m0.active_keys + 1);
    assert.equal(await tid(p, 'stat-keys').getAttribute('data-value'), String(m1.active_keys));
    assert.ok(m1.total_requests > m0.total_requests, `requests ${m0.total_requests} -> ${m1.total_requests}`);
    assert.equal(await tid(p, 'stat-requests').getAttribute('data-value'), String(m1.total_requests));
    // Key list: the new key is there. The view stays on the dashboard.
    assert.equal(await keyRow(p, src).count(), 1);
    assert.equal(await tid(p, 'view-dashboard').isVisible(), true);
    await ctx.close();
  });

  test('quick action "View audit log" opens the audit log', async () => {
    const { record } = await keyWithTraffic('e2e-quick-logs');
    const { context: ctx, page: p } = await newPage();
    await signIn(p);
    await tid(p, 'view-dashboard').waitFor({ state: 'visible' });
    assert.equal(await tid(p, 'view-logs').isVisible(), false);
    await tid(p, 'quick-logs').click();
    await tid(p, 'view-logs').waitFor({ state: 'visible' });
    assert.equal(await tid(p, 'view-dashboard').isVisible(), false);
    assert.equal(await tid(p, 'tab-logs').getAttribute('aria-current'), 'page');
    assert.equal(await tid(p, 'tab-dashboard').getAttribute('aria-current'), null);
    // The audit log itself is shown, with the request just sent.
    await p.locator(`[data-testid="log-row"][data-request-id="${record.request_id}"]`).waitFor({ state: 'visible' });
    await ctx.close();
  });

  test("M-FastGate's page URLs /admin/ui/keys and /admin/ui/logs open the dashboard on that tab", async () => {
    const { record } = await keyWithTraffic('e2e-page-urls');
    for (const view of ['keys', 'logs']) {
      const { context: ctx, page: p } = await newPage();
      await p.goto(`${base}/admin/ui/${view}?token=${encodeURIComponent(ADMIN_TOKEN)}`);
      await tid(p, `view-${view}`).waitFor({ state: 'visible' });
      assert.equal(await tid(p, 'view-dashboard').isVisible(), false);
      assert.equal(await tid(p, `tab-${view}`).getAttribute('aria-current'), 'page');
      assert.ok(!p.url().includes('token'), `token still in URL: ${p.url()}`);
      assert.equal(new URL(p.url()).pathname, `/admin/ui/${view}`);
      if (view === 'logs') {
        await p.locator(`[data-testid="log-row"][data-request-id="${record.request_id}"]`).waitFor({ state: 'visible' });
      } else {
        await p.waitForFunction(() => document.querySelectorAll('[data-testid="key-row"]').length > 0);
      }
      // The address follows the tabs, so a reload stays where the admin was.
      await tid(p, 'tab-dashboard').click();
      assert.equal(new URL(p.url()).pathname, '/admin/ui/');
      await tid(p, `tab-${view}`).click();
      assert.equal(new URL(p.url()).pathname, `/admin/ui/${view}`);
      await p.reload();
      await tid(p, `view-${view}`).waitFor({ state: 'visible' });
      assert.equal(await tid(p, 'view-dashboard').isVisible(), false);
      await ctx.close();
    }
    // The routes page has no counterpart (routes live in the config file): not found.
    assert.equal((await fetch(`${base}/admin/ui/routes`)).status, 404);
  });

  test('Back and Forward move between tabs; page URLs with a trailing slash redirect', async () => {
    const { context: ctx, page: p } = await newPage();
    await signIn(p);
    await tid(p, 'app-view').waitFor({ state: 'visible' });
    await tid(p, 'tab-keys').click();
    await tid(p, 'view-keys').waitFor({ state: 'visible' });
    await tid(p, 'tab-logs').click();
    await tid(p, 'view-logs').waitFor({ state: 'visible' });
    await p.goBack();
    await tid(p, 'view-keys').waitFor({ state: 'visible' });
    assert.equal(new URL(p.url()).pathname, '/admin/ui/keys');
    await p.goBack();
    await tid(p, 'view-dashboard').waitFor({ state: 'visible' });
    assert.equal(new URL(p.url()).pathname, '/admin/ui/');
    await p.goForward();
    await tid(p, 'view-keys').waitFor({ state: 'visible' });
    assert.equal(await tid(p, 'tab-keys').getAttribute('aria-current'), 'page');
    await ctx.close();
    for (const view of ['keys', 'logs']) {
      const res = await fetch(`${base}/admin/ui/${view}/?a=1`, { redirect: 'manual' });
      assert.equal(res.status, 308);
      assert.equal(res.headers.get('location'), `/admin/ui/${view}?a=1`);
    }
  });

  test('filters that match nothing say so; a failed refresh is cleared by the next one that works', async () => {
    await keyWithTraffic('e2e-empty-states');
    const { context: ctx, page: p } = await newPage();
    await signIn(p);
    await tid(p, 'app-view').waitFor({ state: 'visible' });
    await tid(p, 'tab-keys').click();
    await p.waitForFunction(() => document.querySelectorAll('[data-testid="key-row"]').length > 0);
    await tid(p, 'keys-filter-source').fill('e2e-no-such-source');
    await tid(p, 'keys-filter-source').press('Enter');
    await tid(p, 'keys-empty').waitFor({ state: 'visible' });
    assert.equal(await tid(p, 'keys-empty').textContent(), 'No keys match these filters.');

    // The server stops answering: the banner shows, "Updated" keeps the last good time, the
    // health panel does not go on showing the old figures.
    await tid(p, 'tab-dashboard').click();
    await refresh(p);
    // The backend's line: its failures since start, or none.
    const health = await (await fetch(`${base}/health`)).json();
    const backendLine = await tid(p, 'health-backend').textContent();
    if (health.upstream.failures === 0) assert.equal(backendLine, 'no failure since start');
    else assert.match(backendLine, /failed requests; last/);
    const updated = await tid(p, 'last-updated').textContent();
    await p.route('**/health', (route) => route.abort());
    await p.route('**/admin/metrics*', (route) => route.abort());
    await tid(p, 'refresh-btn').click();
    await tid(p, 'error-banner').waitFor({ state: 'visible' });
    await p.waitForFunction(() => document.getElementById('refresh-spinner').classList.contains('d-none'));
    assert.equal(await tid(p, 'last-updated').textContent(), updated);
    assert.equal(await p.locator('#health-db').textContent(), '—');
    // It answers again: an automatic refresh (auto-refresh switched off and on) clears it.
    await p.unroute('**/health');
    await p.unroute('**/admin/metrics*');
    await tid(p, 'autorefresh-toggle').uncheck();
    await tid(p, 'autorefresh-toggle').check();
    await tid(p, 'error-banner').waitFor({ state: 'hidden' });
    await waitFor('the health panel again', async () => (await p.locator('#health-db').textContent()) !== '—');
    await ctx.close();
  });

  test('a reload keeps the metrics window and the applied filters', async () => {
    const { context: ctx, page: p } = await newPage();
    await signIn(p);
    await tid(p, 'app-view').waitFor({ state: 'visible' });
    const metrics7d = p.waitForResponse((r) => r.url().includes('/admin/metrics?window=7d'));
    await tid(p, 'window-7d').click();
    await metrics7d;
    await tid(p, 'tab-logs').click();
    await tid(p, 'logs-filter-status').selectOption('2xx');
    await tid(p, 'tab-keys').click();
    await tid(p, 'keys-filter-status').selectOption('disabled');
    const url = new URL(p.url());
    assert.equal(url.searchParams.get('window'), '7d');
    assert.equal(url.searchParams.get('log_status'), '2xx');
    assert.equal(url.searchParams.get('key_status'), 'disabled');
    assert.equal(url.searchParams.get('token'), null);
    const reloaded = p.waitForResponse((r) => r.url().includes('/admin/metrics?window=7d'));
    const logs2xx = p.waitForResponse((r) => r.url().includes('/admin/logs?') && r.url().includes('status=2xx'));
    await p.reload();
    await reloaded;
    await logs2xx;
    await tid(p, 'view-keys').waitFor({ state: 'visible' });
    assert.equal(await tid(p, 'keys-filter-status').inputValue(), 'disabled');
    assert.equal(await tid(p, 'logs-filter-status').inputValue(), '2xx');
    assert.equal(await tid(p, 'window-7d').getAttribute('aria-pressed'), 'true');
    await ctx.close();
  });

  test('a key with a very long source path keeps its actions on screen at 1366 px', async () => {
    const long = `e2e-long-${'a'.repeat(190)}`;
    await admin('POST', '/admin/keys', { source_path: long });
    const { context: ctx, page: p, row } = await openKeyRow(long, { width: 1366, height: 900 });
    const del = row.locator('[data-testid="key-delete"]');
    await del.waitFor({ state: 'visible' });
    const box = await waitFor('the delete button laid out', () => del.boundingBox());
    assert.ok(box && box.x + box.width <= 1366, `the delete button ends at ${box && box.x + box.width} px`);
    await ctx.close();
  });

  test('"Export CSV" downloads the filtered audit log without putting the token in a URL', async () => {
    const { key, record } = await keyWithTraffic('e2e-export');
    const { context: ctx, page: p } = await newPage();
    await signIn(p);
    await tid(p, 'app-view').waitFor({ state: 'visible' });
    await tid(p, 'tab-logs').click();
    await tid(p, 'view-logs').waitFor({ state: 'visible' });
    // Filter on the key just used: the export holds its one record and nothing else.
    await waitFor('the key in the filter', async () => (await p.locator(`#lf-key option[value="${key.id}"]`).count()) === 1);
    await tid(p, 'logs-filter-key').selectOption(key.id);
    await p.waitForFunction(() => document.querySelectorAll('[data-testid="log-row"]').length === 1);
    const [download] = await Promise.all([p.waitForEvent('download'), tid(p, 'logs-export').click()]);
    assert.equal(download.suggestedFilename(), 'audit_logs.csv');
    const file = await download.path();
    const text = fs.readFileSync(file, 'utf8');
    assert.ok(text.startsWith('\uFEFFrequest_id,'), 'a UTF-8 mark for Excel, then the header');
    const lines = text.slice(1).trim().split('\n');
    assert.equal(lines.length, 2, lines.join('\n'));
    const header = lines[0].split(',');
    const cells = lines[1].split(',');
    assert.equal(cells[header.indexOf('request_id')], record.request_id);
    assert.equal(cells[header.indexOf('key_id')], key.id);
    assert.equal(cells[header.indexOf('status')], '200');
    await tid(p, 'toast').filter({ hasText: 'audit_logs.csv' }).waitFor({ state: 'visible' });
    await ctx.close();
  });

  test('a script on another origin calls the gateway from a real browser (CORS)', async () => {
    const created = await admin('POST', '/admin/keys', { source_path: 'e2e-cors' });
    // A page of another origin (the mock backend's port), in a context of its own: the checks on
    // the dashboard's pages (no foreign requests) do not apply to it.
    const ctx = await browser.newContext();
    const p = await ctx.newPage();
    const errors = [];
    p.on('pageerror', (e) => errors.push(e.message));
    await p.goto(`${mockBase}/__mock/count`);
    const call = (key) => p.evaluate(async ({ url, key }) => {
      const res = await fetch(url, {
        method: 'POST',
        headers: { Authorization: `Bearer ${key}`, 'Content-Type': 'application/json' },
        body: JSON.stringify({ model: 'gpt-e2e', messages: [{ role: 'user', content: 'from another origin' }] }),
      });
      return { status: res.status, requestId: res.headers.get('x-request-id'), body: await res.json() };
    }, { url: `${base}/proxy/v1/chat/completions`, key });
    // The browser sends a preflight (Authorization, a JSON content type), then the call.
    const ok = await call(created.api_key);
    assert.equal(ok.status, 200, JSON.stringify(ok.body));
    assert.ok(Array.isArray(ok.body.choices), JSON.stringify(ok.body));
    assert.ok(ok.requestId, 'X-Request-Id is readable by the script');
    // A refusal is readable too, OpenAI-shaped.
    const refused = await call('fg_not-a-real-key');
    assert.equal(refused.status, 401);
    assert.equal(refused.body.error.code, 'invalid_api_key');
    const record = await waitFor('the audit record of the cross-origin call', async () =>
      (await admin('GET', `/admin/logs/${ok.requestId}`)));
    assert.equal(record.source_path, 'e2e-cors');
    assert.deepEqual(errors, []);
    await ctx.close();
  });

  test('a token that stops working mid-session brings back the sign-in form', async () => {
    const { context: ctx, page: p } = await newPage();
    await signIn(p);
    await tid(p, 'app-view').waitFor({ state: 'visible' });
    assert.equal(await p.evaluate(() => localStorage.getItem('fastgate.admin_token')), null, 'token must not be in localStorage');
    await p.evaluate(() => sessionStorage.setItem('fastgate.admin_token', 'revoked-token'));
    // One API call (not a full refresh): every failed admin request counts towards the
    // server's lockout of an address (429 after a handful), and later tests sign in again.
    await tid(p, 'window-7d').click();
    await tid(p, 'signin-form').waitFor({ state: 'visible' });
    assert.equal(await tid(p, 'app-view').isVisible(), false);
    assert.match(await tid(p, 'signin-error').textContent(), /rejected/);
    await ctx.close();
  });

  test('a wrong token shows the sign-in form; the right one signs in', async () => {
    const { context: ctx, page: p } = await newPage();
    await signIn(p, 'definitely-wrong');
    await tid(p, 'signin-form').waitFor({ state: 'visible' });
    assert.ok(!p.url().includes('token'), p.url());
    assert.equal(await tid(p, 'app-view').isVisible(), false);
    await tid(p, 'signin-error').waitFor({ state: 'visible' });
    assert.equal(await p.evaluate(() => sessionStorage.getItem('fastgate.admin_token')), null);
    await shot(p, 'desktop-signin');
    // No token at all: the form too.
    await p.goto(`${base}/admin/ui/`);
    await tid(p, 'signin-form').waitFor({ state: 'visible' });
    // Sign in through the form.
    await tid(p, 'signin-token').fill(ADMIN_TOKEN);
    await tid(p, 'signin-submit').click();
    await tid(p, 'app-view').waitFor({ state: 'visible' });
    await tid(p, 'signout-btn').click();
    await tid(p, 'signin-form').waitFor({ state: 'visible' });
    await ctx.close();
  });

  test('everything was served by FastGate itself, no dialogs or script errors', () => {
    assert.deepEqual(foreignRequests, [], `requests left the gateway: ${foreignRequests.join(', ')}`);
    assert.deepEqual(pageErrors, [], `errors in the page: ${pageErrors.join('\n')}`);
    assert.deepEqual(tokenInUrl, [], `token sent in a URL: ${tokenInUrl.join(', ')}`);
    assert.deepEqual(failedAssets, [], `assets failed: ${failedAssets.join(', ')}`);
    assert.deepEqual(dialogs, []);
  });
});

describe('a window with only refused requests', { concurrency: 1 }, () => {
  test('shows "—" for latency, not 0 ms, on its own fresh gateway', async () => {
    // A second gateway with an empty database: its only traffic is one request with a wrong key,
    // which FastGate refuses itself (401) and leaves out of the latency figures.
    const url = await startGateway('fastgate-refusals');
    const res = await fetch(`${url}/proxy/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', authorization: 'Bearer fg_not_a_key' },
      body: JSON.stringify({ model: 'gpt-e2e', messages: [{ role: 'user', content: 'hi' }] }),
    });
    assert.equal(res.status, 401, await res.text());

    await onDashboard(url, async (page) => {
      // The refusal reaches the audit table within the worker's batch delay.
      await waitFor('the refusal in the requests card', async () => {
        await refresh(page);
        return (await tid(page, 'stat-requests').getAttribute('data-value')) === '1';
      }, { timeout: 20000, interval: 500 });
      assert.equal(await tid(page, 'stat-latency').getAttribute('data-samples'), '0');
      assert.equal((await tid(page, 'stat-latency').textContent()).trim(), '—');
      assert.equal((await tid(page, 'stat-success').textContent()).trim(), '0%');
      await shot(page, 'desktop-dashboard-refusals-only');
    });
  });

  test('a degraded status names its reason, and clears once audit writes work again', async () => {
    // Its own gateway: a trigger makes SQLite refuse audit inserts while it still answers, as a
    // full disk or a revoked grant would (Python's sqlite3 module: no sqlite3 CLI needed).
    const url = await startGateway('fastgate-degraded');
    const db = path.join(tmp, 'fastgate-degraded.db');
    const sql = (stmt) => execFileSync('python3', ['-c',
      'import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute(sys.argv[2]); c.commit(); c.close()',
      db, stmt]);
    const created = await (await fetch(`${url}/admin/keys?token=${encodeURIComponent(ADMIN_TOKEN)}`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ source_path: 'degraded' }),
    })).json();
    const call = () => fetch(`${url}/proxy/v1/chat/completions`, {
      method: 'POST',
      headers: { 'content-type': 'application/json', 'x-api-key': created.api_key },
      body: JSON.stringify({ model: 'gpt-e2e', messages: [{ role: 'user', content: 'hi' }] }),
    });
    assert.equal((await call()).status, 200);

    await onDashboard(url, async (page) => {
      const badge = tid(page, 'health-status');
      await page.waitForFunction(() => document.querySelector('[data-testid="health-status"]').getAttribute('data-status') === 'healthy');

      sql("CREATE TRIGGER refuse_audit BEFORE INSERT ON audit_events BEGIN SELECT RAISE(ABORT, 'refused'); END");
      assert.equal((await call()).status, 200, 'requests keep flowing');
      await waitFor('the badge to say why it is degraded', async () => {
        await refresh(page);
        return (await badge.getAttribute('data-status')) === 'degraded';
      }, { timeout: 20000, interval: 300 });
      assert.equal((await badge.textContent()).trim(), 'degraded: audit writes failing');
      assert.match(await badge.getAttribute('class'), /text-bg-warning/);
      await shot(page, 'desktop-dashboard-degraded');

      sql('DROP TRIGGER refuse_audit');
      await waitFor('the badge to be healthy again', async () => {
        await refresh(page);
        return (await badge.getAttribute('data-status')) === 'healthy';
      }, { timeout: 30000, interval: 500 });
      assert.equal((await badge.textContent()).trim(), 'healthy');
    });
  });

  test('the audit log\'s key filter names a key older than the newest 1,000', async () => {
    // Its own gateway with 1,001 keys: the filter lists the newest 1,000; the oldest, reached
    // through its row's Logs button, showed as a bare id.
    const url = await startGateway('fastgate-manykeys');
    const make = (source) => fetch(`${url}/admin/keys?token=${encodeURIComponent(ADMIN_TOKEN)}`, {
      method: 'POST', headers: { 'content-type': 'application/json' }, body: JSON.stringify({ source_path: source }),
    }).then((r) => r.json());
    const oldest = await make('oldest-key-e2e');
    for (let i = 0; i < 1000; i += 50) {
      await Promise.all(Array.from({ length: 50 }, (_, j) => make(`bulk-${i + j}`)));
    }
    await onDashboard(url, async (page) => {
      await tid(page, 'app-view').waitFor({ state: 'visible' });
      await tid(page, 'tab-keys').click();
      await tid(page, 'keys-filter-source').fill('oldest-key-e2e');
      await tid(page, 'keys-filter-source').press('Enter');
      const row = keyRow(page, 'oldest-key-e2e');
      await row.waitFor({ state: 'visible' });
      await row.locator('[data-testid="key-logs"]').click();
      const option = page.locator(`#lf-key option[value="${oldest.id}"]`);
      await waitFor('the key filter to name the oldest key', async () =>
        (await option.count()) === 1 && (await option.textContent()).includes('oldest-key-e2e'));
      assert.equal(await page.locator('#lf-key').inputValue(), oldest.id);
    });
  });

  test('opens while the database fails, showing the failure instead of the sign-in form', async () => {
    // Its own gateway whose key table is gone (renamed): every admin call that reads the
    // database answers 503. Sign-in used such a call, so the admin was sent back to the form,
    // also with the right token, and could not reach the status panel.
    const url = await startGateway('fastgate-dbdown');
    const db = path.join(tmp, 'fastgate-dbdown.db');
    execFileSync('python3', ['-c',
      'import sqlite3, sys; c = sqlite3.connect(sys.argv[1]); c.execute("ALTER TABLE api_keys RENAME TO api_keys_gone"); c.commit(); c.close()',
      db]);
    const keys = await fetch(`${url}/admin/keys?token=${encodeURIComponent(ADMIN_TOKEN)}`);
    assert.equal(keys.status, 503, 'the key list fails');
    await onDashboard(url, async (page) => {
      await tid(page, 'app-view').waitFor({ state: 'visible' });
      assert.equal(await tid(page, 'signin-view').isVisible(), false);
      await tid(page, 'error-banner').waitFor({ state: 'visible' });
      // The error code's message in the page's language, not the server's English text.
      assert.match(await tid(page, 'error-text').textContent(), /cannot reach its database/);
      await shot(page, 'desktop-dashboard-database-failing');
    });
  });
});
