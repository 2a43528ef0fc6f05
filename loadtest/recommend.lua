-- wrk script: POST /recommend for user ids read from a file, rotating through them.
--
--   USERS_FILE=users.txt wrk -t2 -c32 -d15s --latency -s loadtest/recommend.lua http://127.0.0.1:8000
--   wrk -t2 -c32 -d15s --latency -s loadtest/recommend.lua http://127.0.0.1:8000 -- users.txt 50
--
-- Users file: one user id per line, or a CSV whose header holds a user_id column (plain text,
-- not gzipped). Path from the first script argument or $USERS_FILE; k from the second argument or
-- $RECOMMEND_K (default 50). Each thread starts at its own offset so threads do not send the same
-- users in lockstep. Ids must not need JSON escaping (no quotes or backslashes).
-- $RECOMMEND_EXTRA, when set, is a JSON fragment of more request fields appended to every body,
-- e.g. RECOMMEND_EXTRA='"filter":{"category":{"eq":"c3"}}' (benchmarks/serving_filtered.py).
--
-- done() prints one line "WRK_JSON {...}": requests, duration, requests/s, latency percentiles
-- in ms, wrk's socket errors, non-2xx/3xx responses (wrk's own count), responses per status code
-- and responses whose "fallback" field is not null, in all and for history_unavailable (so a
-- cold or degraded run is visible).

local users = {}
local counter = 0
-- globals, not locals: done() reads them from each thread with thread:get()
statuses = {}
fallbacks = 0
history_unavailable = 0
local threads = {}
local path_ = "/recommend"
local k = tonumber(os.getenv("RECOMMEND_K") or "50")
local extra = os.getenv("RECOMMEND_EXTRA") or ""
if extra ~= "" then
  extra = "," .. extra
end

local function read_users(path)
  local list = {}
  local file = io.open(path, "r")
  if not file then
    error("cannot open users file " .. tostring(path))
  end
  local column = nil
  local first = true
  for line in file:lines() do
    line = line:gsub("\r$", "")
    if first and line:find(",") then
      -- CSV header: find the user_id column
      local i = 0
      for name in (line .. ","):gmatch("([^,]*),") do
        i = i + 1
        if name == "user_id" then
          column = i
        end
      end
      if not column then
        error(path .. ": CSV header without a user_id column")
      end
    elseif first and line == "user_id" then
      column = 1
    elseif line ~= "" then
      if column then
        local i = 0
        for value in (line .. ","):gmatch("([^,]*),") do
          i = i + 1
          if i == column then
            list[#list + 1] = value
            break
          end
        end
      else
        list[#list + 1] = line
      end
    end
    first = false
  end
  file:close()
  if #list == 0 then
    error(path .. ": no user ids")
  end
  return list
end

function setup(thread)
  thread:set("id", #threads)
  threads[#threads + 1] = thread
end

function init(args)
  local path = args[1] or os.getenv("USERS_FILE")
  if not path then
    error("pass the users file as the first script argument or in USERS_FILE")
  end
  if args[2] then
    k = tonumber(args[2])
  end
  users = read_users(path)
  -- id is set by setup() before init runs in the thread
  counter = math.floor(((id or 0) * 7919) % #users)
  wrk.method = "POST"
  wrk.headers["Content-Type"] = "application/json"
  local base = wrk.path
  if base == nil or base == "" or base == "/" then
    path_ = "/recommend"
  else
    path_ = base
  end
end

function request()
  counter = counter + 1
  if counter > #users then
    counter = 1
  end
  local body = '{"user_id":"' .. users[counter] .. '","k":' .. k .. extra .. '}'
  return wrk.format(nil, path_, nil, body)
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  if status < 300 and not body:find('"fallback":null', 1, true) then
    fallbacks = fallbacks + 1
    if body:find('"fallback":"history_unavailable"', 1, true) then
      history_unavailable = history_unavailable + 1
    end
  end
end

function done(summary, latency, requests)
  local codes = {}
  local fallback_total = 0
  local unavailable_total = 0
  for _, thread in ipairs(threads) do
    local s = thread:get("statuses")
    if s then
      for code, n in pairs(s) do
        codes[code] = (codes[code] or 0) + n
      end
    end
    fallback_total = fallback_total + (thread:get("fallbacks") or 0)
    unavailable_total = unavailable_total + (thread:get("history_unavailable") or 0)
  end
  local parts = {}
  for code, n in pairs(codes) do
    parts[#parts + 1] = string.format('"%d":%d', code, n)
  end
  local seconds = summary.duration / 1e6
  local e = summary.errors
  local lat = {}
  for _, p in ipairs({50, 90, 95, 99, 99.9}) do
    lat[#lat + 1] = string.format('"p%s":%.3f', tostring(p):gsub("%.", "_"), latency:percentile(p) / 1000)
  end
  io.write(string.format(
    'WRK_JSON {"requests":%d,"duration_s":%.3f,"qps":%.1f,"bytes":%d,' ..
    '"latency_ms":{%s,"mean":%.3f,"stdev":%.3f,"max":%.3f},' ..
    '"socket_errors":{"connect":%d,"read":%d,"write":%d,"timeout":%d},"non_2xx_3xx":%d,' ..
    '"status_counts":{%s},"fallbacks":%d,"fallbacks_history_unavailable":%d}\n',
    summary.requests, seconds, summary.requests / seconds, summary.bytes,
    table.concat(lat, ","), latency.mean / 1000, latency.stdev / 1000, latency.max / 1000,
    e.connect, e.read, e.write, e.timeout, e.status,
    table.concat(parts, ","), fallback_total, unavailable_total))
end
