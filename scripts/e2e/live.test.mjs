// End-to-end test of the live demo page (GET /): two shoppers in two browsers.
//
// Sets up an auction and a flash sale through the HTTP API as the admin, registers two
// bidders, logs each into its own browser context through the page, and checks that:
//   - a bid in page A reaches page B over the WebSocket within 3 s, and A shows "You lead";
//   - a higher bid in page B makes page A show "You were outbid" and the new price;
//   - a custom amount works, and one below the minimum is answered with BID_TOO_LOW;
//   - buying in the flash sale reaches `confirmed`, a second buy hits the per-user limit,
//     and the order can be paid from "My orders".
//
// Plain node script: exits 0 on success, 1 on failure. Screenshots of both pages at the key
// steps, and on failure, are saved in scripts/e2e/artifacts/. Usually run by
// scripts/e2e/run, which starts a fresh server.
//
// Env: BASE_URL (default http://127.0.0.1:8080), ADMIN_EMAIL, ADMIN_PASSWORD,
// CHROMIUM (default /usr/bin/chromium), E2E_SCREENSHOT_DIR (default scripts/e2e/artifacts).

import { mkdirSync } from 'node:fs';
import { dirname, join } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const HERE = dirname(fileURLToPath(import.meta.url));
const BASE_URL = (process.env.BASE_URL || 'http://127.0.0.1:8080').replace(/\/$/, '');
const ADMIN_EMAIL = process.env.ADMIN_EMAIL;
const ADMIN_PASSWORD = process.env.ADMIN_PASSWORD;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
// Screenshots of both pages at the key steps (and on failure) land here.
const SCREENSHOT_DIR = process.env.E2E_SCREENSHOT_DIR || join(HERE, 'artifacts');
const WHOLE_TEST_TIMEOUT_MS = 120_000;
const LIVE_TIMEOUT_MS = 3_000; // a bid must reach the other browser this fast

// --- the HTTP API, called directly ----------------------------------------------------

