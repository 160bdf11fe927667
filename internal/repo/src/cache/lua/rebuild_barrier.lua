-- rebuild_barrier.lua: may a sale whose hot state is missing be loaded from Postgres now?
--
-- Reservations accepted before Redis lost the sale may still be on their way through
-- RabbitMQ; Postgres does not count them yet. So the first instance that finds the state
-- missing sends a barrier message behind them (through the same queue), and the sale is
-- loaded only once the order consumer saw that barrier with nothing of the sale left in
-- front of it (it then sets `drained` to the barrier's id). Until then every instance
-- answers 503. A barrier that does not pass within the timeout is replaced by a new one.
--
-- KEYS[1] state, KEYS[2] rebuilding (the current barrier's id), KEYS[3] drained (the id
-- of the barrier that passed), KEYS[4] lost (set while the sale waits for any barrier)
-- ARGV: new barrier id, timeout (ms)
-- Returns {0} the state is loaded (nothing to wait for), {1} drained: load now,
--         {2} wait: a barrier is on its way, {3, replaced} publish the new barrier
--         (replaced 1: an earlier barrier timed out).

local state, rebuilding, drained, lost = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
if redis.call('EXISTS', state) == 1 then
  return {0}
end
local current = redis.call('GET', rebuilding)
if current then
  if redis.call('GET', drained) == current then
    return {1}
  end
  return {2}
end
redis.call('SET', rebuilding, ARGV[1], 'PX', ARGV[2])
local replaced = redis.call('EXISTS', lost)
redis.call('SET', lost, '1', 'PX', 86400000)
return {3, replaced}
