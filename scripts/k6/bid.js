// Live auction: many bidders read the auction, then bid a little above the minimum.
//
//   k6 run -e AUCTION=<auction id> scripts/k6/bid.js
//   env: AUCTION (required), VUS (50), DURATION (30s), TOKENS, BASE_URL (see lib.js)
//
// Each iteration: GET /auctions/{id} for `min_next_bid`, then POST /auctions/{id}/bids with
// min_next_bid + 0..9 whole units. Between the read and the bid other VUs bid too, so many
// bids arrive too low: 409 BID_TOO_LOW is an expected answer, as is 409 AUCTION_CLOSED once
// the auction ends. Money is always a string with 2 decimals, computed in integer cents.

import http from 'k6/http';
import { check } from 'k6';
import { Counter } from 'k6/metrics';
import {
  BASE_URL, requireEnv, loadTokens, tokenForIteration, params, errorCode, explainUnexpected,
  toCents, fromCents,
} from './lib.js';

const AUCTION = requireEnv('AUCTION', 'the auction id (spike-server seed --demo prints it)');
loadTokens();
const URL = `${BASE_URL}/api/v1/auctions/${AUCTION}`;

const accepted = new Counter('accepted'); // 201: the bid leads
const tooLow = new Counter('too_low'); // 409 BID_TOO_LOW: someone bid first
const closed = new Counter('closed'); // 409 AUCTION_CLOSED: the auction has ended

export const options = {
  vus: parseInt(__ENV.VUS || '50', 10),
  duration: __ENV.DURATION || '30s',
  thresholds: {
    // The read expects 200 and the bid 201 or 409 (set per request below).
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
  },
};

export default function () {
  const token = tokenForIteration();

  const read = http.get(URL, params(token, 'auction', 200));
  const readOk = check(read, {
    'auction read is 200': (r) => r.status === 200,
    // current_price is null before the first bid; otherwise the next bid must be above it.
    'min_next_bid is above current_price': (r) => {
      if (r.status !== 200) return false;
      const current = r.json('data.current_price');
      return current === null || toCents(r.json('data.min_next_bid')) > toCents(current);
    },
  });
  if (!readOk) {
    explainUnexpected(read);
    return;
  }

  // min_next_bid + 0..9 whole units, in cents; sent as "123.00".
  const cents = toCents(read.json('data.min_next_bid')) + Math.floor(Math.random() * 10) * 100;
  const body = JSON.stringify({ amount: fromCents(cents) });

  const res = http.post(`${URL}/bids`, body, params(token, 'bid', 201, 409));
  const code = errorCode(res);
  const ok = check(res, {
    'bid is 201 or 409': (r) => r.status === 201 || r.status === 409,
  });
  if (res.status === 201) accepted.add(1);
  else if (code === 'BID_TOO_LOW') tooLow.add(1);
  else if (code === 'AUCTION_CLOSED') closed.add(1);
  if (!ok) explainUnexpected(res);
}
