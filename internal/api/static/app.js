// Spike's live demo page: plain JavaScript, no framework, no build step.
//
// Read it top to bottom:
//   1. small helpers (DOM, money in integer cents, countdowns)
//   2. the API client (envelopes, errors, access token refresh)
//   3. logging in and out
//   4. flash sales: buy, then poll the reservation
//   5. live auctions: one WebSocket per auction, bids, "you were outbid"
//   6. my orders: pay before the deadline
//   7. start-up: polling loops and the countdown ticker
//
// Every value shown comes from the API; nothing is put into the page with innerHTML, so a
// product title can never inject markup.
'use strict';

// ---------------------------------------------------------------------------------------
// 1. Helpers
// ---------------------------------------------------------------------------------------

const SALES_REFRESH_MS = 3000;    // how often `remaining` is refreshed
const AUCTIONS_REFRESH_MS = 5000; // how often we look for new auctions (prices come live)
const ORDERS_REFRESH_MS = 5000;
const RESERVATION_POLL_MS = 500;
const RESERVATION_GIVE_UP_MS = 60000;
const WS_MAX_BACKOFF_MS = 30000;

const SHOWN_SALE_STATUSES = ['scheduled', 'active', 'sold_out'];
const SHOWN_AUCTION_STATUSES = ['scheduled', 'live'];

/** The element inside `root` with the given data-testid. */
function part(root, testId) {
  return root.querySelector(`[data-testid="${testId}"]`);
}

/** A fresh copy of a <template> from index.html. */
function fromTemplate(id) {
  return document.getElementById(id).content.firstElementChild.cloneNode(true);
}

function sleep(ms) {
  return new Promise((resolve) => setTimeout(resolve, ms));
}

/** The last 6 characters of a UUID: enough to tell bidders and orders apart on screen. */
function shortId(id) {
  return id ? id.slice(-6) : '';
}

/** Shows a message in a status line; `kind` is "ok", "error", "pending" or "" (neutral). */
function say(element, text, kind = '') {
  element.textContent = text;
  element.className = `message ${kind}`.trim();
}

// Money is always a JSON string with two decimals ("13.00"). Floats cannot hold 0.10
// exactly, so any arithmetic happens in integer cents: "13.00" -> 1300 -> "14.00".

/** "13.5" or "13.50" -> 1350; anything else (negative, 3 decimals, letters) -> null. */
function toCents(text) {
  const match = /^(\d{1,10})(?:\.(\d{1,2}))?$/.exec(String(text).trim());
  if (!match) return null;
  return Number(match[1]) * 100 + Number((match[2] || '').padEnd(2, '0'));
}

/** 1350 -> "13.50". */
function formatCents(cents) {
  const whole = Math.floor(cents / 100);
  const rest = String(cents % 100).padStart(2, '0');
  return `${whole}.${rest}`;
}

/** 93_000 ms -> "1m 33s". */
function formatDuration(ms) {
  const total = Math.max(0, Math.ceil(ms / 1000));
  const days = Math.floor(total / 86400);
  const hours = Math.floor((total % 86400) / 3600);
  const minutes = Math.floor((total % 3600) / 60);
  const seconds = total % 60;
  if (days) return `${days}d ${hours}h ${minutes}m`;
  if (hours) return `${hours}h ${minutes}m ${seconds}s`;
  if (minutes) return `${minutes}m ${seconds}s`;
  return `${seconds}s`;
}

/**
 * The server's clock as far as the page knows it. Sale and auction answers and the live
 * socket's first message carry `server_time`; the difference to the browser's clock is kept,
 * so a countdown ends when the server's deadline passes even if the browser's clock is off.
 */
let clockOffsetMs = 0;

function serverNow() {
  return Date.now() + clockOffsetMs;
}

/** Learns the offset from an answer (an object or a page of them) that has `server_time`. */
function learnServerTime(data) {
  const items = data && Array.isArray(data.items) ? data.items : [data];
  const stamped = items.find((item) => item && item.server_time);
  if (stamped) clockOffsetMs = Date.parse(stamped.server_time) - Date.now();
}

/**
 * Turns `element` into a countdown to `deadline` (an RFC 3339 string). The ticker at the
 * bottom of this file refreshes every element that has a `data-deadline`; once the
 * deadline has passed it shows `whenDone`.
 */
function setCountdown(element, deadline, whenDone) {
  element.dataset.deadline = deadline;
  element.dataset.done = whenDone;
  renderCountdown(element, serverNow());
}

function renderCountdown(element, now) {
  const left = Date.parse(element.dataset.deadline) - now;
  element.textContent = left > 0 ? formatDuration(left) : element.dataset.done;
  element.classList.toggle('soon', left > 0 && left < 10000);
}

