-- load_sku.lua: load a sku's catalog entry and stock from MySQL into Redis, each only if missing
-- (a counter that exists is never overwritten: it knows more than MySQL does).
-- KEYS: 1 meta, 2 stock
-- ARGV: 1 m = number of meta field/value pairs, then the 2m of them, then warehouse_id/on_hand pairs
-- Returns: {meta loaded (0|1), stock loaded (0|1)}
local meta, stock = KEYS[1], KEYS[2]
local m = tonumber(ARGV[1])
local loaded_meta, loaded_stock = 0, 0
if redis.call('EXISTS', meta) == 0 and m > 0 then
  local args = {}
  for i = 2, 2 * m + 1 do args[#args + 1] = ARGV[i] end
  redis.call('HSET', meta, unpack(args))
  loaded_meta = 1
end
if redis.call('EXISTS', stock) == 0 then
  local args, sum = {}, 0
  for i = 2 * m + 2, #ARGV, 2 do
    args[#args + 1] = 'w' .. ARGV[i]
    args[#args + 1] = ARGV[i + 1]
    sum = sum + tonumber(ARGV[i + 1])
  end
  redis.call('HSET', stock, 'avail', string.format('%d', sum), 'held', 0, 'reserved', 0, 'sold', 0,
    'sold_total', 0, unpack(args))
  loaded_stock = 1
end
return { loaded_meta, loaded_stock }
