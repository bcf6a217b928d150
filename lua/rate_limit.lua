-- rate_limit.lua: a token bucket (one per customer, client address or login name).
-- KEYS: 1 the bucket (hash: tokens, ts)
-- ARGV: 1 refill rate in tokens per second (> 0), 2 burst (bucket size, >= 1),
--       3 mode: 'take' (take one token when there is one), 'peek' (is there one? takes none),
--               'charge' (take one if any is left, never below zero: a failed login costs one),
--               'refund' (give one back, never above the burst: a login that turned out right)
-- Returns: {1, 0} allowed | {0, ms until a token is back}
-- A refused 'take' changes nothing. The bucket expires once it would be full again, so idle
-- callers cost no memory.
local key = KEYS[1]
local rate, burst, mode = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
if not rate or rate <= 0 or not burst or burst < 1 then
  return redis.error_reply('rate must be > 0 and burst >= 1')
end
if mode ~= 'take' and mode ~= 'peek' and mode ~= 'charge' and mode ~= 'refund' then
  return redis.error_reply('unknown mode ' .. tostring(mode))
end
local now = now_ms()
local b = redis.call('HMGET', key, 'tokens', 'ts')
local tokens = tonumber(b[1]) or burst
local ts = tonumber(b[2]) or now
if now > ts then tokens = math.min(burst, tokens + (now - ts) * rate / 1000) end

local function wait_ms(have)
  return math.ceil((1 - have) * 1000 / rate)
end

if mode == 'refund' then
  if redis.call('EXISTS', key) == 0 then return { 1, 0 } end
  tokens = math.min(burst, tokens + 1)
  redis.call('HSET', key, 'tokens', string.format('%.6f', tokens), 'ts', string.format('%d', now))
  redis.call('PEXPIRE', key, math.ceil((burst - tokens) * 1000 / rate) + 1000)
  return { 1, 0 }
end
if mode == 'peek' then
  if tokens >= 1 then return { 1, 0 } end
  return { 0, wait_ms(tokens) }
end
if tokens < 1 then
  if mode == 'take' then return { 0, wait_ms(tokens) } end
  tokens = 0
else
  tokens = tokens - 1
end
redis.call('HSET', key, 'tokens', string.format('%.6f', tokens), 'ts', string.format('%d', now))
redis.call('PEXPIRE', key, math.ceil((burst - tokens) * 1000 / rate) + 1000)
if mode == 'take' then return { 1, 0 } end
if tokens >= 1 then return { 1, 0 } end
return { 0, wait_ms(tokens) }