function clearCountdown(element) {
  delete element.dataset.deadline;
  element.textContent = '';
}

// ---------------------------------------------------------------------------------------
// 2. The API client
// ---------------------------------------------------------------------------------------

/** A failed request. `code` is the stable error name, e.g. "SOLD_OUT". */
class ApiError extends Error {
  constructor(status, body, retryAfter) {
    super((body && body.message) || `HTTP ${status}`);
    this.status = status;
    this.code = body && body.error;
    this.details = (body && body.details) || null;
    this.retryAfter = retryAfter;
  }
}

/**
 * Calls `/api/v1{path}` and returns the `data` of the envelope
 * `{"code":0,"message":"OK","data":...}`. Errors come back as
 * `{"code","error","message","request_id"}` and are thrown as an ApiError.
 * When the access token has expired (401) it is refreshed once and the call repeated.
 */
async function api(method, path, body, { retryOn401 = true } = {}) {
  const headers = { Accept: 'application/json' };
  if (body !== undefined) headers['Content-Type'] = 'application/json';
  if (session.accessToken) headers.Authorization = `Bearer ${session.accessToken}`;

  let response;
  try {
    response = await fetch(`/api/v1${path}`, {
      method,
      headers,
      body: body === undefined ? undefined : JSON.stringify(body),
    });
  } catch {
    throw new ApiError(0, { error: 'NETWORK', message: 'cannot reach the server' });
  }
  const text = await response.text();

  if (response.ok) {
    const data = JSON.parse(text).data;
    learnServerTime(data);
    return data;
  }

  // 401 on a call that sent a token: it has expired. Refresh it and try once more.
  if (response.status === 401 && retryOn401 && session.refreshToken && (await refreshTokens())) {
    return api(method, path, body, { retryOn401: false });
  }
  throw new ApiError(response.status, parseErrorBody(text), response.headers.get('Retry-After'));
}

/**
 * The error envelope, or a stand-in for it. Some error responses arrive as plain text
 * such as "BID_TOO_LOW: bid too low: the minimum bid is 16.50" instead of JSON (the
 * server's CORS layer does that to requests with an Origin header, which the browser adds
 * to every POST), so "NAME: message" is understood too; `details` is lost then.
 */
function parseErrorBody(text) {
  try {
    return JSON.parse(text);
  } catch {
    const match = /^([A-Z_]+): (.*)$/s.exec(text.trim());
    return match ? { error: match[1], message: match[2] } : { message: text.trim() || null };
  }
}

/** A sentence for a person; 429 and 503 get advice on what to do. */
function errorText(err) {
  if (err.status === 0) return 'Network error: cannot reach the server.';
  // "per-user limit reached: you hold 1 of 1" -> "Per-user limit reached: you hold 1 of 1."
  let text = err.message.charAt(0).toUpperCase() + err.message.slice(1);
  if (!/[.!?]$/.test(text)) text += '.';
  if (err.status === 429) text += err.retryAfter ? ` Try again in ${err.retryAfter}s.` : ' Wait a moment and try again.';
  if (err.status === 503) text += ' The server is busy: please try again.';
  return text;
}

// ---------------------------------------------------------------------------------------
// 3. Logging in and out
// ---------------------------------------------------------------------------------------

// Tokens live in sessionStorage: they survive a reload but not closing the tab, and every
// tab logs in on its own (handy for bidding against yourself in two windows).
const session = {
  accessToken: sessionStorage.getItem('spike.accessToken'),
  refreshToken: sessionStorage.getItem('spike.refreshToken'),
  user: null, // {id, email, role} from GET /users/me
};

function saveTokens(pair) {
  session.accessToken = pair.access_token;
  session.refreshToken = pair.refresh_token;
  sessionStorage.setItem('spike.accessToken', pair.access_token);
  sessionStorage.setItem('spike.refreshToken', pair.refresh_token);
}

function forgetSession() {
  session.accessToken = null;
  session.refreshToken = null;
  session.user = null;
  sessionStorage.removeItem('spike.accessToken');
  sessionStorage.removeItem('spike.refreshToken');
}

function isMe(userId) {
  return Boolean(session.user && userId && userId === session.user.id);
}

// Bidders are shown by their public name (GET /users/{id}/name: the part of the email
// before the @). Each id is asked for once; until the answer arrives, and if it fails, the
// end of the id stands in.
const displayNames = new Map(); // user id -> name, or null while asked

