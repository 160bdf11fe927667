-- Shared helpers for the wrk scripts in this folder (loaded with require "common").
--
-- How wrk runs a script: the main thread loads it once and calls setup(thread) for each
-- thread, then done(...) at the end. Every wrk thread also loads the script into its OWN
-- Lua state and calls init(args), then request() and response(...) for its requests.
-- Those states share nothing: the main state passes values in with thread:set(name, v)
-- and reads the thread's globals back with thread:get(name).

local M = {}

-- The value of an environment variable, or the default.
function M.env(name, default)
  local value = os.getenv(name)
  if value == nil or value == "" then return default end
  return value
end

-- The value of a required environment variable; stops wrk with a clear message without it.
-- (An error() at the top of a script would only be printed: wrk would go on.)
function M.require_env(name, what)
  local value = os.getenv(name)
  if value == nil or value == "" then
    io.stderr:write(name .. " is not set: pass " .. what .. ", e.g. " .. name .. "=<id> wrk ...\n")
    os.exit(2)
  end
  return value
end

-- One access token per line, as written by `spike-server tokens --count N --out FILE`.
-- A relative path is taken from the folder wrk was started in.
function M.read_tokens()
  local path = M.env("TOKENS", "shoppers.tokens")
  local file = io.open(path, "r")
  if file == nil then
    io.stderr:write("cannot read tokens file " .. path .. " (set TOKENS=...)\n")
    os.exit(2)
  end
  local tokens = {}
  for line in file:lines() do
    line = line:gsub("%s+", "")
    if #line > 0 then tokens[#tokens + 1] = line end
  end
  file:close()
  if #tokens == 0 then
    io.stderr:write(path .. " holds no tokens\n")
    os.exit(2)
  end
  return tokens
end

-- A token rotation for this thread: each call returns the next token of the file. wrk does
-- not tell a script how many threads there are, so thread n starts (n-1)/8 of the way down
-- the file: up to 8 threads start far apart; more still work, they just overlap sooner.
function M.rotation(tokens, thread_id)
  local i = math.floor((thread_id - 1) * #tokens / 8)
  return function()
    i = i + 1
    return tokens[(i - 1) % #tokens + 1]
  end
end

-- A JSON request with a bearer token (wrk.format adds Host and Content-Length).
function M.json_request(method, path, token, body)
  local headers = { ["Content-Type"] = "application/json", ["Accept"] = "application/json" }
  if token then headers["Authorization"] = "Bearer " .. token end
  return wrk.format(method, path, headers, body)
end

-- Main state: remember each thread and give it an id (1, 2, ...), readable as the global
-- `id` in the thread's own state from init() on.
M.threads = {}
function M.setup(thread)
  M.threads[#M.threads + 1] = thread
  thread:set("id", #M.threads)
end

-- Main state, at the end: add up every thread's global `counts` table and print one line
-- per row ({label, key}), then 429, 5xx and everything else.
function M.report(summary, rows)
  local total = {}
  for _, thread in ipairs(M.threads) do
    for key, n in pairs(thread:get("counts") or {}) do
      total[key] = (total[key] or 0) + n
    end
  end
  local listed = { [429] = true }
  local function line(label, n) io.write(string.format("  %-22s %8d\n", label, n)) end

  io.write("Spike answers:\n")
  for _, row in ipairs(rows) do
    listed[row[2]] = true
    line(row[1], total[row[2]] or 0)
  end
  line("429 rate limited", total[429] or 0)
  local server_errors, other = 0, 0
  for key, n in pairs(total) do
    if type(key) == "number" and key >= 500 and key <= 599 then
      server_errors = server_errors + n
    elseif not listed[key] then
      other = other + n
    end
  end
  line("5xx", server_errors)
  line("other", other)
  local e = summary.errors
  line("socket errors", e.connect + e.read + e.write + e.timeout)
  if (total[429] or 0) > 0 then
    io.write("  (429: the rate limiter is on; start the server with SPIKE__RATE_LIMIT__ENABLED=false)\n")
  end
end

return M
