-- Live auction: POST /api/v1/auctions/{AUCTION}/bids with ever higher amounts.
--
--   AUCTION=<auction id> TOKENS=shoppers.tokens \
--     wrk -t2 -c20 -d15s --latency -s scripts/wrk/bid.lua http://127.0.0.1:8080
--   env: START_CENTS (100000 = "1000.00"), STEP_CENTS (100)
--
-- wrk builds the next request without waiting for the previous answer, so the script
-- can't read min_next_bid first (k6's bid.js does). Instead each thread keeps its own next
-- amount in cents: it starts at START_CENTS and goes up by STEP_CENTS + the thread id per
-- bid (threads climb at different paces, so they rarely send equal amounts). When a 409
-- BID_TOO_LOW says what the minimum is, the thread jumps up to it for its later bids.
-- Expected answers: 201 (accepted) and 409 (BID_TOO_LOW, or AUCTION_CLOSED at the end).

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = here .. "?.lua;" .. package.path
local common = require "common"

local auction = common.require_env("AUCTION", "the auction id (spike-server seed --demo prints it)")
local tokens = common.read_tokens()
local path = "/api/v1/auctions/" .. auction .. "/bids"
local start_cents = tonumber(common.env("START_CENTS", "100000"))
local step_cents = tonumber(common.env("STEP_CENTS", "100"))

counts = {}
local next_token, next_cents

setup = common.setup

function init(args)
  next_token = common.rotation(tokens, id)
  next_cents = start_cents
end

-- Money is a JSON string with 2 decimals ("1000.00"), never a float: whole cents in,
-- "%d.%02d" out.
local function money(cents)
  return string.format("%d.%02d", math.floor(cents / 100), cents % 100)
end

function request()
  local amount = money(next_cents)
  next_cents = next_cents + step_cents + id
  return common.json_request("POST", path, next_token(), '{"amount":"' .. amount .. '"}')
end

function response(status, headers, body)
  local key = status
  if status == 409 then
    if body:find("BID_TOO_LOW", 1, true) then
      key = "too_low"
      -- details.min_bid, e.g. "min_bid":"1234.00": catch up for the next bids.
      local whole, frac = body:match('"min_bid"%s*:%s*"(%d+)%.(%d%d)"')
      if whole then
        next_cents = math.max(next_cents, tonumber(whole) * 100 + tonumber(frac))
      end
    elseif body:find("AUCTION_CLOSED", 1, true) then
      key = "closed"
    end
  end
  counts[key] = (counts[key] or 0) + 1
end

function done(summary, latency, requests)
  common.report(summary, {
    { "201 accepted", 201 },
    { "409 BID_TOO_LOW", "too_low" },
    { "409 AUCTION_CLOSED", "closed" },
  })
end
