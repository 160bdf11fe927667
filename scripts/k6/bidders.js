// Chaos bidders (used by scripts/chaos): VUS bidders, one shopper token each, outbid each
// other on AUCTION for DURATION. Every bid's answer is logged as one console line,
// `bid <bidder> <status> <amount> <seq>`, which scripts/chaos matches against the bids in
// Postgres (k6 run --console-output FILE).
//
//   k6 run -q --no-summary --console-output bids.log -e AUCTION=<id> scripts/k6/bidders.js
//   env: AUCTION (required), VUS (30), DURATION (20s), TOKENS, BASE_URL (see lib.js)

import http from 'k6/http';
import exec from 'k6/execution';
import { BASE_URL, requireEnv, loadTokens, tokenForVU, params, toCents, fromCents } from './lib.js';

const AUCTION = requireEnv('AUCTION', 'the auction id');
loadTokens();
const URL = `${BASE_URL}/api/v1/auctions/${AUCTION}`;

// Every status is an answer worth recording here; none is a k6 failure.
http.setResponseCallback(http.expectedStatuses({ min: 100, max: 599 }));

export const options = {
  vus: parseInt(__ENV.VUS || '30', 10),
  duration: __ENV.DURATION || '20s',
};

export default function () {
  const token = tokenForVU();
  const read = http.get(URL, params(token, 'auction'));
  if (read.status !== 200) return;
  // min_next_bid + 0..4 whole units, so bidders collide and outbid each other.
  const cents = toCents(read.json('data.min_next_bid')) + Math.floor(Math.random() * 5) * 100;
  const amount = fromCents(cents);
  const res = http.post(`${URL}/bids`, JSON.stringify({ amount }), params(token, 'bid'));
  let seq = '-';
  if (res.status === 201) {
    try {
      seq = res.json('data.seq');
    } catch (_) {
      seq = '-';
    }
  }
  console.log(`bid ${exec.vu.idInTest - 1} ${res.status} ${amount} ${seq}`);
}
