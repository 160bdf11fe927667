-- place_bid.lua: accept a bid if it is high enough, atomically.
--
-- Two bidders racing for the same step both run this script, one after the other, so the
-- second sees the first's price: the price only rises and two bids never win one step.
-- Money is integer cents (Lua numbers are doubles); time is the Redis server's clock.
--
-- KEYS[1] state  hash: start, end (ms), price (cents, 0 = no bid yet), leader, seq,
--                start_price, min_inc (cents), window, by (ms), closed (0/1)
-- KEYS[2] bids   stream: every accepted bid, waiting for the relay to RabbitMQ
-- KEYS[3] idem   string: "seq end price" an Idempotency-Key already produced
-- ARGV: user, amount (cents), has_idem (0/1), idem ttl (ms), channel, auction id
--
-- Returns {1, seq, end, price} accepted (or replayed), {2, price, minimum} too low,
--         {3, price, end} closed (before start, at or after end, or closed), {0} missing.

local state, bids, idem = KEYS[1], KEYS[2], KEYS[3]
local user, amount = ARGV[1], tonumber(ARGV[2])

local s = redis.call('HMGET', state, 'start', 'end', 'price', 'seq', 'start_price', 'min_inc', 'window', 'by', 'closed')
if not s[1] then
  return {0}
end

if ARGV[3] == '1' then
  local earlier = redis.call('GET', idem)
  if earlier then
    local seq, ends, price = string.match(earlier, '(%d+) (%d+) (%d+)')
    return {1, tonumber(seq), tonumber(ends), tonumber(price)}
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
redis.call('HSET', state, 'price', ARGV[2], 'leader', user, 'seq', seq, 'end', fmt('%d', ends))
-- Write-behind: the stream keeps the bid until the relay has it confirmed by RabbitMQ, so
-- an accepted bid survives a broker outage.
redis.call('XADD', bids, '*', 'seq', seq, 'user', user, 'amount', ARGV[2], 'end', fmt('%d', ends), 'at', fmt('%d', now))
redis.call('PUBLISH', ARGV[5], cjson.encode({
  t = 'bid', a = ARGV[6], p = ARGV[2], l = user, s = seq, e = fmt('%d', ends),
  n = fmt('%d', amount + tonumber(s[6]))     -- the next acceptable bid
}))
if ARGV[3] == '1' then
  redis.call('SET', idem, fmt('%d %d %s', seq, ends, ARGV[2]), 'PX', ARGV[4])
end
return {1, seq, ends, amount}
