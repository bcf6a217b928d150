-- restore_order.lua: put back an open order's record after Redis lost its data (rebuild-cache).
-- KEYS: 1 the order record
-- ARGV: field/value pairs of the record
-- Returns: 1 restored | 0 a record exists (it knows more than MySQL)
if redis.call('EXISTS', KEYS[1]) == 1 then return 0 end
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