function nameOf(userId) {
  if (!userId) return '';
  if (!displayNames.has(userId)) {
    displayNames.set(userId, null);
    api('GET', `/users/${userId}/name`)
      .then((user) => {
        displayNames.set(userId, user.display_name);
        for (const card of auctionCards.values()) card.render();
      })
      .catch(() => {}); // keep the short id
  }
  return displayNames.get(userId) || `bidder …${shortId(userId)}`;
}

// A refresh token works once: two requests refreshing at the same time would spend it
// twice, and the server then revokes the whole login. So all callers share one attempt.
let refreshing = null;

function refreshTokens() {
  if (!refreshing) {
    refreshing = (async () => {
      try {
        const pair = await api('POST', '/auth/refresh', { refresh_token: session.refreshToken }, { retryOn401: false });
        saveTokens(pair);
        return true;
      } catch {
        forgetSession();
        sessionChanged();
        return false;
      } finally {
        refreshing = null;
      }
    })();
  }
  return refreshing;
}

async function logIn(email, password) {
  const pair = await api('POST', '/auth/login', { email, password }, { retryOn401: false });
  saveTokens(pair);
  await loadMe();
}

async function loadMe() {
  session.user = await api('GET', '/users/me');
  sessionChanged();
}

async function logOut() {
  const refreshToken = session.refreshToken;
  forgetSession();
  sessionChanged();
  if (refreshToken) {
    // Revokes the refresh token on the server; the page has forgotten it either way.
    await api('POST', '/auth/logout', { refresh_token: refreshToken }).catch(() => {});
  }
}

/** Called whenever who is logged in changes: everything showing "you" re-renders. */
function sessionChanged() {
  const loggedIn = Boolean(session.user);
  document.getElementById('login-form').hidden = loggedIn;
  document.getElementById('session').hidden = !loggedIn;
  document.getElementById('whoami').textContent = loggedIn ? session.user.email : '';
  for (const card of saleCards.values()) card.render();
  for (const card of auctionCards.values()) {
    card.outbid = false; // a notice for the previous user means nothing to the next one
    card.render();
  }
  refreshOrders();
}

function setUpLoginForm() {
  const form = document.getElementById('login-form');
  const email = document.getElementById('login-email');
  const password = document.getElementById('login-password');
  const message = document.getElementById('auth-message');

  async function attempt(action, busyText) {
    if (!form.reportValidity()) return;
    say(message, busyText, 'pending');
    try {
      await action();
      say(message, '');
      password.value = '';
    } catch (err) {
      say(message, errorText(err), 'error');
    }
  }

  form.addEventListener('submit', (event) => {
    event.preventDefault();
    attempt(() => logIn(email.value, password.value), 'Logging in…');
  });
  document.getElementById('register-button').addEventListener('click', () => {
    attempt(async () => {
      await api('POST', '/auth/register', { email: email.value, password: password.value });
      await logIn(email.value, password.value);
    }, 'Creating your account…');
  });
  document.getElementById('logout-button').addEventListener('click', logOut);
}

// ---------------------------------------------------------------------------------------
// 4. Flash sales
// ---------------------------------------------------------------------------------------

const saleCards = new Map(); // sale id -> SaleCard

/** Why a reservation failed, in words (`reason` of GET /reservations/{id}). */
const FAILURE_REASONS = {
  sold_out: 'sold out',
  limit_reached: 'you already hold your limit for this sale',
  broker_unavailable: 'the order queue was unavailable; nothing was charged',
  not_processed: 'the order could not be written; nothing was charged',
};

class SaleCard {
  constructor(sale) {
    this.id = sale.id;
    this.sale = sale;
    this.buying = false;
    this.element = fromTemplate('sale-template');
    this.element.dataset.saleId = sale.id;
    this.buyButton = part(this.element, 'buy-button');
    this.statusLine = part(this.element, 'reservation-status');
    this.buyButton.addEventListener('click', () => this.buy());
  }

  /** New data from GET /sales: `remaining` and `status` change, the rest does not. */
  update(sale) {
    this.sale = sale;
    this.render();
  }

  render() {
    const { sale, element } = this;
    part(element, 'sale-title').textContent = sale.title;
    part(element, 'sale-price').textContent = sale.price;
    part(element, 'sale-remaining').textContent = sale.remaining;
    part(element, 'sale-stock').textContent = sale.stock;
    const meter = element.querySelector('meter');
    meter.max = sale.stock;
    meter.value = sale.remaining;

    const badge = part(element, 'sale-status');
    badge.textContent = sale.status.replace('_', ' ');
    badge.dataset.status = sale.status;

    const label = element.querySelector('.countdown-label');
    const countdown = part(element, 'sale-countdown');
    if (sale.status === 'scheduled') {
      label.textContent = 'Starts in';
      setCountdown(countdown, sale.start_at, 'now');
    } else {
      label.textContent = 'Ends in';
      setCountdown(countdown, sale.end_at, 'ended');
    }

    const button = this.buyButton;
    if (!session.user) {
      button.textContent = 'Log in to buy';
    } else if (sale.status === 'sold_out') {
      button.textContent = 'Sold out';
    } else if (sale.status === 'scheduled') {
      button.textContent = 'Not started';
    } else {
      button.textContent = this.buying ? 'Buying…' : 'Buy 1';
    }
    button.disabled = !session.user || sale.status !== 'active' || this.buying;
  }

