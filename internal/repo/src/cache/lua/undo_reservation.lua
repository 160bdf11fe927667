-- undo_reservation.lua: take back a reservation whose message the broker did not confirm.
--
-- "No reservation without a message": when the publish fails, the unit and the buyer's
-- slot go back. But a publish can fail on our side (timeout, dropped connection) after the
-- broker stored it, and the order consumer may already hold the message. The consumer
-- claims reservations here before it writes anything, so exactly one side wins: if the
-- consumer claimed it, the reservation stands (the caller answers 202); otherwise it is
-- undone and marked, so a late message is dropped by the consumer.
--
-- KEYS[1] state, KEYS[2] buyers, KEYS[3] inflight, KEYS[4] claimed, KEYS[5] undone, KEYS[6] idem
-- ARGV: reservation id, has_idem (0/1)
-- Returns 1 undone, 0 already claimed by the consumer.

local state, buyers, inflight, claimed, undone, idem = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6]
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

local held = redis.call('HGET', inflight, rid)
if held then
  redis.call('HDEL', inflight, rid)
  -- Only touch the counters of a loaded state; a partial hash would look "loaded".
  if redis.call('EXISTS', state) == 1 then
    local user, qty = string.match(held, '(%S+) (%d+)')
    redis.call('HINCRBY', state, 'stock', tonumber(qty))
    redis.call('HINCRBY', buyers, user, -tonumber(qty))
  end
end
if ARGV[2] == '1' then
  redis.call('DEL', idem)
end
return 1
