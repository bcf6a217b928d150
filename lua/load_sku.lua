-- load_sku.lua: load a sku's catalog entry and stock from MySQL into Redis, each only if missing
-- (a counter that exists is never overwritten: it knows more than MySQL does).
-- KEYS: 1 meta, 2 stock, 3 users
-- ARGV: 1 m = meta field/value pairs, 2 w = warehouse_id/on_hand pairs, 3 units sold so far
--       (written back), then the 2m meta values, the 2w warehouse values, and customer/bought
--       pairs (what each customer bought: the per-customer limit's memory)
-- Returns: {meta loaded (0|1), stock loaded (0|1)}
local meta, stock, users = KEYS[1], KEYS[2], KEYS[3]
local m, w, sold_total = tonumber(ARGV[1]), tonumber(ARGV[2]), ARGV[3]
local loaded_meta, loaded_stock = 0, 0
if redis.call('EXISTS', meta) == 0 and m > 0 then
  local args = {}
  for i = 4, 3 + 2 * m do args[#args + 1] = ARGV[i] end
  redis.call('HSET', meta, unpack(args))
  loaded_meta = 1
end
if redis.call('EXISTS', stock) == 0 then
  local args, sum = {}, 0
  for i = 4 + 2 * m, 3 + 2 * m + 2 * w, 2 do
    args[#args + 1] = 'w' .. ARGV[i]
    args[#args + 1] = ARGV[i + 1]
    sum = sum + tonumber(ARGV[i + 1])
  end
  redis.call('HSET', stock, 'avail', string.format('%d', sum), 'held', 0, 'reserved', 0, 'sold', 0,
    'sold_total', sold_total, unpack(args))
  redis.call('DEL', users)
  local pairs_ = {}
  for i = 4 + 2 * m + 2 * w, #ARGV do pairs_[#pairs_ + 1] = ARGV[i] end
  if #pairs_ > 0 then redis.call('HSET', users, unpack(pairs_)) end
  loaded_stock = 1
  live_changed(stock, sum)
end
return { loaded_meta, loaded_stock }
