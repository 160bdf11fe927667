-- settle_reservations.lua: reservations whose orders were committed in Postgres stop
-- being "in flight".
--
-- A reservation made since the hot state was (re)built is in `inflight`: removing it is
-- all there is to do, its unit and slot were counted when it was reserved. A reservation
-- from before a rebuild (a FLUSHALL while its message was queued) is not: if its commit
-- came after the snapshot the rebuild read (version > snap), the rebuilt counters do not
-- include it yet, so it is counted now — once, guarded by the `settled` set — and in full:
-- the stock may go below zero when the rebuilt Redis sold those units again, and the
-- refusals of the reservations it over-sold (fail_reservations.lua) bring it back.
--
-- KEYS[1] state, KEYS[2] buyers, KEYS[3] inflight, KEYS[4] settled
-- ARGV: commit version, then groups of (reservation id, user, qty, gen)

local state, buyers, inflight, settled = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local version = tonumber(ARGV[1])
local s = redis.call('HMGET', state, 'gen', 'snap', 'stock', 'expire_at')
local loaded = s[1] ~= false

for i = 2, #ARGV, 4 do
  local rid, user, qty, gen = ARGV[i], ARGV[i + 1], tonumber(ARGV[i + 2]), ARGV[i + 3]
  local was_inflight = redis.call('HDEL', inflight, rid) == 1
  if not was_inflight and loaded and gen ~= s[1] and version > tonumber(s[2]) then
    if redis.call('SADD', settled, rid) == 1 then
      redis.call('PEXPIREAT', settled, s[4])
      redis.call('HINCRBY', state, 'stock', -qty)
      redis.call('HINCRBY', buyers, user, qty)
    end
  end
end
return 1
