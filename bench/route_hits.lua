-- wrk script: cache hits that the hit fast path has never seen, so the route answers each:
-- the same cached series, under a query string never asked before.
local counter = 0

request = function()
  counter = counter + 1
  return wrk.format("GET", "/stock/IBM?days=30&n=" .. counter)
end
