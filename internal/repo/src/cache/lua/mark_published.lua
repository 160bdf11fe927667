-- mark_published.lua: the broker confirmed these reservations' message; the reaper must
-- leave them alone from now on (a confirmed message may wait in RabbitMQ for a long time,
-- e.g. while Postgres is down), so their deadline becomes 0.
--
-- KEYS[1] inflight, KEYS[2] undone
-- ARGV: reservation ids
-- Returns one flag per id: 1 it stands (marked, or already claimed or settled by the
-- consumer), 0 it was undone first (its deadline passed and the reaper took it).

local inflight, undone = KEYS[1], KEYS[2]
local flags = {}
for i, rid in ipairs(ARGV) do
  if redis.call('SISMEMBER', undone, rid) == 1 then
    flags[i] = 0
  else
    local held = redis.call('HGET', inflight, rid)
    local user, qty, key = string.match(held or '', '^(%S+) (%S+) %S+ (%S+)$')
    if user then
      redis.call('HSET', inflight, rid, user .. ' ' .. qty .. ' 0 ' .. key)
    end
    flags[i] = 1
  end
end
return flags
