-- sweep.lua: give back the units of expired cart holds of one sku; list its due order lines.
-- KEYS: 1 stock, 2 users, 3 res, 4 exp
-- ARGV: 1 how many due entries to look at (a bounded batch: the caller loops),
--       2 how many due entries to skip first (ones the caller could not settle in this pass)
-- Returns: {units released, {order_id, ...}, due entries looked at, holds left in place}: the
-- orders are those whose payment deadline passed; the caller asks each order's record
-- (decide_order.lua 'expire') and then commits or releases. A due hold whose TTL key still
-- exists is left in place (counted, so that the caller can skip it). An index entry without a
-- ledger entry (nothing held) is dropped.
-- TTL keys are named from the stock key, in the same slot.
local stock, users, res, exp = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local limit, skip = tonumber(ARGV[1]), tonumber(ARGV[2] or '0')
if not limit or limit <= 0 or not skip or skip < 0 then
  return redis.error_reply('sweep: bad batch size or offset')
end
local base = key_base(stock)
local due = redis.call('ZRANGEBYSCORE', exp, '-inf', string.format('%d', now_ms()), 'LIMIT', skip, limit)
local released, orders, kept = 0, {}, 0
for _, rid in ipairs(due) do
  if string.sub(rid, 1, 2) == 'h:' then
    if redis.call('EXISTS', base .. rid) == 0 then
      local v = redis.call('HGET', res, rid)
      if v then
        released = released + release_entry(stock, users, res, exp, rid, v, base .. rid)
      else
        redis.call('ZREM', exp, rid)
      end
    else
      kept = kept + 1
    end
  elseif redis.call('HEXISTS', res, rid) == 1 then
    orders[#orders + 1] = string.sub(rid, 3)
  else
    redis.call('ZREM', exp, rid) -- an index entry without a ledger entry holds nothing
  end
end
return { released, orders, #due, kept }
