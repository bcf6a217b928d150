-- hold_lease.lua: take, renew or let go of a lease one owner holds at a time (the reading of an
-- outbox partition). Taking a free lease and renewing one's own are the same call; another
-- owner's lease is left alone until it runs out (its owner stopped renewing it: gone).
-- KEYS: 1 the lease
-- ARGV: 1 owner, 2 lease length in ms (0: let go)
-- Returns: 1 the owner holds it now (letting go: it was the owner's, and is free now)
--        | 0 another owner holds it (letting go: it was not the owner's; left as it is)
local holder = redis.call('GET', KEYS[1])
local ttl = tonumber(ARGV[2])
if ttl == 0 then
  if holder == ARGV[1] then
    redis.call('DEL', KEYS[1])
    return 1
  end
  return 0
end
if holder == false or holder == ARGV[1] then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ttl)
  return 1
end
return 0