  /**
   * POST /sales/{id}/purchase answers 202 at once: the unit is reserved in Redis and the
   * order is written in the background. We poll the reservation until it is decided.
   */
  async buy() {
    this.buying = true;
    this.render();
    this.setStatus('queued', 'Reserving…', 'pending');
    try {
      const queued = await api('POST', `/sales/${this.id}/purchase`, { quantity: 1 });
      this.setStatus('queued', 'Reserved, your order is being written…', 'pending');
      const reservation = await pollReservation(queued.reservation_id);
      if (reservation.status === 'confirmed') {
        this.setStatus('confirmed', `Confirmed: order ${shortId(reservation.order_id)}. Pay for it in My orders.`, 'ok');
        refreshOrders();
      } else {
        const reason = FAILURE_REASONS[reservation.reason] || reservation.reason || 'unknown reason';
        this.setStatus('failed', `Failed: ${reason}.`, 'error');
      }
    } catch (err) {
      // 409 SOLD_OUT / LIMIT_REACHED / NOT_ACTIVE, 429, 503...: the server's message says it.
      this.setStatus('error', errorText(err), 'error');
    } finally {
      this.buying = false;
      this.render();
      refreshSales();
    }
  }

  /** `state` goes into data-status (for tests); `text` is for people. */
  setStatus(state, text, kind) {
    this.statusLine.dataset.status = state;
    say(this.statusLine, text, kind);
  }
}

/** Polls GET /reservations/{id} every 500 ms until it is `confirmed` or `failed`. */
async function pollReservation(reservationId) {
  const giveUpAt = Date.now() + RESERVATION_GIVE_UP_MS;
  while (Date.now() < giveUpAt) {
    await sleep(RESERVATION_POLL_MS);
    try {
      const reservation = await api('GET', `/reservations/${reservationId}`);
      if (reservation.status !== 'queued') return reservation;
    } catch (err) {
      // A blip (network, 503) is worth another try; a 4xx will not get better.
      if (err.status >= 400 && err.status < 500) throw err;
    }
  }
  throw new Error('still queued after a minute: check My orders later');
}

async function refreshSales() {
  const container = document.getElementById('sales');
  let page;
  try {
    page = await api('GET', '/sales?page_size=20');
  } catch (err) {
    showListError(container, `Cannot load the sales: ${errorText(err)}`);
    return;
  }
  const shown = page.items.filter((sale) => SHOWN_SALE_STATUSES.includes(sale.status));
  const cards = shown.map((sale) => {
    let card = saleCards.get(sale.id);
    if (!card) {
      card = new SaleCard(sale);
      saleCards.set(sale.id, card);
    }
    card.update(sale);
    return card;
  });
  // A sale that ended (or fell off the first page) leaves, unless a purchase is running.
  for (const [id, card] of saleCards) {
    if (!shown.some((sale) => sale.id === id) && !card.buying) {
      saleCards.delete(id);
      card.element.remove();
    }
  }
  showInOrder(container, cards.map((card) => card.element), 'No flash sales right now.');
}

// ---------------------------------------------------------------------------------------
// 5. Live auctions
// ---------------------------------------------------------------------------------------

const auctionCards = new Map(); // auction id -> AuctionCard

/**
 * One auction on screen with its own WebSocket. Live data comes only from the socket
 * (and from our own accepted bids); the list refresh only discovers new auctions.
 */
