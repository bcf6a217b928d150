-- sweep.lua: give back the units of expired cart holds of one sku; list its due order lines.
-- KEYS: 1 stock, 2 users, 3 res, 4 exp
-- ARGV: 1 how many due entries to look at
-- Returns: {units released, {order_id, ...}}: the orders whose payment deadline passed; the
-- caller asks each order's record (decide_order.lua 'expire') and then commits or releases.
-- TTL keys are named from the stock key, in the same slot.
local stock, users, res, exp = KEYS[1], KEYS[2], KEYS[3], KEYS[4]
local base = key_base(stock)
local due = redis.call('ZRANGEBYSCORE', exp, '-inf', string.format('%d', now_ms()), 'LIMIT', 0, tonumber(ARGV[1]))
local released, orders = 0, {}
for _, rid in ipairs(due) do
  if string.sub(rid, 1, 2) == 'h:' then
    if redis.call('EXISTS', base .. rid) == 0 then
      local v = redis.call('HGET', res, rid)
      if v then
        released = released + release_entry(stock, users, res, exp, rid, v, base .. rid)
      else
        redis.call('ZREM', exp, rid)
      end
    end
  else
    orders[#orders + 1] = string.sub(rid, 3)
  end
end
return { released, orders }
