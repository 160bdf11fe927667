-- transfer_out.lua: step 1 of a transfer between two buckets of a sale (docs/architecture.md,
-- "Stock buckets"): the donor gives up to `want` units and records the move under its id,
-- so that whoever finishes it (the mover, or the worker's sweeper if the mover died) knows
-- where they go. The units are then in no bucket's stock until the destination takes them.
--
-- KEYS[1] state (the donor's), KEYS[2] moves hash: transfer id -> "dest units ms"
-- ARGV: transfer id, destination bucket, units wanted (it gives half its stock if that is
--       more, so that one transfer serves many buyers; all it has if that is less)
-- Returns {-1} the donor's hot state is missing, {0, stock} nothing to give (or a move out
--         of it is still pending),
--         {units, stock left}.

local state, moves = KEYS[1], KEYS[2]
local s = redis.call('HMGET', state, 'stock', 'expire_at')
if not s[1] then
  return {-1}
end
local stock = tonumber(s[1])
if stock <= 0 then
  return {0, stock}
end
-- One move out of a donor at a time: while Postgres cannot record moves (step 2), buyers
-- retrying would otherwise drain every bucket into moves nobody can finish.
if redis.call('HLEN', moves) > 0 then
  return {0, stock}
end
local units = math.min(stock, math.max(tonumber(ARGV[3]), math.floor(stock / 2)))
redis.call('HINCRBY', state, 'stock', -units)
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
redis.call('HSET', moves, ARGV[1], ARGV[2] .. ' ' .. units .. ' ' .. now)
redis.call('PEXPIREAT', moves, s[2])
return {units, stock - units}
