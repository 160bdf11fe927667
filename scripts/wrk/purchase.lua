-- Flash-sale rush: POST /api/v1/sales/{SALE}/purchase with a different shopper each time.
--
--   SALE=<sale id> TOKENS=shoppers.tokens \
--     wrk -t1 -c50 -d15s --latency -s scripts/wrk/purchase.lua http://127.0.0.1:8080
--
-- Expected answers: 202 (reserved) and 409 (SOLD_OUT / LIMIT_REACHED / NOT_ACTIVE). wrk's
-- own "Non-2xx or 3xx responses" line counts the 409s too: read the table printed by done().

-- Find common.lua next to this script, wherever wrk is started from.
local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = here .. "?.lua;" .. package.path
local common = require "common"

local sale = common.require_env("SALE", "the flash sale id (spike-server seed --demo prints it)")
local tokens = common.read_tokens()
local path = "/api/v1/sales/" .. sale .. "/purchase"
local body = '{"quantity":1}'

counts = {} -- this thread's status counts (a global, so done() can thread:get it)
local next_token

setup = common.setup

function init(args)
  next_token = common.rotation(tokens, id) -- `id` was set by setup() in the main state
end

function request()
  return common.json_request("POST", path, next_token(), body)
end

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  common.report(summary, { { "202 reserved", 202 }, { "409 refused", 409 } })
end
