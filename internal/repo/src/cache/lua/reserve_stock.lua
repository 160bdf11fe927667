-- reserve_stock.lua: take `qty` units of one flash sale for one buyer, atomically.
--
-- Redis runs a script to completion before it serves anyone else, so the window check,
-- the per-user limit, the stock check and the decrement below happen as one step: no
-- two buyers can both see the last unit. Stock and counts are integers; time is the Redis
-- server's own clock, so app servers with skewed clocks still agree on the window.
--
-- Every reservation enters `inflight` with a deadline (Redis time): if its message is not
-- confirmed by then (the API process died, the reply was lost), the worker's reaper undoes
-- it (reap_reservations.lua). The API sets the deadline to 0 once the broker confirmed.
--
-- KEYS[1] state    hash: start, end (ms), limit, stock, snap, gen, expire_at
-- KEYS[2] buyers   hash: user id -> units held (reserved or ordered)
-- KEYS[3] inflight hash: reservation id -> "user qty deadline_ms idem_key" ("-": no key),
--                  until the order consumer settles it
-- KEYS[4] idem     string: "reservation id fingerprint" an Idempotency-Key already produced
-- KEYS[5] undone   set: reservations undone (a key that produced one of them is free again)
-- ARGV: user, qty, reservation id, has_idem (0/1), idem ttl (ms), deadline (ms from now),
--       fingerprint of the request body, idem key ("-" when none)
--
-- Returns {1, reservation id, units left, gen} reserved (or replayed: a different id),
--         {2, units left} sold out, {3, held, limit} per-user limit,
--         {4, 0|1} not active (0: not started, 1: ended), {5} key reused with another body,
--         {0} hot state missing.

local state, buyers, inflight, idem, undone = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local user, qty, rid, fingerprint = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[7]

local s = redis.call('HMGET', state, 'start', 'end', 'limit', 'stock', 'gen')
if not s[1] then
  return {0}                                 -- flushed or never loaded: the caller rebuilds
end

if ARGV[4] == '1' then
  local earlier = redis.call('GET', idem)
  if earlier then
    local id, print = string.match(earlier, '^(%S+) ?(%S*)$')
    if redis.call('SISMEMBER', undone, id) == 0 then
      if print ~= '' and print ~= fingerprint then
        return {5}
      end
      return {1, id, tonumber(s[4]), s[5]}     -- same key, same answer, nothing taken
    end
  end
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
if now < tonumber(s[1]) then return {4, 0} end
if now >= tonumber(s[2]) then return {4, 1} end

local stock = tonumber(s[4])
if stock < qty then
  return {2, stock}
end

local limit = tonumber(s[3])
local held = tonumber(redis.call('HGET', buyers, user) or '0')
if held + qty > limit then
  return {3, held, limit}
end

redis.call('HINCRBY', state, 'stock', -qty)
redis.call('HINCRBY', buyers, user, qty)
redis.call('HSET', inflight, rid, user .. ' ' .. qty .. ' ' .. (now + tonumber(ARGV[6])) .. ' ' .. ARGV[8])
if ARGV[4] == '1' then
  redis.call('SET', idem, rid .. ' ' .. fingerprint, 'PX', ARGV[5])
end
return {1, rid, stock - qty, s[5]}
