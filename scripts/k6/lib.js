// Shared helpers for the k6 scripts in this folder.
//
// Everything at the top level runs in k6's "init context": once per VU, before the test
// starts. That is the only place where open() may read a file.

import http from 'k6/http';
import exec from 'k6/execution';
import { SharedArray } from 'k6/data';

// Where the server listens; no trailing slash.
export const BASE_URL = (__ENV.BASE_URL || 'http://127.0.0.1:8080').replace(/\/+$/, '');

// Fails the test before it starts, with a message that says what to set.
export function requireEnv(name, what) {
  const value = __ENV[name];
  if (!value) {
    throw new Error(`${name} is not set: pass ${what}, e.g. k6 run -e ${name}=<id> ...`);
  }
  return value;
}

// k6's open() resolves a relative path against the *script's* folder (scripts/k6/), while
// people expect their shell's current folder, so a relative TOKENS is made absolute with
// $PWD (k6 run passes the shell's environment to __ENV).
function fromCwd(path) {
  if (path.startsWith('/') || !__ENV.PWD) return path;
  return `${__ENV.PWD}/${path}`;
}

const TOKENS_FILE = __ENV.TOKENS || 'shoppers.tokens';
let tokens = null;

// Reads the tokens: one access token per line, as written by
// `spike-server tokens --count N --out FILE`. Call it at the top level of a script (init
// context) if the script sends authenticated requests. A SharedArray is parsed once and
// shared read-only by all VUs instead of being copied into each.
export function loadTokens() {
  tokens = new SharedArray('tokens', () => {
    const lines = open(fromCwd(TOKENS_FILE))
      .split('\n')
      .map((line) => line.trim())
      .filter((line) => line.length > 0);
    if (lines.length === 0) throw new Error(`${TOKENS_FILE} holds no tokens`);
    return lines;
  });
  return tokens;
}

function loaded() {
  if (tokens === null) throw new Error('call loadTokens() at the top level of the script first');
  return tokens;
}

// A different shopper for every iteration of the scenario: the test walks down the file, so
// each shopper buys (or bids) only now and then. Wraps around at the end of the file.
export function tokenForIteration() {
  const all = loaded();
  return all[exec.scenario.iterationInTest % all.length];
}

// The same shopper for every iteration of this VU: use it when a VU must read back what it
// created (a reservation is visible to its buyer only).
export function tokenForVU() {
  const all = loaded();
  return all[(exec.vu.idInTest - 1) % all.length];
}

// Headers of a JSON request; with a token, also the bearer authorization.
export function jsonHeaders(token) {
  const headers = { 'Content-Type': 'application/json', Accept: 'application/json' };
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

// Request params: headers and a `name` tag (it names the request in the metrics instead of
// its URL). `expected`, when given, lists the statuses that count as success for
// `http_req_failed` for this request only; otherwise http.setResponseCallback() decides.
export function params(token, name, ...expected) {
  const p = { headers: jsonHeaders(token), tags: { name } };
  if (expected.length > 0) p.responseCallback = http.expectedStatuses(...expected);
  return p;
}

// The `error` code of an error envelope ({"code":N,"error":"SOLD_OUT",...}), or ''.
export function errorCode(res) {
  try {
    return res.json('error') || '';
  } catch (_) {
    return ''; // not JSON (a proxy's page, a closed connection)
  }
}

// Logs the first unexpected answer of the first few VUs, so a misconfigured run (429: the
// rate limiter is on; 401: stale tokens; 404: wrong id) says why without flooding the log.
let told = false;
export function explainUnexpected(res) {
  if (told || exec.vu.idInTest > 3) return;
  told = true;
  let hint = '';
  if (res.status === 429) hint = ' (rate limited: start the server with SPIKE__RATE_LIMIT__ENABLED=false)';
  if (res.status === 401) hint = ' (token rejected: make new ones with spike-server tokens)';
  if (res.status === 0) hint = ` (no answer: ${res.error})`;
  console.warn(`unexpected ${res.status} ${errorCode(res)} from ${res.request.method} ${res.url}${hint}`);
}

// Money travels as a decimal string with 2 decimals ("13.00"). Arithmetic is done in whole
// cents, never in floats: 0.1 + 0.2 is not 0.3 in JavaScript.
export function toCents(text) {
  const m = /^(\d+)(?:\.(\d{1,2}))?$/.exec(String(text));
  if (!m) throw new Error(`not a money amount: ${text}`);
  return parseInt(m[1], 10) * 100 + parseInt((m[2] || '0').padEnd(2, '0'), 10);
}

export function fromCents(cents) {
  return `${Math.floor(cents / 100)}.${String(cents % 100).padStart(2, '0')}`;
}
