-- return_to_cart.lua: a checkout that will record no order (it failed after converting the
-- cart's hold on this sku) turns the order's line back into the customer's cart hold, with the
-- hold's own deadline (kept by lua/convert_hold.lua): the failed step costs the customer
-- nothing and never extends a hold.
-- KEYS: 1 stock, 2 users, 3 res, 4 exp, 5 the hold's TTL key, 6 the order line's TTL key,
--       7 the hold's saved deadline (see convert_hold.lua)
-- ARGV: 1 user_id, 2 order_id, 3 fence ms: the line's TTL key is left set to 'fenced' for that
--       long (whether the order had a line here or not), so that a convert_hold.lua of this order
--       that arrives later (sent before this call, its reply lost; or the next call of a
--       request still at work) is refused and the hold stays the cart's
-- Returns: {'held', units, deadline} the line is the cart hold again
--        | {'released', units} the hold's own deadline has passed (or is unknown), or the customer
--          holds this sku again already: the units go back to available, as the hold's would
--        | {'none'} the order has no line here
local stock, users, res, exp, hold_key, line_key, saved = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5], KEYS[6], KEYS[7]
local user, oid, fence = ARGV[1], ARGV[2], tonumber(ARGV[3])
if not tonumber(user) or not tonumber(oid) or not fence or fence <= 0 then
  return redis.error_reply('user_id, order_id and fence ms must be numbers (fence > 0)')
end
local orid, hrid = 'o:' .. oid, 'h:' .. user
local v = redis.call('HGET', res, orid)
if not v then
  redis.call('DEL', saved)
  redis.call('SET', line_key, 'fenced', 'PX', string.format('%d', fence))
  return { 'none' }
end
local owner, c, list = parse_entry(v)
local hold_at = tonumber(redis.call('GET', saved) or '')
if owner ~= user or not hold_at or hold_at <= now_ms() or redis.call('HEXISTS', res, hrid) == 1 then
  local n = release_entry(stock, users, res, exp, orid, v, line_key)
  redis.call('DEL', saved)
  redis.call('SET', line_key, 'fenced', 'PX', string.format('%d', fence))
  return { 'released', n }
end

local at = string.format('%d', hold_at)
redis.call('HDEL', res, orid)
redis.call('ZREM', exp, orid)
redis.call('DEL', saved)
redis.call('SET', line_key, 'fenced', 'PX', string.format('%d', fence))
redis.call('HINCRBY', stock, 'reserved', -c)
redis.call('HINCRBY', stock, 'held', c)
redis.call('HSET', res, hrid, format_entry(user, c, list))
redis.call('SET', hold_key, c, 'PXAT', at)
redis.call('ZADD', exp, at, hrid)
return { 'held', c, hold_at }
