// Flash-sale rush: many shoppers POST /sales/{id}/purchase at once.
//
//   k6 run -e SALE=<sale id> scripts/k6/purchase.js
//   env: SALE (required), VUS (200), DURATION (30s), TOKENS, BASE_URL (see lib.js)
//
// Every answer must be 202 (reserved) or 409 (sold out / per-user limit / not active).
// At the end, `accepted` x quantity can never exceed the sale's stock: that is the point.

import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import { BASE_URL, requireEnv, loadTokens, tokenForIteration, params, errorCode, explainUnexpected } from './lib.js';

const SALE = requireEnv('SALE', 'the flash sale id (spike-server seed --demo prints it)');
loadTokens();
const URL = `${BASE_URL}/api/v1/sales/${SALE}/purchase`;
const BODY = JSON.stringify({ quantity: 1 });

const accepted = new Counter('accepted'); // 202: a unit was reserved
const refused = new Counter('refused'); // 409: SOLD_OUT, LIMIT_REACHED or NOT_ACTIVE

// 409 is a normal business answer in a sale that sells out, not a failed request: without
// this line k6 would count every 409 (and so most of the test) in http_req_failed.
http.setResponseCallback(http.expectedStatuses(202, 409));

export const options = {
  vus: parseInt(__ENV.VUS || '200', 10),
  duration: __ENV.DURATION || '30s',
  thresholds: {
    // Requests that were neither 202 nor 409 (429, 5xx, timeouts): under 1%.
    http_req_failed: ['rate<0.01'],
    // The check below passes for 202 and 409 only.
    checks: ['rate>0.99'],
  },
};

export default function () {
  // A different shopper each iteration; each may hold at most `per_user_limit` units.
  const res = http.post(URL, BODY, params(tokenForIteration(), 'purchase'));
  const ok = check(res, { 'status is 202 or 409': (r) => r.status === 202 || r.status === 409 });
  if (res.status === 202) accepted.add(1);
  else if (res.status === 409) refused.add(1, { error: errorCode(res) });
  if (!ok) explainUnexpected(res);
}
