-- fail_reservations.lua: the order consumer refused reservations (or gave up on them).
--
-- The buyer's slot is freed and exactly the units the reservation took go back, whatever
-- the reason. Even a reservation refused because Postgres had no stock left: Redis drifts
-- ahead of Postgres only when a reservation from before a rebuild is settled after it, and
-- settle_reservations.lua takes those units off the rebuilt stock in full (down to below
-- zero if need be), so what comes back here is what was really taken. With `forget` set the
-- id is also marked undone, so a dead-lettered message that is re-driven later cannot turn
-- a released reservation into an order.
--
-- KEYS[1] state, KEYS[2] buyers, KEYS[3] inflight, KEYS[4] undone
-- ARGV: forget (0/1), channel ('' on a Redis Cluster: the caller publishes), sale id,
--       then reservation ids
-- Returns the number of units put back (a restock notice is published when > 0).

local state, buyers, inflight, undone = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local forget, channel, sale = ARGV[1] == '1', ARGV[2], ARGV[3]
local loaded = redis.call('EXISTS', state) == 1
local returned = 0

for i = 4, #ARGV do
  local rid = ARGV[i]
  if forget then
    redis.call('SADD', undone, rid)
    redis.call('PEXPIRE', undone, 86400000)
  end
  local held = redis.call('HGET', inflight, rid)
  if held then
    redis.call('HDEL', inflight, rid)
    if loaded then
      local user, qty = string.match(held, '(%S+) (%d+)')
      redis.call('HINCRBY', buyers, user, -tonumber(qty))
      redis.call('HINCRBY', state, 'stock', tonumber(qty))
      returned = returned + tonumber(qty)
    end
  end
end
if returned > 0 and channel ~= '' then
  redis.call('PUBLISH', channel, sale)
end
return returned
