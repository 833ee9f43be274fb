-- wrk script for bench/soak.py: one round of a mixed load, stopped after `quota` responses.
-- wrk -t1 ... URL -- QUOTA ADMIN_TOKEN MISS_OFFSET
--
-- Per 100 requests: 60 cache hits over a hot set of 20 symbols, 25 misses, 5 unknown
-- symbols ("ZZ...": 404 from upstream), 10 invalid requests (422). The misses walk 20,000 keys
-- in order (daily then quote for 10,000 symbols), twice CACHE_MAX_ENTRIES, so the LRU cache is
-- always full and every one of them misses. Of every 10,000 requests, those from 4,000 to
-- 6,000 run with the breaker forced open through the admin endpoints: misses then get 503.

local quota, token, miss_offset = 100000, "", 0
local sent, misses, answered = 0, 0, 0
statuses = {} -- global: soak.py reads it back through thread:get in done()

local threads = {}

function setup(thread)
  table.insert(threads, thread)
end

function init(args)
  quota = tonumber(args[1])
  token = args[2]
  miss_offset = tonumber(args[3])
end

local function admin(action)
  return wrk.format("POST", "/circuit-breaker/" .. action, { Authorization = "Bearer " .. token })
end

function request()
  sent = sent + 1
  local window = sent % 10000
  if window == 4000 then
    return admin("open")
  elseif window == 6000 then
    return admin("reset")
  end
  local slot = sent % 100
  if slot < 60 then
    return wrk.format("GET", "/stock/HOT" .. (sent % 20) .. "?days=10")
  elseif slot < 85 then
    local key = miss_offset + misses
    misses = misses + 1
    local symbol = "S" .. (key % 10000)
    if math.floor(key / 10000) % 2 == 0 then
      return wrk.format("GET", "/stock/" .. symbol .. "?days=10")
    end
    return wrk.format("GET", "/stock/" .. symbol .. "/quote")
  elseif slot < 90 then
    return wrk.format("GET", "/stock/ZZ" .. (sent % 1000) .. "?days=10")
  elseif slot < 95 then
    return wrk.format("GET", "/stock/%5EBAD?days=10")
  end
  return wrk.format("GET", "/stock/HOT1?days=0")
end

function response(status, headers, body)
  statuses[status] = (statuses[status] or 0) + 1
  answered = answered + 1
  if answered == quota then
    -- wrk's main thread sleeps out the whole -d: soak.py answers this line with SIGINT.
    io.write("quota reached\n")
    io.flush()
    wrk.thread:stop()
  end
end

function done(summary, latency, requests)
  for _, thread in ipairs(threads) do
    for status, count in pairs(thread:get("statuses")) do
      io.write(string.format("status %d %d\n", status, count))
    end
  end
end
