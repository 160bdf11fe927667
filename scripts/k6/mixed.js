// A sale in progress: browsers, buyers and pollers at the same time, each at a fixed rate.
//
//   k6 run -e PRODUCT=<product id> -e SALE=<sale id> scripts/k6/mixed.js
//   env: PRODUCT, SALE (required), DURATION (30s), BROWSE_RATE (100/s), BUY_RATE (50/s),
//        POLL_RATE (20/s), POLL_OWNERS (10), TOKENS, BASE_URL (see lib.js)
//
// `constant-arrival-rate` starts N iterations per second whatever the latency (unlike
// `vus`, where a slow server slows the test down): if k6 runs out of VUs to start them it
// counts `dropped_iterations`, which means "raise maxVUs", not "the server failed".
//
// Use a fresh sale (spike-server seed --demo): setup() reserves POLL_OWNERS units first.

import http from 'k6/http';
import { check, fail } from 'k6';
import { Counter } from 'k6/metrics';
import {
  BASE_URL, requireEnv, loadTokens, tokenForIteration, params, errorCode, explainUnexpected,
} from './lib.js';

const PRODUCT = requireEnv('PRODUCT', 'the product id (spike-server seed --demo prints it)');
const SALE = requireEnv('SALE', 'the flash sale id (spike-server seed --demo prints it)');
const tokens = loadTokens();
const API = `${BASE_URL}/api/v1`;
const DURATION = __ENV.DURATION || '30s';
const POLL_OWNERS = parseInt(__ENV.POLL_OWNERS || '10', 10);

const accepted = new Counter('accepted'); // buyers: 202
const refused = new Counter('refused'); // buyers: 409
const queued = new Counter('poll_queued'); // pollers: order not written yet
const confirmed = new Counter('poll_confirmed'); // pollers: order written
const failed = new Counter('poll_failed'); // pollers: reservation undone (see `reason`)

// One constant-arrival-rate scenario per kind of user. `exec` names the function it runs.
function arrivals(exec, rate, maxVUs) {
  return {
    executor: 'constant-arrival-rate',
    exec,
    rate: parseInt(rate, 10),
    timeUnit: '1s',
    duration: DURATION,
    preAllocatedVUs: Math.min(20, maxVUs),
    maxVUs,
  };
}

export const options = {
  scenarios: {
    browse: arrivals('browse', __ENV.BROWSE_RATE || '100', 100),
    buy: arrivals('buy', __ENV.BUY_RATE || '50', 100),
    poll: arrivals('poll', __ENV.POLL_RATE || '20', 50),
  },
  // k6 tags every sample with its scenario's name, so each threshold below judges one kind
  // of user. Reads must be fast; the purchase does more work (a Redis script and a
  // confirmed publish to RabbitMQ) and gets more room.
  thresholds: {
    'http_req_failed{scenario:browse}': ['rate<0.01'],
    'http_req_failed{scenario:buy}': ['rate<0.01'],
    'http_req_failed{scenario:poll}': ['rate<0.01'],
    'http_req_duration{scenario:browse}': ['p(99)<100'],
    'http_req_duration{scenario:buy}': ['p(99)<250'],
    'http_req_duration{scenario:poll}': ['p(99)<100'],
    'checks{scenario:browse}': ['rate>0.99'],
    'checks{scenario:buy}': ['rate>0.99'],
    'checks{scenario:poll}': ['rate>0.99'],
  },
};

// Runs once before the scenarios. A reservation is visible only to its buyer, and each VU
// has its own memory, so a poller can't read what a buyer VU reserved. Instead setup()
// buys one unit with each of the last POLL_OWNERS tokens of the file, and hands the
// (token, reservation) pairs to every VU: the pollers read them with the buyer's token.
export function setup() {
  const owned = [];
  for (let i = 0; i < POLL_OWNERS && i < tokens.length; i++) {
    const token = tokens[tokens.length - 1 - i];
    const res = http.post(`${API}/sales/${SALE}/purchase`, JSON.stringify({ quantity: 1 }),
      params(token, 'purchase', 202));
    if (res.status === 202) owned.push({ token, id: res.json('data.reservation_id') });
  }
  if (owned.length === 0) {
    fail(`setup could not reserve anything in sale ${SALE} (sold out or not active?): ` +
      'run spike-server seed --demo for a fresh one');
  }
  return { owned };
}

// Browsers: half read the product, half the sale (live `remaining` from Redis).
export function browse() {
  const product = Math.random() < 0.5;
  const url = product ? `${API}/products/${PRODUCT}` : `${API}/sales/${SALE}`;
  const res = http.get(url, params(null, product ? 'product' : 'sale', 200));
  if (!check(res, { 'browse is 200': (r) => r.status === 200 })) explainUnexpected(res);
}

// Buyers: a different shopper each iteration, like purchase.js.
export function buy() {
  const res = http.post(`${API}/sales/${SALE}/purchase`, JSON.stringify({ quantity: 1 }),
    params(tokenForIteration(), 'purchase', 202, 409));
  const ok = check(res, { 'purchase is 202 or 409': (r) => r.status === 202 || r.status === 409 });
  if (res.status === 202) accepted.add(1);
  else if (res.status === 409) refused.add(1, { error: errorCode(res) });
  if (!ok) explainUnexpected(res);
}

// Pollers: each iteration reads one of setup()'s reservations with its buyer's token.
export function poll(data) {
  const mine = data.owned[Math.floor(Math.random() * data.owned.length)];
  const res = http.get(`${API}/reservations/${mine.id}`, params(mine.token, 'reservation', 200));
  const status = res.status === 200 ? res.json('data.status') : '';
  const ok = check(res, {
    'reservation is 200': (r) => r.status === 200,
    'status is queued, confirmed or failed': () => ['queued', 'confirmed', 'failed'].includes(status),
  });
  if (status === 'queued') queued.add(1);
  else if (status === 'confirmed') confirmed.add(1);
  else if (status === 'failed') failed.add(1);
  if (!ok) explainUnexpected(res);
}
