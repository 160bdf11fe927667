-- reap_reservations.lua: find the reservations nobody will finish, and undo them.
--
-- A reservation whose deadline passed while it was neither published (deadline 0, see
-- mark_published.lua) nor claimed by the order consumer was left by an API process that
-- died, or whose Redis reply was lost: it is marked undone here, in the same step that
-- checks the claim (so the consumer and the reaper cannot both win). Reservations marked
-- undone but still in flight (a reaper or an API that died half way) are returned again.
-- The caller records the failure in Postgres and releases them (fail_reservations.lua).
--
-- KEYS[1] state, KEYS[2] inflight, KEYS[3] claimed, KEYS[4] undone
-- ARGV: the most reservations to return
-- Returns a flat list: reservation id, user, qty for each one to release.

local state, inflight, claimed, undone = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local most = tonumber(ARGV[1])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)

local due = {}
local entries = redis.call('HGETALL', inflight)
for i = 1, #entries, 2 do
  if #due >= most * 3 then break end
  local rid = entries[i]
  local user, qty, deadline = string.match(entries[i + 1], '^(%S+) (%d+) (%d+)')
  if user and qty ~= '0' then
    local expired = tonumber(deadline) > 0 and tonumber(deadline) <= now
      and redis.call('SISMEMBER', claimed, rid) == 0
    if expired or redis.call('SISMEMBER', undone, rid) == 1 then
      redis.call('SADD', undone, rid)
      due[#due + 1] = rid
      due[#due + 1] = user
      due[#due + 1] = qty
    end
  end
end
if #due > 0 then
  local expire_at = redis.call('HGET', state, 'expire_at')
  if expire_at then
    redis.call('PEXPIREAT', undone, expire_at)
  else
    redis.call('PEXPIRE', undone, 86400000)
  end
end
return due
