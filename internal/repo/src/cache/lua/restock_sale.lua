-- restock_sale.lua: units of closed or cancelled sale orders go back on sale.
--
-- Driven by the `sale.restock` message that the close transaction wrote into the outbox,
-- so it happens only after the close committed. Each order is returned at most once
-- (the `returned` set), and not at all when the hot state was rebuilt from a snapshot that
-- already includes the return (version <= snap) or is not loaded (the next rebuild will
-- read Postgres, which has it).
--
-- KEYS[1] state, KEYS[2] buyers, KEYS[3] returned
-- ARGV: close version, channel ('' on a Redis Cluster: the caller publishes), sale id,
--       then triples (order id, user, qty)
-- Returns the number of units put back; a restock notice is published when > 0.

local state, buyers, returned = KEYS[1], KEYS[2], KEYS[3]
local version, channel, sale = tonumber(ARGV[1]), ARGV[2], ARGV[3]
local s = redis.call('HMGET', state, 'snap', 'expire_at')
if not s[1] or version <= tonumber(s[1]) then
  return 0
end

local units = 0
for i = 4, #ARGV, 3 do
  local order, user, qty = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2])
  if redis.call('SADD', returned, order) == 1 then
    redis.call('HINCRBY', state, 'stock', qty)
    local held = tonumber(redis.call('HGET', buyers, user) or '0')
    redis.call('HSET', buyers, user, math.max(0, held - qty))
    units = units + qty
  end
end
redis.call('PEXPIREAT', returned, s[2])
if units > 0 and channel ~= '' then
  redis.call('PUBLISH', channel, sale)
end
return units