class AuctionCard {
  constructor(auction) {
    this.id = auction.id;
    this.title = auction.title;
    this.description = auction.description;
    this.startAt = auction.start_at;
    this.startCents = toCents(auction.start_price);
    this.incrementCents = toCents(auction.min_increment);
    // The live part: replaced by the socket's "state", moved on by "bid", ended by "closed".
    this.status = auction.status;     // scheduled | live | sold | unsold
    this.priceCents = auction.current_price === null ? null : toCents(auction.current_price);
    this.leaderId = auction.leader_id;
    this.seq = auction.bid_count;     // the number of accepted bids so far
    this.endAt = auction.end_at;
    this.winnerId = auction.winner_id;
    // Buy-now: its price while on offer (until a bid meets the reserve), else null.
    this.reserveCents = auction.reserve_price === null ? null : toCents(auction.reserve_price);
    this.buyNowCents = auction.buy_now_price == null ? null : toCents(auction.buy_now_price);
    this.outbid = false;
    this.bidding = false;
    // The socket and its reconnect backoff.
    this.socket = null;
    this.retryMs = 1000;
    this.reconnectTimer = null;

    this.element = fromTemplate('auction-template');
    this.element.dataset.auctionId = auction.id;
    this.bidButton = part(this.element, 'bid-button');
    this.customButton = part(this.element, 'bid-custom-button');
    this.maxButton = part(this.element, 'bid-max-button');
    this.amountInput = part(this.element, 'bid-amount');
    this.messageLine = part(this.element, 'auction-message');
    this.buyNowButton = part(this.element, 'buy-now-button');
    this.buyNowButton.addEventListener('click', () => this.buyNow());
    this.bidButton.addEventListener('click', () => this.bid(this.minNextBidCents()));
    this.customButton.addEventListener('click', () => this.bidCustom());
    this.maxButton.addEventListener('click', () => this.bidCustom(true));
    this.amountInput.addEventListener('keydown', (event) => {
      if (event.key === 'Enter') this.bidCustom();
    });
    this.render();
  }

  get closed() {
    return this.status === 'sold' || this.status === 'unsold';
  }

  /** The start price for the first bid, then the current price plus the increment. */
  minNextBidCents() {
    return this.priceCents === null ? this.startCents : this.priceCents + this.incrementCents;
  }

  // --- the WebSocket ---------------------------------------------------------------

  connect() {
    const scheme = location.protocol === 'https:' ? 'wss' : 'ws';
    const socket = new WebSocket(`${scheme}://${location.host}/api/v1/auctions/${this.id}/live`);
    this.socket = socket;
    this.setConnection('connecting', 'connecting…');

    socket.addEventListener('message', (event) => {
      const message = JSON.parse(event.data);
      if (message.type === 'state') this.onState(message);
      else if (message.type === 'bid') this.onBid(message);
      else if (message.type === 'closed') this.onClosed(message);
      else if (message.type === 'second_chance') this.onSecondChance(message);
    });

    socket.addEventListener('close', () => {
      if (this.socket !== socket) return; // an old socket we replaced or closed ourselves
      this.socket = null;
      if (this.closed) return;
      // Dropped while the auction runs: try again, waiting twice as long each time.
      const delay = this.retryMs + Math.floor(Math.random() * 250);
      this.retryMs = Math.min(this.retryMs * 2, WS_MAX_BACKOFF_MS);
      this.setConnection('reconnecting', `connection lost, reconnecting in ${Math.ceil(delay / 1000)}s…`);
      this.reconnectTimer = setTimeout(() => this.connect(), delay);
    });
  }

  disconnect() {
    clearTimeout(this.reconnectTimer);
    const socket = this.socket;
    this.socket = null;
    if (socket) socket.close();
  }

  setConnection(state, text) {
    const line = part(this.element, 'ws-status');
    line.dataset.state = state;
    line.textContent = text;
  }

  /** First message on every (re)connect: the whole current state. */
  onState(message) {
    learnServerTime(message);
    this.retryMs = 1000; // connected: the next drop starts the backoff afresh
    this.setConnection('open', '● live');
    if (message.seq >= this.seq) {
      this.moveTo(message.current_price, message.leader_id, message.seq, message.end_at);
    }
    this.status = message.status;
    this.winnerId = message.winner_id;
    this.buyNowCents = message.buy_now_price == null ? null : toCents(message.buy_now_price);
    if (this.closed) {
      this.disconnect();
      this.setConnection('closed', 'auction over');
    }
    this.render();
  }

  /** An accepted bid. A slow client may skip some: only newer ones (higher seq) count. */
  onBid(message) {
    if (message.seq <= this.seq) return;
    this.moveTo(message.price, message.leader_id, message.seq, message.end_at);
    this.render();
  }

  /** The winner did not pay: the lot went to the next bidder at their highest bid. */
  onSecondChance(message) {
    this.winnerId = message.winner_id;
    this.priceCents = toCents(message.price);
    this.render();
    if (isMe(this.winnerId)) {
      this.note(`The winner did not pay: the lot is offered to you at ${message.price}.`, 'ok');
      refreshOrders();
    }
  }

  onClosed(message) {
    this.status = message.status;
    this.winnerId = message.winner_id;
    if (message.price !== null) this.priceCents = toCents(message.price);
    this.disconnect();
    this.setConnection('closed', 'auction over');
    this.note('');
    this.render();
    if (isMe(this.winnerId)) {
      // The winner's order is written right after the close.
      setTimeout(refreshOrders, 1000);
    }
  }

