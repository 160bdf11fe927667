-- close_auction.lua: end an auction at its (possibly extended) end, exactly once.
--
-- From the moment this script sets `closed`, place_bid.lua refuses every bid: the winner
-- cannot change while Postgres writes the order. The `closed` event is announced by the
-- closer once Postgres has the outcome, so watchers never hear of a winner whose last bid
-- is still being written (and might be undone).
--
-- A state closed by buy_now.lua is sold to its buyer (`bought` = 1): the bids do not
-- decide that one.
--
-- KEYS[1] state
-- Returns {1, end} not yet (the end moved), {2, price, leader, seq, end, outcome, gen,
-- bought (0/1)} closed (now or earlier), {0} missing.

local s = redis.call('HMGET', KEYS[1], 'end', 'closed', 'price', 'leader', 'seq', 'reserve', 'outcome', 'gen', 'bought')
if not s[1] then
  return {0}
end
local ends, price = tonumber(s[1]), tonumber(s[3])
if s[2] ~= '1' then
  local t = redis.call('TIME')
  local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
  if now < ends then
    return {1, ends}
  end
  local reserve = tonumber(s[6])
  local outcome = 'unsold'
  if price > 0 and (reserve == 0 or price >= reserve) then outcome = 'sold' end
  redis.call('HSET', KEYS[1], 'closed', '1', 'outcome', outcome)
  redis.call('PEXPIRE', KEYS[1], 86400000)
  s[7] = outcome
end
return {2, price, s[4] or '', tonumber(s[5]), ends, s[7], s[8] or '', tonumber(s[9] or '0')}
