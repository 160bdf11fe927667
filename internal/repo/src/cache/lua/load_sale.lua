-- load_sale.lua: (re)build a sale's hot state from a Postgres snapshot, atomically.
--
-- Many requests may notice a missing state at once (after FLUSHALL or a Redis restart);
-- each reads Postgres and calls this, and only the first one loads: the rest see the state
-- exists and change nothing, so nothing is counted twice. `snap` is the sale's version in
-- that snapshot and `gen` a fresh id of this build: settle and restock use them to tell
-- what the snapshot already contains. The Idempotency-Keys of the sale's recorded
-- reservations come back too, so that a retry after the loss replays its reservation.
--
-- KEYS[1] state, KEYS[2] buyers, KEYS[3] inflight, KEYS[4] claimed, KEYS[5] undone,
-- KEYS[6] settled, KEYS[7] returned, KEYS[8] received, KEYS[9] moves (stock buckets), then
-- one idem key per restored Idempotency-Key
-- ARGV: start, end, limit, stock, snap, gen, expire_at (ms), idem ttl (ms), number of
--       buyers, number of stock buckets of the sale, then pairs (user, units held), then
--       one idem value per idem key, then the ids of the transfers this bucket received
--       (its stock already counts them)
-- Returns 1 when it loaded, 0 when a state was already there.

if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('DEL', KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8], KEYS[9])
redis.call('HSET', KEYS[1],
  'start', ARGV[1], 'end', ARGV[2], 'limit', ARGV[3], 'stock', ARGV[4],
  'snap', ARGV[5], 'gen', ARGV[6], 'expire_at', ARGV[7], 'buckets', ARGV[10])
-- `buyers` and `inflight` get a placeholder field so they exist now and carry the
-- expiry; the scripts that change them later keep it.
redis.call('HSET', KEYS[2], '_', 0)
redis.call('HSET', KEYS[3], '_', '_ 0')
local buyers_end = 10 + 2 * tonumber(ARGV[9])
for i = 11, buyers_end, 2 do
  redis.call('HSET', KEYS[2], ARGV[i], ARGV[i + 1])
end
for i = 10, #KEYS do
  redis.call('SET', KEYS[i], ARGV[buyers_end + i - 9], 'PX', ARGV[8])
end
local received_start = buyers_end + #KEYS - 9 + 1
for i = received_start, #ARGV do
  redis.call('SADD', KEYS[8], ARGV[i])
end
if #ARGV >= received_start then
  redis.call('PEXPIREAT', KEYS[8], ARGV[7])
end
for i = 1, 3 do
  redis.call('PEXPIREAT', KEYS[i], ARGV[7])
end
return 1
