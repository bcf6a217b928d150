-- wrk script: POST /v1/cart/items for one sku, each request with the next customer's token.
-- Environment: BENCH_TOKENS (a file, one token a line), BENCH_SKU;
--   BENCH_CUSTOMERS (optional): use only the first N tokens of the file (N distinct customers);
--   BENCH_FORWARDED_FOR=1 (optional): each request carries `X-Forwarded-For: 10.a.b.c`, the
--     address of its customer (customer k of the file, from 0, has 10.0.0.0 + k), so a service
--     run with FLASHSALE_TRUST_FORWARDED_FOR=true sees one client address per customer.
-- Prints one line starting with `bench:`: latency percentiles, requests/s, the answers by status
-- (wrk's own `errors` counts only statuses > 399 besides socket errors, so a 3xx or a 1xx would
-- pass for a success there: non2xx counts every answer outside 200-299) and the number of
-- distinct customers whose tokens were sent.
local tokens = {}
local sku = os.getenv("BENCH_SKU")
local limit = tonumber(os.getenv("BENCH_CUSTOMERS") or "")
for line in io.lines(os.getenv("BENCH_TOKENS")) do
  if limit and #tokens >= limit then break end
  tokens[#tokens + 1] = line
end
if limit and #tokens < limit then
  error(string.format("BENCH_CUSTOMERS=%d but the token file holds %d tokens", limit, #tokens))
end
local forwarded = os.getenv("BENCH_FORWARDED_FOR") == "1"
local body = '{"sku":' .. sku .. ',"count":1}'

-- Counted in each thread's environment (globals, so that done() can read them with thread:get).
sent, s2xx, s409, s429, sother = 0, 0, 0, 0, 0

local threads = {}
function setup(thread)
  thread:set("offset", math.random(1, #tokens))
  threads[#threads + 1] = thread
end

local function address(k)
  return string.format("10.%d.%d.%d", math.floor(k / 65536) % 256, math.floor(k / 256) % 256, k % 256)
end

request = function()
  sent = sent + 1
  local k = (sent + (offset or 0)) % #tokens
  local headers = {
    ["Content-Type"] = "application/json",
    ["Authorization"] = "Bearer " .. tokens[k + 1],
  }
  if forwarded then headers["X-Forwarded-For"] = address(k) end
  return wrk.format("POST", "/v1/cart/items", headers, body)
end

response = function(status)
  if status >= 200 and status < 300 then
    s2xx = s2xx + 1
  elseif status == 409 then
    s409 = s409 + 1
  elseif status == 429 then
    s429 = s429 + 1
  else
    sother = sother + 1
  end
end

done = function(summary, latency, requests)
  local c = { s2xx = 0, s409 = 0, s429 = 0, sother = 0 }
  local customers = 0
  for _, t in ipairs(threads) do
    for name in pairs(c) do c[name] = c[name] + (t:get(name) or 0) end
    -- One thread walks the tokens in order from its offset: min(sent, tokens) distinct ones.
    -- (With several threads their ranges may overlap: then this is an upper bound.)
    customers = customers + math.min(t:get("sent") or 0, #tokens)
  end
  customers = math.min(customers, #tokens)
  local e = summary.errors
  io.write(string.format("bench: p50_us=%d p99_us=%d max_us=%d rps=%.0f errors=%d"
    .. " s2xx=%d s409=%d s429=%d sother=%d non2xx=%d socket_errors=%d customers=%d pool=%d\n",
    latency:percentile(50), latency:percentile(99), latency.max,
    summary.requests / (summary.duration / 1e6),
    e.connect + e.read + e.write + e.status + e.timeout,
    c.s2xx, c.s409, c.s429, c.sother, c.s409 + c.s429 + c.sother,
    e.connect + e.read + e.write + e.timeout, customers, #tokens))
end
