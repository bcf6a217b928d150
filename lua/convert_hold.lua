-- convert_hold.lua: checkout of one cart line: the customer's cart hold on this sku becomes the
-- order's reservation, with the order's payment deadline. Idempotent per order.
-- KEYS: 1 meta, 2 stock, 3 users, 4 res, 5 exp, 6 the hold's TTL key, 7 the order line's TTL key
-- ARGV: 1 user_id, 2 order_id, 3 deadline (unix ms)
-- Returns: {'ok', units, unit_price} | {'no_hold'} (swept already: reserve afresh)
--        | {'sale_not_active'} (the hold had expired and the sale is over) | {'not_loaded'}
local meta, stock, res, exp, hold_key, order_key = KEYS[1], KEYS[2], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local user, oid, deadline = ARGV[1], ARGV[2], ARGV[3]
if redis.call('EXISTS', stock) == 0 or redis.call('EXISTS', meta) == 0 then return { 'not_loaded' } end
local orid, hrid = 'o:' .. oid, 'h:' .. user
local state, price = sale_state(meta, now_ms())

local done = redis.call('HGET', res, orid)
if done then
  local _, c = parse_entry(done)
  return { 'ok', c, price }
end
local h = redis.call('HGET', res, hrid)
if not h then return { 'no_hold' } end
-- An expired hold's units are available again in all but bookkeeping: taking them over is a
-- fresh reservation, which the sale window must allow. (The count, hence the limit, is unchanged.)
if redis.call('EXISTS', hold_key) == 0 and state == 'inactive' then return { 'sale_not_active' } end

local _, c, list = parse_entry(h)
redis.call('HDEL', res, hrid)
redis.call('ZREM', exp, hrid)
redis.call('DEL', hold_key)
redis.call('HINCRBY', stock, 'held', -c)
redis.call('HINCRBY', stock, 'reserved', c)
redis.call('HSET', res, orid, format_entry(user, c, list))
redis.call('SET', order_key, c, 'PXAT', deadline)
redis.call('ZADD', exp, deadline, orid)
return { 'ok', c, price }