  /** Applies a newer price and leader, noticing when we just lost the lead. */
  moveTo(price, leaderId, seq, endAt) {
    const wasLeading = isMe(this.leaderId);
    this.priceCents = price === null ? null : toCents(price);
    this.leaderId = leaderId;
    this.seq = seq;
    this.endAt = endAt; // anti-sniping may have moved the end out
    // Buy-now goes with the first bid that meets the reserve (the first bid without one).
    if (this.priceCents !== null && (this.reserveCents === null || this.priceCents >= this.reserveCents)) {
      this.buyNowCents = null;
    }
    if (isMe(leaderId)) {
      this.outbid = false;
    } else if (wasLeading && leaderId) {
      // The card shows one current message: "outbid" replaces "your bid was accepted".
      this.outbid = true;
      say(this.messageLine, '');
    }
  }

  /** The card's one current message; it replaces the outbid notice too. */
  note(text, kind = '') {
    this.outbid = false;
    say(this.messageLine, text, kind);
  }

  // --- bidding ---------------------------------------------------------------------

  /** The amount box: a bid at exactly that amount, or (`upTo`) a maximum. */
  bidCustom(upTo = false) {
    const cents = toCents(this.amountInput.value);
    if (cents === null || cents === 0) {
      this.note('Enter an amount such as 25.00 (at most 2 decimals).', 'error');
      return;
    }
    this.bid(cents, upTo);
  }

  async bid(cents, upTo = false) {
    this.bidding = true;
    this.render();
    this.note(`${upTo ? 'Bidding up to' : 'Bidding'} ${formatCents(cents)}…`, 'pending');
    try {
      const body = upTo ? { max_amount: formatCents(cents) } : { amount: formatCents(cents) };
      const placed = await api('POST', `/auctions/${this.id}/bids`, body);
      // 201. The socket will tell the same (same seq), possibly a bit later.
      if (placed.seq > this.seq) this.moveTo(placed.price, placed.leader_id, placed.seq, placed.end_at);
      if (!placed.leading) {
        // Someone's maximum answered at once: the outbid notice would say less.
        this.note(`Your bid of ${formatCents(cents)} was outbid at once by a maximum: the price is now ${placed.price}.`, 'error');
      } else if (placed.max_amount) {
        this.note(`You lead at ${placed.price}; the site bids for you up to ${placed.max_amount}.`, 'ok');
      } else {
        this.note(`Your bid of ${placed.price} was accepted.`, 'ok');
      }
      this.amountInput.value = '';
    } catch (err) {
      if (err.code === 'BID_TOO_LOW') {
        // details: {current_price, min_bid}. Offer the minimum in the amount box.
        const minimum = err.details && err.details.min_bid;
        this.note(minimum ? `Too low: the minimum bid is now ${minimum}.` : errorText(err), 'error');
        if (minimum) this.amountInput.value = minimum;
      } else if (err.code === 'AUCTION_CLOSED') {
        this.note('This auction is not accepting bids.', 'error');
      } else if (err.code === 'MAX_AMOUNT_LOWERED') {
        const maximum = err.details && err.details.max_amount;
        this.note(`Your maximum is ${maximum}: you can raise it, not lower it.`, 'error');
      } else {
        this.note(errorText(err), 'error');
      }
    } finally {
      this.bidding = false;
      this.render();
    }
  }

  async buyNow() {
    this.bidding = true;
    this.render();
    this.note(`Buying for ${formatCents(this.buyNowCents)}…`, 'pending');
    try {
      const order = await api('POST', `/auctions/${this.id}/buy-now`, {});
      // The socket's "closed" names us as the winner; the order is ours already.
      this.note(`Bought for ${order.total}: pay in My orders.`, 'ok');
      refreshOrders();
    } catch (err) {
      if (err.code === 'BUY_NOW_UNAVAILABLE') {
        this.buyNowCents = null;
        this.note('Buy now is no longer available.', 'error');
      } else {
        this.note(errorText(err), 'error');
      }
    } finally {
      this.bidding = false;
      this.render();
    }
  }

  // --- drawing ---------------------------------------------------------------------

  /** Before start_at the server says "scheduled"; after it, the auction is live. */
  currentStatus(now = serverNow()) {
    if (this.status === 'scheduled' && now >= Date.parse(this.startAt)) return 'live';
    return this.status;
  }

