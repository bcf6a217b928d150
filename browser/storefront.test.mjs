// The storefront page in a real browser (headless Chromium through playwright-core): log in,
// add to cart, see the live count drop when another customer buys, check out, pay.
//
// Needs a running service: BASE_URL (e.g. http://127.0.0.1:18080) and ADMIN_PASSWORD (of the
// `admin` account). scripts/browser-test starts a throwaway one and runs this. On failure it
// saves a screenshot to SCREENSHOT (default ../target/browser-failure.png) and exits 1. With
// PAGE_SHOT set, a passing run saves the page there (docs/storefront.png was made so).

import { mkdtempSync, mkdirSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import path from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const here = path.dirname(fileURLToPath(import.meta.url));
const BASE = (process.env.BASE_URL || 'http://127.0.0.1:8080').replace(/\/$/, '');
const ADMIN_PASSWORD = process.env.ADMIN_PASSWORD || 'admin-dev-password';
const SCREENSHOT = process.env.SCREENSHOT || path.join(here, '..', 'target', 'browser-failure.png');
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const TIMEOUT = 15_000;

const log = (...a) => console.log('browser-test:', ...a);

async function api(method, p, { token, body, headers } = {}) {
  const h = Object.assign({}, headers);
  if (token) h.Authorization = 'Bearer ' + token;
  if (body !== undefined) h['Content-Type'] = 'application/json';
  const r = await fetch(BASE + p, { method, headers: h, body: body === undefined ? undefined : JSON.stringify(body) });
  const text = await r.text();
  const data = text ? JSON.parse(text) : null;
  if (!r.ok) throw new Error(`${method} ${p}: ${r.status} ${text}`);
  return data;
}

async function token(username, password) {
  return (await api('POST', '/v1/auth/token', { body: { username, password } })).access_token;
}

async function seed() {
  const admin = await token('admin', ADMIN_PASSWORD);
  const run = Date.now().toString(36);
  const wh = await api('POST', '/v1/warehouses', { token: admin, body: { name: 'browser-' + run } });
  const product = await api('POST', '/v1/products', { token: admin, body: { name: 'Noise-cancelling headphones', price: 20000 } });
  const sku = product.sku;
  await api('POST', `/v1/products/${sku}/stock`, { token: admin, body: { warehouse_id: wh.warehouse_id, delta: 20 } });
  const now = Date.now();
  await api('PUT', `/v1/products/${sku}/sale`, {
    token: admin,
    body: {
      sale_price: 15000,
      starts_at: new Date(now - 60_000).toISOString(),
      ends_at: new Date(now + 3_600_000).toISOString(),
      per_customer_limit: 5,
    },
  });
  const shopper = { username: 'shopper_' + run, password: 'shopper-password-' + run };
  const rival = { username: 'rival_' + run, password: 'rival-password-' + run };
  for (const u of [shopper, rival]) await api('POST', '/v1/users', { body: u });
  return { sku, shopper, rivalToken: await token(rival.username, rival.password) };
}

async function textOf(page, testid) {
  return (await page.getByTestId(testid).textContent()).trim();
}

async function waitText(page, testid, want, what) {
  const started = Date.now();
  try {
    await page.waitForFunction(
      ([id, w]) => {
        const el = document.querySelector(`[data-testid="${id}"]`);
        return el && el.textContent.trim() === w;
      },
      [testid, want],
      { timeout: TIMEOUT, polling: 20 },
    );
  } catch (e) {
    const got = await page.getByTestId(testid).textContent().catch(() => '(missing)');
    throw new Error(`${what}: [data-testid=${testid}] is ${JSON.stringify(got)}, wanted ${JSON.stringify(want)}`);
  }
  return Date.now() - started;
}

// A listener on another local port that records every request it gets (a stand-in for a host
// a link's `?api=` could name).
async function recorder() {
  const seen = [];
  const server = http.createServer((req, res) => {
    seen.push(`${req.method} ${req.url}`);
    res.writeHead(200, { 'Content-Type': 'application/json', 'Access-Control-Allow-Origin': '*' });
    res.end('{"items":[],"next_after_sku":null,"access_token":"stolen"}');
  });
  await new Promise((ok) => server.listen(0, '127.0.0.1', ok));
  return { seen, origin: `http://127.0.0.1:${server.address().port}`, close: () => server.close() };
}

// A link with ?api=<another origin>: the page still shows this origin's catalog, and typing a
// password sends nothing to the other origin.
async function foreignApiParameterIsIgnored(context, sku, shopper) {
  const rec = await recorder();
  const page = await context.newPage();
  try {
    await page.goto(`${BASE}/?api=${encodeURIComponent(rec.origin)}`, { waitUntil: 'domcontentloaded' });
    await waitText(page, `available-${sku}`, '20', 'the catalog comes from this origin');
    await page.getByTestId('username').fill(shopper.username);
    await page.getByTestId('password').fill(shopper.password);
    await page.getByTestId('login').click();
    await waitText(page, 'me', shopper.username, 'logged in against this origin');
    await page.getByTestId('logout').click();
    if (rec.seen.length) throw new Error(`the page sent requests to ${rec.origin}: ${rec.seen.join(', ')}`);
    log(`?api=${rec.origin} ignored: nothing was sent there`);
  } finally {
    await page.close();
    rec.close();
  }
}

// The live stream refused (429, as for an address that holds too many): the page shows the
// plain catalog instead of nothing.
async function refusedStreamFallsBackToTheCatalog(context, sku) {
  const page = await context.newPage();
  try {
    let refused = 0;
    await page.route('**/v1/sales/live', (route) => {
      refused++;
      return route.fulfill({
        status: 429,
        headers: { 'Retry-After': '5' },
        contentType: 'application/json',
        body: JSON.stringify({ error: { code: 'rate_limited', message: 'too many live streams' } }),
      });
    });
    await page.goto(BASE + '/', { waitUntil: 'domcontentloaded' });
    await waitText(page, 'live-status', 'not live', 'the page knows the stream was refused');
    await waitText(page, `available-${sku}`, '20', 'the catalog is shown without the stream');
    if (!refused) throw new Error('the stream request was not refused by the test route');
    log('a refused live stream falls back to the catalog');
  } finally {
    await page.close();
  }
}

async function main() {
  const { sku, shopper, rivalToken } = await seed();
  log(`seeded sku ${sku} (20 units, sale open), customers ${shopper.username} and a rival`);

  const profile = mkdtempSync(path.join(tmpdir(), 'flashsale-chromium-'));
  const context = await chromium.launchPersistentContext(profile, {
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  const page = context.pages()[0] || (await context.newPage());
  const consoleLines = [];
  page.on('console', (m) => consoleLines.push(`[${m.type()}] ${m.text()}`));
  page.on('pageerror', (e) => consoleLines.push(`[pageerror] ${e.message}`));
  try {
    await foreignApiParameterIsIgnored(context, sku, shopper);
    await refusedStreamFallsBackToTheCatalog(context, sku);
    await page.goto(BASE + '/', { waitUntil: 'domcontentloaded' });
    await waitText(page, `available-${sku}`, '20', 'the live snapshot shows the stock');
    await waitText(page, 'live-status', 'live', 'the stream is connected');
    const countdown = await textOf(page, `countdown-${sku}`);
    if (!/^ends in \d\d:\d\d:\d\d$/.test(countdown)) throw new Error(`countdown ${JSON.stringify(countdown)}`);
    log(`page shows 20 left, ${countdown}`);

    await page.getByTestId('username').fill(shopper.username);
    await page.getByTestId('password').fill(shopper.password);
    await page.getByTestId('login').click();
    await waitText(page, 'me', shopper.username, 'logged in');
    log('logged in');

    await page.getByTestId(`count-${sku}`).fill('2');
    await page.getByTestId(`add-${sku}`).click();
    await page.getByTestId(`cart-line-${sku}`).waitFor({ timeout: TIMEOUT });
    const hold = await textOf(page, `hold-${sku}`);
    if (!/^held for \d\d:\d\d:\d\d$/.test(hold)) throw new Error(`hold timer ${JSON.stringify(hold)}`);
    await waitText(page, `available-${sku}`, '18', 'our own hold lowers the count');
    log(`2 in the cart (${hold}); 18 left`);

    // Another customer buys 3 through the API: the page's count follows, pushed by the stream.
    const bought = Date.now();
    await api('POST', '/v1/orders/buy-now', {
      token: rivalToken,
      body: { sku, count: 3 },
      headers: { 'Idempotency-Key': 'rival-' + bought },
    });
    await waitText(page, `available-${sku}`, '15', 'another customer bought 3');
    log(`another customer bought 3: the page showed 15 left ${Date.now() - bought} ms later`);

    await page.getByTestId('checkout').click();
    await waitText(page, 'order-status', 'awaiting payment', 'checkout');
    const orderId = await textOf(page, 'order-id');
    await page.getByTestId('pay').click();
    await waitText(page, 'order-status', 'paid', 'payment');
    const total = await textOf(page, 'order-total');
    if (total !== '300.00') throw new Error(`order total ${total}, wanted 300.00 (2 x 150.00)`);
    log(`order ${orderId} paid, total ${total}`);
    await waitText(page, `available-${sku}`, '15', 'paying leaves the count');
    if (process.env.PAGE_SHOT) {
      await page.setViewportSize({ width: 1100, height: 640 });
      await page.screenshot({ path: process.env.PAGE_SHOT });
      log(`screenshot of the page in ${process.env.PAGE_SHOT}`);
    }
    log('passed');
  } catch (e) {
    mkdirSync(path.dirname(SCREENSHOT), { recursive: true });
    await page.screenshot({ path: SCREENSHOT, fullPage: true }).catch(() => {});
    console.error('browser-test: FAILED:', e.message);
    console.error(`browser-test: screenshot in ${SCREENSHOT}`);
    if (consoleLines.length) console.error('browser-test: page console:\n  ' + consoleLines.join('\n  '));
    process.exitCode = 1;
  } finally {
    await context.close();
    rmSync(profile, { recursive: true, force: true });
  }
}

main().catch((e) => {
  console.error('browser-test: FAILED:', e.stack || e.message);
  process.exitCode = 1;
});
