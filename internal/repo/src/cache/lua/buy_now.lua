-- buy_now.lua: end an auction at once at its buy-now price, if that is still on offer.
--
-- Buy-now is on offer from the start until the first bid that meets the reserve (the first
-- bid when there is none), and never once the auction is closed. This script and
-- place_bid.lua run one after the other on the same state, so a buy-now racing a bid is
-- decided here: either the bid came first (and buy-now is refused when it met the reserve)
-- or the state is closed first (and place_bid.lua refuses the bid).
--
-- The state becomes closed and sold, with the buyer as leader at the buy-now price and the
-- end at now; `seq` stays (a purchase is not a bid). `bought` tells close_auction.lua and
-- the closer that the winner comes from here, not from the bids. Postgres records the
-- outcome and the order next (the closer's normal path); should that process die first,
-- the auction's close message or the sweeper finds this closed state and records it then,
-- so the state must outlive the original end: it expires a day after that.
--
-- KEYS[1] state
-- ARGV: user, buy-now price (cents)
-- Returns {1, gen} bought now, {2, gen} bought by this user earlier (a retry),
--         {3} not on offer (closed, not started, ended, or a bid met the reserve), {0} missing.

local state, user = KEYS[1], ARGV[1]
local s = redis.call('HMGET', state, 'start', 'end', 'price', 'seq', 'reserve', 'closed', 'leader', 'bought', 'gen')
if not s[1] then
  return {0}
end
local gen = s[9] or ''
if s[6] == '1' then
  if s[8] == '1' and s[7] == user then
    return {2, gen}
  end
  return {3}
end

local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
local ends = tonumber(s[2])
if now < tonumber(s[1]) or now >= ends then
  return {3}
end
local price, seq, reserve = tonumber(s[3]), tonumber(s[4]), tonumber(s[5] or '0')
if (reserve == 0 and seq > 0) or (reserve > 0 and price >= reserve) then
  return {3}
end

redis.call('HSET', state, 'closed', '1', 'outcome', 'sold', 'bought', '1', 'leader', user,
  'price', ARGV[2], 'end', string.format('%d', now))
redis.call('PEXPIRE', state, ends - now + 86400000)
return {1, gen}