  render() {
    const { element } = this;
    const status = this.currentStatus();
    part(element, 'auction-title').textContent = this.title;
    element.querySelector('.description').textContent = this.description;
    element.dataset.status = status;

    const badge = part(element, 'auction-status');
    badge.textContent = status;
    badge.dataset.status = status;

    part(element, 'live-price').textContent = this.priceCents === null ? '—' : formatCents(this.priceCents);
    element.querySelector('.price-label').textContent = this.closed ? 'final price' : 'current bid';

    const leader = part(element, 'auction-leader');
    leader.hidden = this.closed; // the result line says who won
    leader.classList.toggle('me', isMe(this.leaderId));
    if (!this.leaderId) leader.textContent = `No bids yet: opening bid ${formatCents(this.startCents)}`;
    else if (isMe(this.leaderId)) leader.textContent = 'You lead';
    else leader.textContent = `Leader: ${nameOf(this.leaderId)}`;

    part(element, 'outbid-notice').hidden = !this.outbid || this.closed;

    this.renderCountdown(status);

    const canBid = Boolean(session.user) && status === 'live' && !this.bidding;
    this.bidButton.disabled = !canBid;
    this.customButton.disabled = !canBid;
    this.maxButton.disabled = !canBid;
    this.amountInput.disabled = !canBid;
    this.bidButton.textContent = session.user ? `Bid ${formatCents(this.minNextBidCents())}` : 'Log in to bid';
    this.buyNowButton.hidden = this.buyNowCents === null || this.closed;
    this.buyNowButton.disabled = !canBid;
    if (this.buyNowCents !== null) this.buyNowButton.textContent = `Buy now for ${formatCents(this.buyNowCents)}`;
    element.querySelector('.bidding').hidden = this.closed;

    this.renderResult();
  }

  renderCountdown(status) {
    const line = this.element.querySelector('.countdown-line');
    const label = line.querySelector('.countdown-label');
    const countdown = part(this.element, 'auction-countdown');
    line.hidden = this.closed;
    if (this.closed) {
      clearCountdown(countdown);
    } else if (status === 'scheduled') {
      label.textContent = 'Starts in';
      setCountdown(countdown, this.startAt, 'now');
    } else {
      label.textContent = 'Ends in';
      setCountdown(countdown, this.endAt, 'closing…');
    }
  }

  renderResult() {
    const result = part(this.element, 'auction-result');
    result.hidden = !this.closed;
    result.replaceChildren();
    if (!this.closed) return;
    result.dataset.status = this.status;
    if (this.status === 'unsold') {
      result.textContent = 'Closed: unsold.';
    } else if (isMe(this.winnerId)) {
      result.textContent = `You won at ${formatCents(this.priceCents)}! `;
      const link = document.createElement('a');
      link.href = '#orders-section';
      link.textContent = 'Pay in My orders';
      link.dataset.testid = 'won-orders-link';
      link.addEventListener('click', () => refreshOrders());
      result.append(link);
    } else {
      result.textContent = `Sold to ${nameOf(this.winnerId)} for ${formatCents(this.priceCents)}.`;
    }
  }

  /** Called by the ticker: a scheduled auction turns live when its start time comes. */
  tick(now) {
    if (this.status === 'scheduled' && this.element.dataset.status !== this.currentStatus(now)) this.render();
  }
}

async function refreshAuctions() {
  const container = document.getElementById('auctions');
  let page;
  try {
    page = await api('GET', '/auctions?page_size=20');
  } catch (err) {
    showListError(container, `Cannot load the auctions: ${errorText(err)}`);
    return;
  }
  // New scheduled or live auctions get a card and a socket. Cards already on screen stay
  // (a closed one keeps showing its result) and are updated by their socket only.
  for (const auction of page.items) {
    if (!auctionCards.has(auction.id) && SHOWN_AUCTION_STATUSES.includes(auction.status)) {
      const card = new AuctionCard(auction);
      auctionCards.set(auction.id, card);
      card.connect();
    }
  }
  const order = page.items.map((auction) => auctionCards.get(auction.id)).filter(Boolean);
  const listed = new Set(order);
  for (const card of auctionCards.values()) if (!listed.has(card)) order.push(card);
  showInOrder(container, order.map((card) => card.element), 'No live auctions right now.');
}

// ---------------------------------------------------------------------------------------
// 6. My orders
// ---------------------------------------------------------------------------------------

let shownOrders = null; // the JSON of the orders on screen, to redraw only on a change