async function call(method, path, { token, body } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (token) headers.Authorization = `Bearer ${token}`;
  const response = await fetch(`${BASE_URL}/api/v1${path}`, {
    method,
    headers,
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  if (!response.ok) throw new Error(`${method} ${path} -> ${response.status} ${text}`);
  return JSON.parse(text).data;
}

async function login(email, password) {
  const tokens = await call('POST', '/auth/login', { body: { email, password } });
  return tokens.access_token;
}

// --- tiny assertion helpers -------------------------------------------------------------

let stepNumber = 0;
function step(text) {
  stepNumber += 1;
  console.log(`  ${stepNumber}. ${text}`);
}

/** Polls `probe` until it returns a truthy value, or fails with `what` after `timeoutMs`. */
async function eventually(what, probe, timeoutMs = 10_000) {
  const deadline = Date.now() + timeoutMs;
  let last;
  for (;;) {
    try {
      last = await probe();
      if (last) return last;
    } catch (err) {
      last = err.message;
    }
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what} (last: ${last})`);
    await new Promise((resolve) => setTimeout(resolve, 50));
  }
}

/** Waits until the locator's text (trimmed) satisfies `expected` (a string or a RegExp). */
async function expectText(locator, expected, what, timeoutMs) {
  let seen;
  const matches = (text) => (expected instanceof RegExp ? expected.test(text) : text === expected);
  await eventually(
    `${what} to be ${expected}`,
    async () => {
      seen = (await locator.textContent({ timeout: 1000 }))?.trim();
      return matches(seen) || undefined;
    },
    timeoutMs,
  ).catch((err) => {
    throw new Error(`${err.message}; it shows "${seen}"`);
  });
}

async function expectAttribute(locator, name, value, what, timeoutMs) {
  await eventually(`${what} (${name}=${value})`, async () => (await locator.getAttribute(name, { timeout: 1000 })) === value || undefined, timeoutMs);
}

async function expectEnabled(locator, what, timeoutMs) {
  await eventually(`${what} to be enabled`, () => locator.isEnabled({ timeout: 1000 }), timeoutMs);
}

// --- the page ---------------------------------------------------------------------------

const byTestId = (root, id) => root.locator(`[data-testid="${id}"]`);

/** Saves both pages as <name>-a.png and <name>-b.png in the artifacts folder. */
async function snap(name, pageA, pageB) {
  mkdirSync(SCREENSHOT_DIR, { recursive: true });
  if (pageA) await pageA.screenshot({ path: join(SCREENSHOT_DIR, `${name}-a.png`), fullPage: true });
  if (pageB) await pageB.screenshot({ path: join(SCREENSHOT_DIR, `${name}-b.png`), fullPage: true });
}

async function openPage(browser, name) {
  const context = await browser.newContext({ viewport: { width: 1280, height: 1000 } });
  const page = await context.newPage();
  page.on('pageerror', (err) => {
    pageErrors.push(`${name}: ${err.message}`);
  });
  page.on('console', (message) => {
    if (message.type() === 'error') console.log(`    [${name} console] ${message.text()}`);
  });
  await page.goto(BASE_URL + '/');
  return page;
}

async function logInThroughUi(page, user) {
  await byTestId(page, 'login-email').fill(user.email);
  await byTestId(page, 'login-password').fill(user.password);
  await byTestId(page, 'login-submit').click();
  await expectText(byTestId(page, 'whoami'), user.email, 'the logged-in email', 10_000);
}

const pageErrors = [];

async function main() {
  if (!ADMIN_EMAIL || !ADMIN_PASSWORD) throw new Error('set ADMIN_EMAIL and ADMIN_PASSWORD');
  const stamp = `${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`;

  step('admin creates an auction, a product and a flash sale through the API');
  const admin = await login(ADMIN_EMAIL, ADMIN_PASSWORD);
  const now = Date.now();
  const auction = await call('POST', '/auctions', {
    token: admin,
    body: {
      title: `E2E auction ${stamp}`,
      description: 'A lot for the end-to-end test',
      start_price: '10.00',
      min_increment: '1.00',
      start_at: new Date(now).toISOString(),
      end_at: new Date(now + 5 * 60_000).toISOString(),
      extend_window_secs: 0,
      extend_by_secs: 0,
      payment_timeout_secs: 300,
    },
  });
  const buyable = await call('POST', '/auctions', {
    token: admin,
    body: {
      title: `E2E buy-now lot ${stamp}`,
      start_price: '10.00',
      min_increment: '1.00',
      buy_now_price: '40.00',
      start_at: new Date(now).toISOString(),
      end_at: new Date(now + 5 * 60_000).toISOString(),
      payment_timeout_secs: 300,
    },
  });
  const product = await call('POST', '/products', {
    token: admin,
    body: { title: `E2E gadget ${stamp}`, price: '10.00', stock: 10 },
  });
  const sale = await call('POST', '/sales', {
    token: admin,
    body: {
      product_id: product.id,
      price: '5.00',
      stock: 5,
      start_at: new Date(now).toISOString(),
      end_at: new Date(now + 5 * 60_000).toISOString(),
      per_user_limit: 1,
      payment_timeout_secs: 300,
    },
  });

  step('two bidders register through the API');
  const alice = { email: `alice-${stamp}@e2e.test`, password: 'alice-password' };
  const bob = { email: `bob-${stamp}@e2e.test`, password: 'bob-password' };
  for (const user of [alice, bob]) await call('POST', '/auth/register', { body: user });

  // launch() gives the browser a fresh temporary profile and deletes it on close.
  const browser = await chromium.launch({
    executablePath: CHROMIUM,
    headless: true,
    args: [
      '--headless=new',
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
  let pageA;
  let pageB;
  try {
    step('page A logs in as alice, page B as bob, through the login form');
    pageA = await openPage(browser, 'A');
    pageB = await openPage(browser, 'B');
    // Every WebSocket message page B receives, to prove the price came over the socket.
    const framesB = [];
    pageB.on('websocket', (socket) => socket.on('framereceived', (frame) => framesB.push(String(frame.payload))));
    await logInThroughUi(pageA, alice);
    await logInThroughUi(pageB, bob);

    const auctionIn = (page) => page.locator(`[data-testid="auction-card"][data-auction-id="${auction.id}"]`);
    const cardA = auctionIn(pageA);
    const cardB = auctionIn(pageB);

    step('both pages show the auction with an open WebSocket');
    await expectAttribute(byTestId(cardA, 'ws-status'), 'data-state', 'open', 'page A socket', 15_000);
    await expectAttribute(byTestId(cardB, 'ws-status'), 'data-state', 'open', 'page B socket', 15_000);
    await expectText(byTestId(cardB, 'live-price'), '—', 'page B price before any bid', 2_000);
    await expectText(byTestId(cardA, 'bid-button'), 'Bid 10.00', 'page A bid button', 2_000);
    await expectText(byTestId(cardA, 'auction-countdown'), /^\d+m \d+s$/, 'page A countdown', 2_000);

    step('A bids the minimum: B sees 10.00 over the WebSocket within 3 s, A leads');
    await expectEnabled(byTestId(cardA, 'bid-button'), 'page A bid button', 5_000);
    await byTestId(cardA, 'bid-button').click();
    await expectText(byTestId(cardB, 'live-price'), '10.00', 'page B live price', LIVE_TIMEOUT_MS);
    await eventually(
      'a WebSocket bid message at 10.00 in page B',
      () => framesB.some((f) => f.includes('"type":"bid"') && f.includes('"price":"10.00"')),
      1_000,
    );
    await expectText(byTestId(cardA, 'auction-leader'), 'You lead', 'page A leader line', LIVE_TIMEOUT_MS);
    await expectText(byTestId(cardA, 'auction-message'), 'Your bid of 10.00 was accepted.', 'page A message', LIVE_TIMEOUT_MS);
    // Bidders appear by their display name (the email before the @), not by an id.
    await expectText(byTestId(cardB, 'auction-leader'), `Leader: alice-${stamp}`, 'page B leader line', LIVE_TIMEOUT_MS);
    await expectText(byTestId(cardB, 'bid-button'), 'Bid 11.00', 'page B bid button', LIVE_TIMEOUT_MS);

    step('B bids 11.00: A sees "You were outbid" and the new price');
    await expectEnabled(byTestId(cardB, 'bid-button'), 'page B bid button', 5_000);
    await byTestId(cardB, 'bid-button').click();
    await expectText(byTestId(cardA, 'live-price'), '11.00', 'page A live price', LIVE_TIMEOUT_MS);
    await expectText(byTestId(cardA, 'outbid-notice'), 'You were outbid!', 'page A outbid notice', LIVE_TIMEOUT_MS);
    if (!(await byTestId(cardA, 'outbid-notice').isVisible())) throw new Error('the outbid notice is not visible');
    // One current message per card: the outbid notice replaced "Your bid of 10.00 was accepted."
    await expectText(byTestId(cardA, 'auction-message'), '', 'page A message after the outbid', LIVE_TIMEOUT_MS);
    await expectText(byTestId(cardB, 'auction-leader'), 'You lead', 'page B leader line', LIVE_TIMEOUT_MS);
    await expectText(byTestId(cardA, 'auction-leader'), `Leader: bob-${stamp}`, 'page A leader line', LIVE_TIMEOUT_MS);
    await snap('outbid', pageA, pageB);

    step('A bids a custom 15.50: A leads again, B sees it and is outbid');
    await byTestId(cardA, 'bid-amount').fill('15.50');
    await byTestId(cardA, 'bid-custom-button').click();
    await expectText(byTestId(cardB, 'live-price'), '15.50', 'page B live price', LIVE_TIMEOUT_MS);
    await expectText(byTestId(cardA, 'auction-leader'), 'You lead', 'page A leader line', LIVE_TIMEOUT_MS);
    if (await byTestId(cardA, 'outbid-notice').isVisible()) throw new Error('page A still shows the outbid notice');
    await expectText(byTestId(cardB, 'outbid-notice'), 'You were outbid!', 'page B outbid notice', LIVE_TIMEOUT_MS);

    step('B bids 16.00, below the 16.50 minimum: BID_TOO_LOW is explained');
    await byTestId(cardB, 'bid-amount').fill('16.00');
    await byTestId(cardB, 'bid-custom-button').click();
    // The page words it from the error envelope's details.min_bid: only that wording
    // passes, so a plain-text error (no envelope) fails the test.
    const tooLow = /^Too low: the minimum bid is now 16\.50\.$/;
    await expectText(byTestId(cardB, 'auction-message'), tooLow, 'page B bid message', 5_000);
    await expectText(byTestId(cardB, 'live-price'), '15.50', 'page B live price', 1_000);

    step('A bids up to 30.00 (a maximum): the price stays, B bids 20.00 and is outbid at once by 21.00');
    await byTestId(cardA, 'bid-amount').fill('30.00');
    await byTestId(cardA, 'bid-max-button').click();
    await expectText(byTestId(cardA, 'auction-message'), 'You lead at 15.50; the site bids for you up to 30.00.', 'page A maximum', 5_000);
    await byTestId(cardB, 'bid-amount').fill('20.00');
    await byTestId(cardB, 'bid-custom-button').click();
    await expectText(byTestId(cardB, 'auction-message'), /^Your bid of 20\.00 was outbid at once by a maximum: the price is now 21\.00\.$/, 'page B message', 5_000);
    await expectText(byTestId(cardA, 'live-price'), '21.00', 'page A live price', LIVE_TIMEOUT_MS);
    await expectText(byTestId(cardA, 'auction-leader'), 'You lead', 'page A leader line', LIVE_TIMEOUT_MS);
    if (framesB.some((f) => f.includes('"30.00"'))) throw new Error("A's maximum reached page B");

    step('B buys the buy-now lot: B has won it, A sees it sold to bob');
    const buyableA = pageA.locator(`[data-testid="auction-card"][data-auction-id="${buyable.id}"]`);
    const buyableB = pageB.locator(`[data-testid="auction-card"][data-auction-id="${buyable.id}"]`);
    await expectText(byTestId(buyableA, 'buy-now-button'), 'Buy now for 40.00', 'page A buy-now button', 15_000);
    await expectEnabled(byTestId(buyableB, 'buy-now-button'), 'page B buy-now button', 15_000);
    await byTestId(buyableB, 'buy-now-button').click();
    await expectText(byTestId(buyableB, 'auction-result'), /^You won at 40\.00!/, 'page B result', LIVE_TIMEOUT_MS);
    await expectText(byTestId(buyableA, 'auction-result'), `Sold to bob-${stamp} for 40.00.`, 'page A result', LIVE_TIMEOUT_MS);
    if (await byTestId(buyableA, 'buy-now-button').isVisible()) throw new Error('page A still offers buy now');

    step('A buys in the flash sale: the reservation reaches confirmed');
    const saleA = pageA.locator(`[data-testid="sale-card"][data-sale-id="${sale.id}"]`);
    await expectText(byTestId(saleA, 'sale-remaining'), '5', 'remaining units', 10_000);
    await expectEnabled(byTestId(saleA, 'buy-button'), 'the buy button', 5_000);
    await byTestId(saleA, 'buy-button').click();
    await expectAttribute(byTestId(saleA, 'reservation-status'), 'data-status', 'confirmed', 'the reservation', 15_000);
    await expectText(byTestId(saleA, 'sale-remaining'), '4', 'remaining units after the purchase', 10_000);

    step('A buys again: the per-user limit of 1 is reported');
    await expectEnabled(byTestId(saleA, 'buy-button'), 'the buy button', 5_000);
    await byTestId(saleA, 'buy-button').click();
    await expectAttribute(byTestId(saleA, 'reservation-status'), 'data-status', 'error', 'the second purchase', 10_000);
    await expectText(byTestId(saleA, 'reservation-status'), /limit/i, 'the limit message', 1_000);

    step('A pays the sale order in My orders');
    const orderRow = pageA.locator('[data-testid="order-row"][data-kind="sale"]');
    await eventually('the sale order in My orders', async () => (await orderRow.count()) === 1, 10_000);
    await expectText(byTestId(orderRow, 'order-countdown'), /^\d+m \d+s$/, 'the payment countdown', 2_000);
    await byTestId(orderRow, 'pay-button').click();
    await expectAttribute(byTestId(orderRow, 'order-status'), 'data-status', 'paid', 'the order status', 10_000);

    if (pageErrors.length) throw new Error(`JavaScript errors in the page:\n${pageErrors.join('\n')}`);

    await snap('end', pageA, pageB);
  } catch (err) {
    await snap('failure', pageA, pageB).catch(() => {});
    throw err;
  } finally {
    await browser.close();
  }
}

console.log(`e2e: live page at ${BASE_URL}`);
const timer = setTimeout(() => {
  console.error(`e2e: FAILED: the whole test took longer than ${WHOLE_TEST_TIMEOUT_MS / 1000} s`);
  process.exit(1);
}, WHOLE_TEST_TIMEOUT_MS);

try {
  await main();
  console.log('e2e: PASSED');
  clearTimeout(timer);
  process.exit(0);
} catch (err) {
  console.error(`e2e: FAILED at step ${stepNumber}: ${err.stack || err}`);
  console.error(`e2e: screenshots in ${SCREENSHOT_DIR}/failure-a.png (page A) and failure-b.png (page B)`);
  clearTimeout(timer);
  process.exit(1);
}
