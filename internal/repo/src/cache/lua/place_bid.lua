-- place_bid.lua: accept a bid if it is high enough, atomically.
--
-- Two bidders racing for the same step both run this script, one after the other, so the
-- second sees the first's price: the price only rises and two bids never win one step.
-- Money is integer cents (Lua numbers are doubles); time is the Redis server's clock.
--
-- An accepted bid is not answered yet: the caller writes it to Postgres first, in `seq`
-- order, and only then tells the bidder and the watchers. If that write fails, the caller
-- drops this whole state (undo_bid.lua) and it is rebuilt from Postgres, under a new `gen`.
--
-- KEYS[1] state  hash: start, end (ms), price (cents, 0 = no bid yet), leader, seq,
--                start_price, min_inc (cents), window, by (ms), closed (0/1), gen
-- KEYS[2] idem   string: "seq end price at gen" an Idempotency-Key already produced
-- ARGV: user, amount (cents), has_idem (0/1), idem ttl (ms)
--
-- Returns {1, seq, end, price, at, gen, next} accepted (or replayed; next = the next
--         acceptable bid), {2, price, minimum} too
--         low, {3, price, end} closed (before start, at or after end, or closed), {0} missing.

local state, idem = KEYS[1], KEYS[2]
local user, amount = ARGV[1], tonumber(ARGV[2])

local s = redis.call('HMGET', state, 'start', 'end', 'price', 'seq', 'start_price', 'min_inc', 'window', 'by', 'closed', 'gen')
if not s[1] then
  return {0}
end

if ARGV[3] == '1' then
  local earlier = redis.call('GET', idem)
  if earlier then
    local seq, ends, price, at, gen = string.match(earlier, '(%d+) (%d+) (%d+) (%d+) (%S*)')
    return {1, tonumber(seq), tonumber(ends), tonumber(price), tonumber(at), gen, tonumber(price) + tonumber(s[6])}
  end
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local price, seq, ends = tonumber(s[3]), tonumber(s[4]), tonumber(s[2])
if s[9] == '1' or now < tonumber(s[1]) or now >= ends then
  return {3, price, ends}
end

-- The first bid must reach the start price; every later one must beat the current price
-- by the minimum increment (so an equal bid is too low).
local minimum = price + tonumber(s[6])
if seq == 0 then minimum = tonumber(s[5]) end
if amount < minimum then
  return {2, price, minimum}
end

-- Anti-sniping: a bid inside the last `window` ms pushes the end out by `by` ms.
local window = tonumber(s[7])
if window > 0 and ends - now <= window then
  ends = ends + tonumber(s[8])
end
seq = seq + 1

local fmt = string.format
local gen = s[10] or ''
redis.call('HSET', state, 'price', ARGV[2], 'leader', user, 'seq', seq, 'end', fmt('%d', ends))
if ARGV[3] == '1' then
  redis.call('SET', idem, fmt('%d %d %s %d %s', seq, ends, ARGV[2], now, gen), 'PX', ARGV[4])
end
return {1, seq, ends, amount, now, gen, amount + tonumber(s[6])}
