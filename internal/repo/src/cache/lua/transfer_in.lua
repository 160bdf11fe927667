-- transfer_in.lua: step 3 of a transfer: the destination bucket takes the units, once per
-- transfer id (the `received` set; a rebuilt bucket loads it from Postgres, whose row
-- already counts the transfers it names).
--
-- KEYS[1] state (the destination's), KEYS[2] received set of transfer ids
-- ARGV: transfer id, units
-- Returns 1 taken now, 0 taken before, -1 the hot state is missing (its rebuild reads
-- Postgres, which has the units).

local state, received = KEYS[1], KEYS[2]
local expire_at = redis.call('HGET', state, 'expire_at')
if not expire_at then
  return -1
end
if redis.call('SADD', received, ARGV[1]) == 0 then
  return 0
end
redis.call('PEXPIREAT', received, expire_at)
redis.call('HINCRBY', state, 'stock', tonumber(ARGV[2]))
return 1