async function refreshOrders() {
  const container = document.getElementById('orders');
  if (!session.user) {
    shownOrders = null;
    container.replaceChildren(emptyNote('Log in to see your orders.'));
    return;
  }
  let page;
  try {
    page = await api('GET', '/orders?page_size=20');
  } catch (err) {
    shownOrders = null; // redraw next time, which also removes the error note
    if (session.user) showListError(container, `Cannot load your orders: ${errorText(err)}`);
    return;
  }
  if (!session.user) return; // logged out while loading
  const json = JSON.stringify(page.items);
  if (json === shownOrders) return; // nothing changed: keep the table (and a half-done click)
  shownOrders = json;
  if (page.items.length === 0) {
    container.replaceChildren(emptyNote('No orders yet: buy something!'));
    return;
  }
  const table = document.createElement('table');
  table.className = 'orders';
  const head = table.createTHead().insertRow();
  for (const title of ['Order', 'What', 'Kind', 'Total', 'Status', 'Pay within', '']) {
    const th = document.createElement('th');
    th.textContent = title;
    head.append(th);
  }
  const body = table.createTBody();
  for (const order of page.items) body.append(orderRow(order));
  container.replaceChildren(table);
}

function orderRow(order) {
  const row = document.createElement('tr');
  row.dataset.testid = 'order-row';
  row.dataset.orderId = order.id;
  row.dataset.kind = order.kind;
  const cell = (text) => {
    const td = row.insertCell();
    td.textContent = text;
    return td;
  };
  cell(`…${shortId(order.id)}`).className = 'mono';
  cell(order.items.map((item) => `${item.quantity} × ${item.title}`).join(', '));
  cell(order.kind);
  cell(order.total).className = 'num';

  const status = cell(order.status.replace('_', ' '));
  status.dataset.testid = 'order-status';
  status.dataset.status = order.status;
  status.className = `status ${order.status}`;

  const pending = order.status === 'pending_payment';
  const deadline = cell('');
  const payCell = cell('');
  if (pending) {
    const countdown = document.createElement('span');
    countdown.dataset.testid = 'order-countdown';
    deadline.append(countdown);
    setCountdown(countdown, order.expires_at, 'expired');

    const pay = document.createElement('button');
    pay.type = 'button';
    pay.textContent = `Pay ${order.total}`;
    pay.dataset.testid = 'pay-button';
    pay.addEventListener('click', () => payOrder(order.id, pay));
    payCell.append(pay);
  }
  return row;
}

async function payOrder(orderId, button) {
  button.disabled = true;
  button.textContent = 'Paying…';
  try {
    await api('POST', `/orders/${orderId}/pay`);
  } catch (err) {
    // 409 ORDER_EXPIRED or ORDER_NOT_PENDING: the message says which.
    alert(`Payment failed: ${errorText(err)}`);
  }
  refreshOrders();
}

// ---------------------------------------------------------------------------------------
// Shared list drawing
// ---------------------------------------------------------------------------------------

function emptyNote(text) {
  const p = document.createElement('p');
  p.className = 'empty';
  p.textContent = text;
  return p;
}

/** Puts `elements` into `container` in this order, moving only what is out of place. */
function showInOrder(container, elements, emptyText) {
  if (elements.length === 0) {
    container.replaceChildren(emptyNote(emptyText));
    return;
  }
  for (const stray of container.querySelectorAll(':scope > .empty, :scope > .list-error')) stray.remove();
  elements.forEach((element, index) => {
    if (container.children[index] !== element) container.insertBefore(element, container.children[index] || null);
  });
}

/** A failed refresh: keep what is on screen and say why it may be stale. */
function showListError(container, text) {
  let note = container.querySelector(':scope > .list-error');
  if (!note) {
    note = document.createElement('p');
    note.className = 'list-error message error';
    container.prepend(note);
  }
  note.textContent = text;
}

// ---------------------------------------------------------------------------------------
// 7. Start-up
// ---------------------------------------------------------------------------------------

/** Runs `task` now and then `ms` after each run finishes, so slow calls never pile up. */
function every(ms, task) {
  const run = async () => {
    try {
      await task();
    } finally {
      setTimeout(run, ms);
    }
  };
  run();
}

/** Four times a second: every countdown on the page, and auctions whose start came. */
function tick() {
  const now = serverNow();
  for (const element of document.querySelectorAll('[data-deadline]')) renderCountdown(element, now);
  for (const card of auctionCards.values()) card.tick(now);
}

async function start() {
  setUpLoginForm();
  if (session.accessToken) {
    // Still logged in from before a reload, unless the tokens have expired meanwhile.
    await loadMe().catch(() => forgetSession());
  }
  sessionChanged();
  every(SALES_REFRESH_MS, refreshSales);
  every(AUCTIONS_REFRESH_MS, refreshAuctions);
  every(ORDERS_REFRESH_MS, () => (session.user ? refreshOrders() : undefined));
  setInterval(tick, 250);
}

start();
