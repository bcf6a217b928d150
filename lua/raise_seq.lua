-- raise_seq.lua: make sure a sequence counter is at least a floor (ids already used in MySQL),
-- so ids stay unique after Redis lost its data. A missing counter is set to floor + margin:
-- ids handed out before the loss but not yet written to MySQL lie above the floor.
-- KEYS: 1 the counter
-- ARGV: 1 the floor, 2 the margin added when the counter is missing (default 0)
-- Returns: {the counter's value afterwards, 1 if it was missing else 0}
local floor, margin = tonumber(ARGV[1]), tonumber(ARGV[2] or '0')
local cur = redis.call('GET', KEYS[1])
if not cur then
  local v = string.format('%d', floor + margin)
  redis.call('SET', KEYS[1], v)
  return { tonumber(v), 1 }
end
cur = tonumber(cur)
if cur < floor then
  redis.call('SET', KEYS[1], ARGV[1])
  return { floor, 0 }
end
return { cur, 0 }
