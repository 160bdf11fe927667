-- undo_bid.lua: take back a bid that could not be written to Postgres.
--
-- A bid cannot be cut out of the middle of an auction's history (later bids were priced
-- on top of it), so the whole live state of that generation goes: the next request finds
-- none and rebuilds it from Postgres, under a new generation that Postgres then requires.
-- Every bid of the old generation still on its way is refused there and undone the same
-- way; a state already rebuilt (another generation) is left alone.
--
-- KEYS[1] state, KEYS[2] idem (the bid's Idempotency-Key, so a retry is not replayed)
-- ARGV: gen, has_idem (0/1)
-- Returns 1 when it dropped the state, 0 when that generation was gone already.

if ARGV[2] == '1' then
  redis.call('DEL', KEYS[2])
end
if redis.call('HGET', KEYS[1], 'gen') == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
