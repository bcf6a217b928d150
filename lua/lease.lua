-- lease.lua: one holder at a time of a piece of shared work (the sweeper's passes, the gauges
-- read from Redis): taken when free or kept when ours, for a life renewed on every call.
-- KEYS: 1 the lease
-- ARGV: 1 the holder's id (an instance), 2 the life in ms, 3 'take' | 'drop' (let go when ours)
-- Returns: 1 ours now | 0 another holds it (or it was let go)
local holder = redis.call('GET', KEYS[1])
if ARGV[3] == 'drop' then
  if holder == ARGV[1] then
    redis.call('DEL', KEYS[1])
  end
  return 0
end
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
