-- unlock.lua: let go of a lock (a customer's checkout) if it is still ours.
-- KEYS: 1 the lock
-- ARGV: 1 our token
-- Returns: 1 released | 0 not ours (its lease ran out and another took it) or gone
if redis.call('GET', KEYS[1]) == ARGV[1] then
  redis.call('DEL', KEYS[1])
  return 1
end
return 0
