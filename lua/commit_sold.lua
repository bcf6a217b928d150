-- commit_sold.lua: the order was paid: its reservation on this sku becomes sold units.
-- KEYS: 1 stock, 2 res, 3 exp, 4 the order line's TTL key
-- ARGV: 1 rid ('o:<order_id>')
-- Returns: {'ok', units} | {'none', 0} (committed already). Callers commit only an order that
-- decide_order.lua ruled paid.
local stock, res, exp, ttl_key, rid = KEYS[1], KEYS[2], KEYS[3], KEYS[4], ARGV[1]
local v = redis.call('HGET', res, rid)
if not v then return { 'none', 0 } end
local _, c = parse_entry(v)
redis.call('HINCRBY', stock, 'reserved', -c)
redis.call('HINCRBY', stock, 'sold', c)
redis.call('HINCRBY', stock, 'sold_total', c)
redis.call('HDEL', res, rid)
redis.call('ZREM', exp, rid)
redis.call('DEL', ttl_key)
return { 'ok', c }
