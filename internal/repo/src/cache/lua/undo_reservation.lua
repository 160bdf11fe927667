-- undo_reservation.lua: decide, against the order consumer, that a reservation is undone.
--
-- "No reservation without an outcome": a reservation whose message was not confirmed (or
-- whose deadline passed, see reap_reservations.lua) is undone. But the broker may have
-- stored the message anyway, and the order consumer may already hold it. The consumer
-- claims reservations (claim_reservations.lua) before it writes anything, so exactly one
-- side wins here: if the consumer claimed it, the reservation stands; otherwise it is
-- marked undone, and a late claim is refused. The caller then records the failure in
-- Postgres under the sale's row lock (which decides for good, also after a flush) and
-- releases the units with fail_reservations.lua.
--
-- KEYS[1] state, KEYS[2] claimed, KEYS[3] undone
-- ARGV: reservation id
-- Returns 1 undone, 0 already claimed by the consumer.

local state, claimed, undone = KEYS[1], KEYS[2], KEYS[3]
local rid = ARGV[1]

if redis.call('SISMEMBER', claimed, rid) == 1 then
  return 0
end
redis.call('SADD', undone, rid)
local expire_at = redis.call('HGET', state, 'expire_at')
if expire_at then
  redis.call('PEXPIREAT', undone, expire_at)
else
  redis.call('PEXPIRE', undone, 86400000)
end
return 1
