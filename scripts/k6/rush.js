// Chaos rush (used by scripts/chaos): every shopper in TOKENS tries once to buy one unit of
// SALE, at a fixed arrival rate, so a fault injected a few seconds in lands mid-sale. Each
// answer is logged as one console line, `answer <shopper> <status> <reservation id> <error>`,
// which scripts/chaos matches against the orders in Postgres (k6 run --console-output FILE).
//
//   k6 run -q --no-summary --console-output answers.log -e SALE=<id> -e RATE=150 scripts/k6/rush.js
//   env: SALE (required), RATE (purchases per second, 150), TOKENS, BASE_URL (see lib.js)

import http from 'k6/http';
import exec from 'k6/execution';
import { BASE_URL, requireEnv, loadTokens, params, errorCode } from './lib.js';

const SALE = requireEnv('SALE', 'the flash sale id');
const shoppers = loadTokens();
const RATE = parseInt(__ENV.RATE || '150', 10);
const URL = `${BASE_URL}/api/v1/sales/${SALE}/purchase`;
const BODY = JSON.stringify({ quantity: 1 });

// Every status is an answer worth recording here; none is a k6 failure.
http.setResponseCallback(http.expectedStatuses({ min: 100, max: 599 }));

export const options = {
  scenarios: {
    rush: {
      executor: 'constant-arrival-rate',
      rate: RATE,
      timeUnit: '1s',
      duration: `${Math.ceil(shoppers.length / RATE)}s`,
      preAllocatedVUs: 50,
      maxVUs: 500,
    },
  },
};

export default function () {
  const shopper = exec.scenario.iterationInTest;
  if (shopper >= shoppers.length) return;
  const request = params(shoppers[shopper], 'purchase');
  request.timeout = '20s';
  const res = http.post(URL, BODY, request);
  let reservation = '-';
  if (res.status === 202) {
    try {
      reservation = res.json('data.reservation_id') || '-';
    } catch (_) {
      reservation = '-';
    }
  }
  console.log(`answer ${shopper} ${res.status} ${reservation} ${res.status >= 400 ? errorCode(res) || '-' : '-'}`);
}
