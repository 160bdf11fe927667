-- place_bid.lua: accept a bid or a maximum (proxy bid) if it is high enough, atomically,
-- together with the leader's automatic answer.
--
-- Two bidders racing for the same step both run this script, one after the other, so the
-- second sees the first's price: the price only rises and two bids never win one step.
-- The automatic raise of a proxy bidder is decided in the same call as the bid it answers,
-- so no bid can fall between the two. Money is integer cents (Lua numbers are doubles);
-- time is the Redis server's clock.
--
-- The proxy rule. Only the leader can have a maximum left above the price (every other
-- bidder's maximum was met or passed when it lost the lead), so the state keeps that one:
-- `max` (the leader's plain bid counts as its maximum). A new bid must reach the minimum
-- (the start price first, then price + min_inc). Then, with M the leader's maximum:
--   * no leader yet: a plain bid is recorded at its amount, a maximum at the start price;
--   * above M: the bidder leads; a plain bid at its amount, a maximum at
--     min(maximum, M + min_inc): the least that beats M;
--   * at or below M (a plain bid or a maximum): the bid is recorded at that amount (seq n)
--     and the leader answers at once with an automatic bid at min(M, amount + min_inc)
--     (seq n + 1). On equal amounts (a tie) the earlier maximum keeps the lead and both
--     bids carry the same amount: the only place where the price does not rise with seq.
--   * the leader itself: a maximum at or above its own raises it (no bid, no price
--     change, the end does not move); a lower one is refused; a plain bid is a bid at that
--     amount, keeping the higher of its maximum and the amount.
-- The reserve (R, 0 = none): a maximum that meets it bids at least R for its owner, as a
-- bidder would by hand: leading with a maximum of 900 at a price of 10 under a reserve of
-- 50 would lose the lot (unsold) and leave buy-now on offer. So where the rule above would
-- set a maximum's bid below R, it is set at R; and a leader raising its maximum to R or
-- more while the price is below R bids R (a bid, the only raise that moves the price).
-- The bids of one call happen at the same moment: anti-sniping moves the end once.
--
-- An accepted bid is not answered yet: the caller writes its bids to Postgres first, in
-- `seq` order, and only then tells the bidder and the watchers. If that write fails, the
-- caller drops this whole state (undo_bid.lua) and it is rebuilt from Postgres, under a
-- new `gen`.
--
-- KEYS[1] state  hash: start, end (ms), price (cents, 0 = no bid yet), leader, max (the
--                leader's maximum, cents), seq, start_price, min_inc (cents), window, by
--                (ms), closed (0/1), gen, reserve (cents, 0 = none)
-- KEYS[2] idem   string: the accepted answer an Idempotency-Key already produced (JSON)
-- ARGV: user, amount (cents), kind ('bid' or 'max'), has_idem (0/1), idem ttl (ms)
--
-- Returns {1, gen, at, end, price, leader, seq, next, your_max, n, then n times
--         seq, user, amount, max, auto (0/1)} accepted or replayed (next = the next
--         acceptable bid, your_max = the caller's maximum to show it, 0 for none; n = 0 for
--         a raise of the leader's own maximum), {2, price, minimum} too low,
--         {3, price, end} closed (before start, at or after end, or closed),
--         {4, maximum} a leader's maximum lowered, {0} missing.

local state, idem = KEYS[1], KEYS[2]
local user, amount, kind = ARGV[1], tonumber(ARGV[2]), ARGV[3]

local s = redis.call('HMGET', state, 'start', 'end', 'price', 'seq', 'start_price', 'min_inc', 'window', 'by',
  'closed', 'gen', 'leader', 'max', 'reserve')
if not s[1] then
  return {0}
end

if ARGV[4] == '1' then
  local earlier = redis.call('GET', idem)
  if earlier then
    return cjson.decode(earlier)
  end
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local price, seq, ends, inc = tonumber(s[3]), tonumber(s[4]), tonumber(s[2]), tonumber(s[6])
if s[9] == '1' or now < tonumber(s[1]) or now >= ends then
  return {3, price, ends}
end
local leader = s[11] or ''
if seq == 0 then leader = '' end
local top = math.max(tonumber(s[12] or '0') or 0, price)
local reserve = tonumber(s[13] or '0') or 0

-- A maximum's bid, raised to the reserve when the maximum meets it.
local function at_least_reserve(at, maximum)
  if reserve > 0 and maximum >= reserve and at < reserve then return reserve end
  return at
end

local bids = {}
local function add(who, at, max, auto)
  seq = seq + 1
  bids[#bids + 1] = {seq, who, at, max, auto}
  price, leader, top = at, who, max
end

if kind == 'max' and user == leader then
  if amount < top then
    return {4, top}
  end
  top = amount
  if at_least_reserve(price, amount) > price then
    add(user, reserve, amount, 0)
  end
else
  -- The first bid must reach the start price; every later one must beat the current
  -- price by the minimum increment (so an equal bid is too low).
  local minimum = price + inc
  if seq == 0 then minimum = tonumber(s[5]) end
  if amount < minimum then
    return {2, price, minimum}
  end
  if user == leader then
    add(user, amount, math.max(top, amount), 0)
  elseif leader == '' or amount > top then
    local at = amount
    if kind == 'max' then at = at_least_reserve(math.min(amount, leader == '' and minimum or top + inc), amount) end
    add(user, at, amount, 0)
  else
    local defender, maximum = leader, top
    add(user, amount, amount, 0)
    add(defender, math.min(maximum, amount + inc), maximum, 1)
  end
end
-- Anti-sniping: a bid inside the last `window` ms pushes the end out by `by` ms.
local window = tonumber(s[7])
if #bids > 0 and window > 0 and ends - now <= window then
  ends = ends + tonumber(s[8])
end

local fmt = string.format
redis.call('HSET', state, 'price', fmt('%d', price), 'leader', leader, 'max', fmt('%d', top), 'seq', seq,
  'end', fmt('%d', ends))

local yours = 0
if leader == user and (kind == 'max' or top > price) then
  yours = top
elseif kind == 'max' then
  yours = amount
end
local reply = {1, s[10] or '', now, ends, price, leader, seq, price + inc, yours, #bids}
for _, bid in ipairs(bids) do
  for _, field in ipairs(bid) do
    reply[#reply + 1] = field
  end
end
if ARGV[4] == '1' then
  local stored = {}
  for i, v in ipairs(reply) do
    if type(v) == 'number' then stored[i] = fmt('%d', v) else stored[i] = v end
  end
  redis.call('SET', idem, cjson.encode(stored), 'PX', ARGV[5])
end
return reply
