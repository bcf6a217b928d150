-- settle_due.lua: after sweeping a sku, move its due-index entry to the earliest deadline left
-- in its `exp`, or drop it when nothing is left, unless a note came since the sweep began.
-- KEYS: 1 the due index (zset), 2 its versions (hash)
-- ARGV: 1 sku, 2 the sku's version read before the sweep ('0' = none),
--       3 the earliest deadline left (unix ms), '' = nothing held or reserved
-- Returns: 1 moved or dropped | 0 a note came meanwhile: the entry, at or before every deadline
-- noted, is kept and the sku is looked at again when it is due.
local sku, seen, next_at = ARGV[1], ARGV[2], ARGV[3]
if (redis.call('HGET', KEYS[2], sku) or '0') ~= seen then return 0 end
if next_at == '' then
  redis.call('ZREM', KEYS[1], sku)
else
  redis.call('ZADD', KEYS[1], next_at, sku)
end
return 1
