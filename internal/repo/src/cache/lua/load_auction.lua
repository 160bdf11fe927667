-- load_auction.lua: (re)build an auction's live state from Postgres, atomically, unless
-- one is there already (many requests may notice a missing state at once).
--
-- KEYS[1] state
-- ARGV: start, end, price, leader, seq, start_price, min_inc, window, by, reserve, closed,
--       outcome (cents and ms as integers), gen, max (the leader's maximum, cents: a proxy
--       bid survives a lost state because Postgres keeps it with the leader's last bid)
-- Returns the generation of the state now in Redis: ARGV[13] when it loaded, the existing
-- one otherwise.

if redis.call('EXISTS', KEYS[1]) == 1 then
  return redis.call('HGET', KEYS[1], 'gen') or ''
end
redis.call('HSET', KEYS[1],
  'start', ARGV[1], 'end', ARGV[2], 'price', ARGV[3], 'leader', ARGV[4], 'seq', ARGV[5],
  'start_price', ARGV[6], 'min_inc', ARGV[7], 'window', ARGV[8], 'by', ARGV[9],
  'reserve', ARGV[10], 'closed', ARGV[11], 'outcome', ARGV[12], 'gen', ARGV[13],
  'max', ARGV[14])
if ARGV[11] == '1' then
  redis.call('PEXPIRE', KEYS[1], 86400000)
end
return ARGV[13]
