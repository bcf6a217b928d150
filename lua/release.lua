-- release.lua: give units of one reservation back (remove from cart, clear cart, roll back a
-- failed checkout, follow up a cancelled or expired order).
-- KEYS: 1 stock, 2 users, 3 res, 4 exp, 5 the reservation's TTL key
-- ARGV: 1 rid, 2 count to release (0 = all)
-- Returns: {'ok', units released, units left} | {'none', 0, 0}
-- A partly released reservation keeps its deadline: a removal never extends a hold.
-- Callers release an order line only after decide_order.lua ruled the order cancelled or failed.
local stock, users, res, exp, ttl_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local rid, n = ARGV[1], tonumber(ARGV[2])
local v = redis.call('HGET', res, rid)
if not v then return { 'none', 0, 0 } end
local user, c, list = parse_entry(v)
if n == 0 or n >= c or redis.call('EXISTS', ttl_key) == 0 then
  return { 'ok', release_entry(stock, users, res, exp, rid, v, ttl_key), 0 }
end
give_back(stock, n, bucket_of(rid), list)
redis.call('HINCRBY', users, user, -n)
redis.call('HSET', res, rid, format_entry(user, c - n, list))
redis.call('SET', ttl_key, c - n, 'KEEPTTL')
return { 'ok', n, c - n }
