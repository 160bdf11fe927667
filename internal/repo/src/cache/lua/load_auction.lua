-- load_auction.lua: (re)build an auction's live state from Postgres, atomically, unless
-- one is there already (many requests may notice a missing state at once).
--
-- KEYS[1] state, KEYS[2] bids stream
-- ARGV: start, end, price, leader, seq, start_price, min_inc, window, by, reserve, closed,
--       outcome (cents and ms as integers)
-- Returns 1 when it loaded, 0 when a state was already there.

if redis.call('EXISTS', KEYS[1]) == 1 then
  return 0
end
redis.call('HSET', KEYS[1],
  'start', ARGV[1], 'end', ARGV[2], 'price', ARGV[3], 'leader', ARGV[4], 'seq', ARGV[5],
  'start_price', ARGV[6], 'min_inc', ARGV[7], 'window', ARGV[8], 'by', ARGV[9],
  'reserve', ARGV[10], 'closed', ARGV[11], 'outcome', ARGV[12])
if ARGV[11] == '1' then
  redis.call('PEXPIRE', KEYS[1], 86400000)
end
-- The relay reads the stream through this consumer group; BUSYGROUP means it exists.
redis.pcall('XGROUP', 'CREATE', KEYS[2], 'relay', '0', 'MKSTREAM')
return 1
