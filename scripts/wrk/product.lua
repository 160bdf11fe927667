-- Catalog reads: GET /api/v1/products/{PRODUCT}, a cache hit after the first read.
--
--   PRODUCT=<product id> wrk -t2 -c50 -d15s --latency -s scripts/wrk/product.lua http://127.0.0.1:8080
--
-- A public endpoint: no token. The request never changes, so it is set once in wrk.path
-- (wrk then reuses the same bytes) instead of built per request in request().

local here = debug.getinfo(1, "S").source:match("^@(.*/)") or "./"
package.path = here .. "?.lua;" .. package.path
local common = require "common"

local product = common.require_env("PRODUCT", "the product id (spike-server seed --demo prints it)")
wrk.method = "GET"
wrk.path = "/api/v1/products/" .. product
wrk.headers["Accept"] = "application/json"

counts = {}

setup = common.setup

function response(status, headers, body)
  counts[status] = (counts[status] or 0) + 1
end

function done(summary, latency, requests)
  common.report(summary, { { "200 ok", 200 } })
end
