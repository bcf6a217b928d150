-- raise_seq.lua: make sure a sequence counter is at least a floor (ids already used in MySQL),
-- so ids stay unique after Redis lost its data.
-- KEYS: 1 the counter
-- ARGV: 1 the floor
-- Returns: the counter's value afterwards
local cur = tonumber(redis.call('GET', KEYS[1]) or '0')
local floor = tonumber(ARGV[1])
if cur < floor then
  redis.call('SET', KEYS[1], ARGV[1])
  return floor
end
return cur
