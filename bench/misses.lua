-- wrk script: every request asks for a symbol never asked before, so every one misses the cache.
local counter = 0
local prefix = "X"

init = function(args)
  -- wrk runs one Lua state per thread; a fresh table's address tells the threads apart.
  prefix = "M" .. string.upper(string.sub(tostring({}), -8))
end

request = function()
  counter = counter + 1
  return wrk.format("GET", "/stock/" .. prefix .. "-" .. counter .. "?days=30")
end
