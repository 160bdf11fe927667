-- claim_reservations.lua: the order consumer takes ownership of reservations before it
-- writes their orders (see undo_reservation.lua for the other side of this handshake).
--
-- A claim stays until the sale's keys expire, also after the order is settled or refused:
-- a lost confirm is noticed only after the timeout, long after the consumer has finished,
-- and the undo must still find the claim then.
--
-- KEYS[1] state, KEYS[2] claimed, KEYS[3] undone
-- ARGV: reservation ids
-- Returns one flag per id: 1 claimed (go ahead), 0 undone by the API (drop it).

local state, claimed, undone = KEYS[1], KEYS[2], KEYS[3]
local expire_at = redis.call('HGET', state, 'expire_at')
local flags = {}
for i, rid in ipairs(ARGV) do
  if redis.call('SISMEMBER', undone, rid) == 1 then
    flags[i] = 0
  else
    redis.call('SADD', claimed, rid)
    flags[i] = 1
  end
end
if expire_at then
  redis.call('PEXPIREAT', claimed, expire_at)
else
  redis.call('PEXPIRE', claimed, 86400000)
end
return flags
