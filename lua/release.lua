-- release.lua: give units of one reservation back (remove from cart, clear cart, roll back a
-- failed checkout, follow up a cancelled or expired order).
-- KEYS: 1 stock, 2 users, 3 res, 4 exp, 5 the reservation's TTL key
-- ARGV: 1 rid, 2 count to release (0 = all), 3 (optional) fence ms: the reservation's TTL key
--       is left set to 'fenced' for that long (whether the reservation existed or not), so that
--       a reserve.lua call of this rid in 'once' mode that arrives later (sent before this
--       release, its reply lost; or the next call of a request still at work) is refused: an
--       order line given up can never appear after it
-- Returns: {'ok', units released, units left} | {'none', 0, 0}
-- A partly released reservation keeps its deadline: a removal never extends a hold.
-- Callers release an order line only after decide_order.lua ruled the order cancelled or failed.
local stock, users, res, exp, ttl_key = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local rid, n, fence = ARGV[1], tonumber(ARGV[2]), tonumber(ARGV[3] or '0')
if not n or not fence then return redis.error_reply('count and fence ms must be numbers') end
local v = redis.call('HGET', res, rid)
if not v then
  if fence > 0 then redis.call('SET', ttl_key, 'fenced', 'PX', string.format('%d', fence)) end
  return { 'none', 0, 0 }
end
local user, c, list = parse_entry(v)
if n == 0 or n >= c or redis.call('EXISTS', ttl_key) == 0 then
  local released = release_entry(stock, users, res, exp, rid, v, ttl_key)
  if fence > 0 then redis.call('SET', ttl_key, 'fenced', 'PX', string.format('%d', fence)) end
  return { 'ok', released, 0 }
end
give_back(stock, n, bucket_of(rid), list)
redis.call('HINCRBY', users, user, -n)
redis.call('HSET', res, rid, format_entry(user, c - n, list))
redis.call('SET', ttl_key, c - n, 'KEEPTTL')
return { 'ok', n, c - n }
