-- load_sku.lua: load a sku's catalog entry and stock from MySQL into Redis, each only if missing
-- (a counter that exists is never overwritten: it knows more than MySQL does). The warehouses
-- and the buyers were staged before, in bounded chunks (stage_hash.lua); this moves them into
-- place and writes the stock hash last: its existence is what "loaded" means, so a load that
-- stopped half-way is never mistaken for a complete one.
-- KEYS: 1 meta, 2 stock, 3 users, 4 staged warehouses (w<id> = on_hand), 5 staged buyers
--       (customer = units bought: the per-customer limit's memory)
-- ARGV: 1 m = meta field/value pairs (a handful), 2 staged ('1': keys 4 and 5 hold the
--       complete lists; '0': nothing staged, enough while the stock is loaded), 3 warehouses
--       staged, 4 buyers staged, 5 available units (sum of on_hand), 6 units sold so far
--       (written back), then the 2m meta values
-- Returns: {meta loaded (0|1), stock loaded (0|1)} | {'stage'} (the stock is missing and
--          nothing was staged: stage and call again) | {'incomplete'} (a staged list is short:
--          its key expired; nothing was written)
local meta, stock, users, st_stock, st_users = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local m, staged = tonumber(ARGV[1]), ARGV[2] == '1'
local n_w, n_users, avail, sold_total = tonumber(ARGV[3]), tonumber(ARGV[4]), ARGV[5], ARGV[6]
if m > 16 then return redis.error_reply('at most 16 meta pairs') end

-- Validate first ...
local need_stock = redis.call('EXISTS', stock) == 0
if need_stock then
  if not staged then return { 'stage' } end
  if redis.call('HLEN', st_stock) ~= n_w or redis.call('HLEN', st_users) ~= n_users then
    return { 'incomplete' }
  end
end

-- ... write last.
local loaded_meta, loaded_stock = 0, 0
if redis.call('EXISTS', meta) == 0 and m > 0 then
  local args = {}
  for i = 7, 6 + 2 * m do args[#args + 1] = ARGV[i] end
  redis.call('HSET', meta, unpack(args))
  loaded_meta = 1
end
if need_stock then
  if n_users > 0 then redis.call('RENAME', st_users, users) else redis.call('DEL', users) end
  if n_w > 0 then redis.call('RENAME', st_stock, stock) end
  redis.call('PERSIST', stock)
  -- 'gen' tells these counters from those of an earlier load (adjust_stock.lua's undo).
  local t = redis.call('TIME')
  redis.call('HSET', stock, 'avail', avail, 'held', 0, 'reserved', 0, 'sold', 0,
    'sold_total', sold_total, 'gen', t[1] .. string.format('%06d', tonumber(t[2])))
  redis.call('PERSIST', users)
  loaded_stock = 1
  live_changed(stock, tonumber(avail))
else
  redis.call('DEL', st_stock, st_users)
end
return { loaded_meta, loaded_stock }
