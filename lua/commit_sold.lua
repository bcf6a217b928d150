-- commit_sold.lua: the order was paid: its reservation on this sku becomes sold units, which
-- wait in the sold ledger until the write-back lowered MySQL's on_hand (mark_written.lua).
-- KEYS: 1 stock, 2 res, 3 exp, 4 the order line's TTL key, 5 sold ledger
-- ARGV: 1 rid ('o:<order_id>')
-- Returns: {'ok', units, alloc} (moved now) | {'sold', units, alloc} (moved before, not yet
-- written back) | {'none', 0, ''} (written back already, never reserved, or the sku's keys
-- were lost: the write-back takes MySQL's figures from the event, not from this answer).
-- Callers commit only an order that decide_order.lua ruled paid.
local stock, res, exp, ttl_key, sold, rid = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], ARGV[1]
local v = redis.call('HGET', res, rid)
if not v then
  local s = redis.call('HGET', sold, rid)
  if not s then return { 'none', 0, '' } end
  local _, c = parse_entry(s)
  return { 'sold', c, string.match(s, '^%d+|%d+|(.*)$') }
end
local _, c = parse_entry(v)
redis.call('HINCRBY', stock, 'reserved', -c)
redis.call('HINCRBY', stock, 'sold', c)
redis.call('HINCRBY', stock, 'sold_total', c)
redis.call('HDEL', res, rid)
redis.call('HSET', sold, rid, v)
redis.call('ZREM', exp, rid)
redis.call('DEL', ttl_key)
return { 'ok', c, string.match(v, '^%d+|%d+|(.*)$') }
