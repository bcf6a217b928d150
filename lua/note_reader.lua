-- note_reader.lua: an outbox writer's heartbeat. Notes the instance as seen now (Redis's
-- clock, so the instances' clocks do not matter) or, when it stops, takes it off; forgets
-- instances not seen for `ttl`; returns the instances left, which share the partitions.
-- KEYS: 1 the writers' sorted set (instance -> last seen, unix ms)
-- ARGV: 1 instance, 2 ttl in ms, 3 '1' here | '0' stopping
-- Returns: the live instances, any order
local now = now_ms()
local ttl = tonumber(ARGV[2])
if ARGV[3] == '1' then
  redis.call('ZADD', KEYS[1], now, ARGV[1])
else
  redis.call('ZREM', KEYS[1], ARGV[1])
end
redis.call('ZREMRANGEBYSCORE', KEYS[1], '-inf', '(' .. string.format('%d', now - ttl))
if redis.call('EXISTS', KEYS[1]) == 1 then
  -- Gone with the last writer (a set nobody notes in any more is of no use).
  redis.call('PEXPIRE', KEYS[1], 2 * ttl)
end
return redis.call('ZRANGE', KEYS[1], 0, -1)
