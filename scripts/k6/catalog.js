// Catalog reads: GET /products/{id}, served from the Redis cache after the first read.
//
//   k6 run -e PRODUCT=<product id> scripts/k6/catalog.js
//   env: PRODUCT (required), VUS (50), DURATION (30s), BASE_URL (see lib.js)
//
// A public endpoint: no token, so no tokens file either.

import http from 'k6/http';
import { check } from 'k6';
import { BASE_URL, requireEnv, params, explainUnexpected } from './lib.js';

const PRODUCT = requireEnv('PRODUCT', 'the product id (spike-server seed --demo prints it)');
const URL = `${BASE_URL}/api/v1/products/${PRODUCT}`;

http.setResponseCallback(http.expectedStatuses(200));

export const options = {
  vus: parseInt(__ENV.VUS || '50', 10),
  duration: __ENV.DURATION || '30s',
  thresholds: {
    http_req_failed: ['rate<0.01'],
    checks: ['rate>0.99'],
    // A cache hit is one Redis GET: 99% of reads must answer within 50 ms.
    http_req_duration: ['p(99)<50'],
  },
};

export default function () {
  const res = http.get(URL, params(null, 'product'));
  const ok = check(res, {
    'status is 200': (r) => r.status === 200,
    'body is the product': (r) => r.status === 200 && r.json('data.id') === PRODUCT,
  });
  if (!ok) explainUnexpected(res);
}
