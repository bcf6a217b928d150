-- wrk script: POST /v1/cart/items for one sku, each request with the next customer's token.
-- Environment: BENCH_TOKENS (a file, one token a line), BENCH_SKU.
local tokens = {}
local sku = os.getenv("BENCH_SKU")
for line in io.lines(os.getenv("BENCH_TOKENS")) do
  tokens[#tokens + 1] = line
end
local i = 0
local body = '{"sku":' .. sku .. ',"count":1}'

function setup(thread)
  thread:set("offset", math.random(1, #tokens))
end

request = function()
  i = i + 1
  local t = tokens[((i + (offset or 0)) % #tokens) + 1]
  return wrk.format("POST", "/v1/cart/items", {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. t,
  }, body)
end

local statuses = {}
response = function(status)
  statuses[status] = (statuses[status] or 0) + 1
end

done = function(summary, latency, requests)
  io.write(string.format("bench: p50_us=%d p99_us=%d max_us=%d rps=%.0f errors=%d\n",
    latency:percentile(50), latency:percentile(99), latency.max,
    summary.requests / (summary.duration / 1e6),
    summary.errors.connect + summary.errors.read + summary.errors.write + summary.errors.status + summary.errors.timeout))
end
