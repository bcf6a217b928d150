-- convert_hold.lua: checkout of one cart line: the customer's cart hold on this sku becomes the
-- order's reservation, with the order's payment deadline. Idempotent per order.
-- KEYS: 1 meta, 2 stock, 3 users, 4 res, 5 exp, 6 the hold's TTL key, 7 the order line's TTL key,
--       8 the hold's own deadline, kept until the line's (lua/return_to_cart.lua reads it)
-- ARGV: 1 user_id, 2 order_id, 3 deadline (unix ms)
-- Returns: {'ok', units, unit_price, the line's deadline} (a line this order already has is the
--          answer, with its own deadline: a retry continuing the order adopts it)
--        | {'no_hold'} (converted by another checkout, or swept)
--        | {'fenced'} (the order's line on this sku was given up by return_to_cart.lua before
--          this call arrived: its request timed out waiting for this very call; nothing changed)
--        | {'sale_not_active', units given back} (the product has a sale window and it is not
--          open now: a sale product is bought only inside its window; the hold is released)
--        | {'too_large', units, unit_price} (the line's total at today's price passes MAX_TOTAL;
--          nothing changed) | {'not_loaded'}
local meta, stock, res, exp, hold_key, order_key, saved = KEYS[1], KEYS[2], KEYS[4], KEYS[5], KEYS[6], KEYS[7], KEYS[8]
local user, oid, deadline = ARGV[1], ARGV[2], tonumber(ARGV[3])
if not deadline then return redis.error_reply('deadline must be unix ms') end
deadline = string.format('%d', deadline)
if redis.call('EXISTS', stock) == 0 or redis.call('EXISTS', meta) == 0 then return { 'not_loaded' } end
local orid, hrid = 'o:' .. oid, 'h:' .. user
local state, price = sale_state(meta, now_ms())

local done = redis.call('HGET', res, orid)
if done then
  local _, c = parse_entry(done)
  local at = tonumber(redis.call('ZSCORE', exp, orid)) or redis.call('PEXPIRETIME', order_key)
  return { 'ok', c, price, at }
end
-- A line key without a line: a fence (return_to_cart.lua), never a line's own TTL key (which
-- lives only with its ledger entry).
if redis.call('EXISTS', order_key) == 1 then return { 'fenced' } end
local h = redis.call('HGET', res, hrid)
if not h then return { 'no_hold' } end
local _, c, list = parse_entry(h)
-- Outside its sale window a sale product cannot be bought, whatever the hold: its units go back.
if state == 'inactive' then
  return { 'sale_not_active', release_entry(stock, KEYS[3], res, exp, hrid, h, hold_key) }
end
if not line_fits(c, price) then return { 'too_large', c, price } end

local hold_at = tonumber(redis.call('ZSCORE', exp, hrid)) or redis.call('PEXPIRETIME', hold_key)

redis.call('HDEL', res, hrid)
redis.call('ZREM', exp, hrid)
redis.call('DEL', hold_key)
redis.call('HINCRBY', stock, 'held', -c)
redis.call('HINCRBY', stock, 'reserved', c)
redis.call('HSET', res, orid, format_entry(user, c, list))
redis.call('SET', order_key, c, 'PXAT', deadline)
redis.call('ZADD', exp, deadline, orid)
if hold_at > 0 then redis.call('SET', saved, string.format('%d', hold_at), 'PXAT', deadline) end
return { 'ok', c, price, tonumber(deadline) }
