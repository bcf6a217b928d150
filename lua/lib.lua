-- lib.lua: helpers prepended to every script of this folder (see src/store/redis/scripts.rs).
--
-- Per-sku keys (all share the hash tag {sku:<n>}, so one script touches one slot):
--   <base>meta    hash  name, price, and when a sale is set: sale_price, sale_start, sale_end (unix ms), limit (0 = none)
--   <base>metafence:<token>  a catalog change given up: its late set_meta.lua call writes nothing
--   <base>stock   hash  w<warehouse_id> = available units there; avail (sum of w*), held, reserved,
--                       sold (sold, not yet written back to MySQL), sold_total
--   <base>users   hash  user_id = units held + reserved + bought by that customer (the per-customer limit)
--   <base>res     hash  the reservation ledger: h:<user_id> (cart hold) or o:<order_id> (order line)
--                       = "<user_id>|<count>|<alloc>", alloc = "<warehouse_id>:<units>,..." in taking order
--   <base>exp     zset  reservation id -> deadline (unix ms): the sweeper's index
--   <base>sold    hash  o:<order_id> = entry: paid lines not yet written back to MySQL's on_hand
--   <base>h:<user_id>, <base>o:<order_id>   the reservation's TTL key (value = count), gone at its deadline
-- The ledger outlives the TTL key on purpose: the units of an expired reservation stay accounted
-- for until a script gives them back (the sweeper, or the next touch of that reservation).

-- Bounds of what one reservation and one order may hold (src/domain/order.rs has the same):
-- units in one reservation (a cart line grows by adds), and a line's or order's total price,
-- kept at most 2^53 - 1 so it is an exact integer in Lua's doubles, in JSON clients and in
-- MySQL's BIGINT UNSIGNED.
local MAX_LINE_UNITS = 65535
local MAX_TOTAL = 9007199254740991

-- Whether `units` at `price` stay within the bounds above (the product is compared as a
-- double: rounding is monotonic, so the comparison with 2^53 - 1 is exact).
local function line_fits(units, price)
  return units <= MAX_LINE_UNITS and units * price <= MAX_TOTAL
end

-- Live stock: a script that changes a sku's `avail` notes it with live_changed(stock, new avail);
-- after the script's body has run, the wrapper (src/store/redis/scripts.rs) calls live_publish(),
-- which SPUBLISHes "<sku> <avail>" once on the sku's own sharded channel "<base>live" (Redis 7
-- sharded pub/sub: the channel shares the stock key's hash tag, so it lives in the script's
-- slot, which a script run under the shebang must keep to; on a cluster the message stays on
-- the sku's shard instead of being broadcast to every node). One message per script call,
-- whatever the number of changes in it. Only a key of the sku layout publishes: a script whose
-- noted key is anything else (none is) announces nothing.
-- With nothing available, "<sku> <avail> <sold out for>": how long that holds at most (for the
-- in-process sold-out answer, src/service/sold_out.rs), ms from now until the sku's earliest
-- reservation deadline (a cart hold past it, not given back yet, is its owner's to take again),
-- or 'none' (no reservation to lapse). The deadline index is the stock key's sibling, in its slot.
local live_stock_key, live_avail = nil, nil

local function live_changed(stock, avail)
  live_stock_key, live_avail = stock, avail
end

local function live_publish()
  if not live_stock_key then return end
  local base, sku = string.match(live_stock_key, '^(.*:{sku:(%d+)}:)stock$')
  if base then
    local msg = sku .. ' ' .. string.format('%d', live_avail)
    if live_avail <= 0 then
      local first = redis.call('ZRANGE', base .. 'exp', 0, 0, 'WITHSCORES')
      if #first == 0 then
        msg = msg .. ' none'
      else
        local t = redis.call('TIME')
        local now = tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
        msg = msg .. ' ' .. string.format('%d', tonumber(first[2]) - now)
      end
    end
    redis.call('SPUBLISH', base .. 'live', msg)
  end
end

local function now_ms()
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000 + math.floor(tonumber(t[2]) / 1000)
end

-- "<user>|<count>|<alloc>" -> user, count, alloc list {{wid, n}, ...}
local function parse_entry(v)
  local user, count, alloc = string.match(v, '^(%d+)|(%d+)|(.*)$')
  local list = {}
  for wid, n in string.gmatch(alloc, '(%d+):(%d+)') do
    list[#list + 1] = { tonumber(wid), tonumber(n) }
  end
  return user, tonumber(count), list
end

local function format_entry(user, count, list)
  local parts = {}
  for i, a in ipairs(list) do
    parts[i] = a[1] .. ':' .. a[2]
  end
  return user .. '|' .. count .. '|' .. table.concat(parts, ',')
end

-- Takes n units from the warehouses in ascending id order (caller checked avail >= n) into
-- bucket ('held' or 'reserved'); records them in the alloc list.
local function take_units(stock, n, bucket, list)
  local flat = redis.call('HGETALL', stock)
  local ws = {}
  for i = 1, #flat, 2 do
    local f = flat[i]
    if string.byte(f, 1) == 119 then -- 'w'
      ws[#ws + 1] = { tonumber(string.sub(f, 2)), tonumber(flat[i + 1]) }
    end
  end
  table.sort(ws, function(a, b) return a[1] < b[1] end)
  local left = n
  for _, w in ipairs(ws) do
    if left == 0 then break end
    if w[2] > 0 then
      local t = math.min(w[2], left)
      redis.call('HINCRBY', stock, 'w' .. w[1], -t)
      local merged = false
      for _, a in ipairs(list) do
        if a[1] == w[1] then a[2] = a[2] + t; merged = true end
      end
      if not merged then list[#list + 1] = { w[1], t } end
      left = left - t
    end
  end
  if left ~= 0 then
    return redis.error_reply('stock hash inconsistent: avail above the sum of warehouses')
  end
  if n ~= 0 then live_changed(stock, redis.call('HINCRBY', stock, 'avail', -n)) end
  redis.call('HINCRBY', stock, bucket, n)
end

-- Gives n units of the alloc list back to their warehouses, last taken first; shrinks the list.
local function give_back(stock, n, bucket, list)
  local left = n
  for i = #list, 1, -1 do
    if left == 0 then break end
    local a = list[i]
    local t = math.min(a[2], left)
    redis.call('HINCRBY', stock, 'w' .. a[1], t)
    a[2] = a[2] - t
    left = left - t
    if a[2] == 0 then table.remove(list, i) end
  end
  if n ~= 0 then live_changed(stock, redis.call('HINCRBY', stock, 'avail', n)) end
  redis.call('HINCRBY', stock, bucket, -n)
end

local function bucket_of(rid)
  if string.sub(rid, 1, 2) == 'h:' then return 'held' end
  return 'reserved'
end

-- Releases a whole ledger entry: units back to their warehouses, the customer's count lowered,
-- the TTL key and index entry removed. Returns the units released.
local function release_entry(stock, users, res, exp, rid, v, ttl_key)
  local user, count, list = parse_entry(v)
  give_back(stock, count, bucket_of(rid), list)
  if redis.call('HINCRBY', users, user, -count) <= 0 then redis.call('HDEL', users, user) end
  redis.call('HDEL', res, rid)
  redis.call('ZREM', exp, rid)
  redis.call('DEL', ttl_key)
  return count
end

-- Sale state at `now`: 'none' (no sale set), 'active', or 'inactive'; the unit price, the
-- per-customer limit (0: none) and the product's name.
local function sale_state(meta, now)
  local m = redis.call('HMGET', meta, 'price', 'sale_price', 'sale_start', 'sale_end', 'limit', 'name')
  if not m[3] then return 'none', tonumber(m[1]), 0, m[6] end
  if now >= tonumber(m[3]) and now < tonumber(m[4]) then
    return 'active', tonumber(m[2]), tonumber(m[5] or '0'), m[6]
  end
  return 'inactive', tonumber(m[1]), tonumber(m[5] or '0'), m[6]
end

local function key_base(stock_key)
  return string.sub(stock_key, 1, -6) -- strip 'stock'
end
