-- adjust_stock.lua: an admin adds (delta > 0) or removes (delta < 0) units of one warehouse, in
-- two steps around MySQL's COMMIT, so that at no instant Redis can sell a unit MySQL may not
-- have. 'pend', before the commit, records the change as pending with the sku and takes a
-- removal's units out at once (an addition's stay out); once MySQL's outcome is known, 'commit'
-- puts an addition's units in (a removal's are out already) and 'undo' gives a removal's units
-- back (an addition's were never in). Only available units can be removed: held, reserved and
-- sold units are spoken for.
-- A change is pending while its member `<token>|<warehouse>|<delta>` is in the sku's pending
-- set, scored by when the sweeper settles it from MySQL's token row should nobody else (the
-- process that made it gone); 'commit' and 'undo' take it out, so each happens at most once.
-- The token key says how the change stands ('pending:<gen>' / 'applied:<gen>' / 'undone'), so
-- a repeated call does nothing and a change taken back before its own 'pend' arrived (its
-- answer lost, the call still on its way) never happens. `gen` names the counters the change
-- was made on (the stock hash's 'gen', set by load_sku.lua): counters loaded since
-- (rebuild-cache, under the product's row lock, so after the change's transaction ended) were
-- read from MySQL, which holds the change or not on its own: they are left alone.
-- KEYS: 1 stock, 2 the change's token key (kept for a day), 3 the sku's pending set (zset)
-- ARGV: 1 warehouse_id, 2 delta, 3 'pend' | 'commit' | 'undo',
--       4 ('pend' only) when the sweeper settles the change if nobody did (unix ms)
-- Returns: {'ok', available in that warehouse, available in all} (the counters as they are now;
--          after 'pend' of an addition: without it) | {'short', available there} ('pend' of a
--          removal of more than is available: nothing done) | {'not_loaded'} (no counters;
--          'commit' and 'undo' settle the change all the same: the next load reads MySQL)
--        | {'same'} (settled before, or never pending; 'pend': the token was used before)
local stock, token, pending = KEYS[1], KEYS[2], KEYS[3]
local w, mode = ARGV[1], ARGV[3]
local d = tonumber(ARGV[2])
if mode ~= 'pend' and mode ~= 'commit' and mode ~= 'undo' then
  return redis.error_reply('unknown mode ' .. tostring(mode))
end
if not d or d == 0 or d ~= math.floor(d) then return redis.error_reply('bad delta') end
local f = 'w' .. w
local member = string.sub(token, -16) .. '|' .. w .. '|' .. ARGV[2]
local loaded = redis.call('EXISTS', stock) == 1
local gen = redis.call('HGET', stock, 'gen') or ''
local seen = redis.call('GET', token)

local function counters()
  return { 'ok', tonumber(redis.call('HGET', stock, f) or '0'),
    tonumber(redis.call('HGET', stock, 'avail') or '0') }
end

if mode == 'pend' then
  local at = tonumber(ARGV[4])
  if not at then return redis.error_reply('bad settle time') end
  if not loaded then return { 'not_loaded' } end
  if seen then return { 'same' } end
  local cur = tonumber(redis.call('HGET', stock, f) or '0')
  if d < 0 and cur + d < 0 then return { 'short', cur } end
  -- Validated: write.
  redis.call('ZADD', pending, string.format('%d', at), member)
  if d > 0 then
    redis.call('SET', token, 'pending:' .. gen, 'EX', 86400)
    return counters()
  end
  local now_there = redis.call('HINCRBY', stock, f, d)
  local avail = redis.call('HINCRBY', stock, 'avail', d)
  redis.call('SET', token, 'applied:' .. gen, 'EX', 86400)
  live_changed(stock, avail)
  return { 'ok', now_there, avail }
end

-- 'commit' / 'undo': MySQL's outcome is known.
if not redis.call('ZSCORE', pending, member) then
  -- Its 'pend' never ran: it must never run now.
  if mode == 'undo' and not seen then redis.call('SET', token, 'undone', 'EX', 86400) end
  return { 'same' }
end
-- The counters 'pend' saw ('pending:<gen>' / 'applied:<gen>'); nil if the token key is gone.
local was = seen and string.match(seen, '^%a+:(%d*)$')
local here_now = loaded and was == gen
-- Validated: write.
redis.call('ZREM', pending, member)
if mode == 'commit' then
  if d > 0 then
    redis.call('SET', token, 'applied:' .. (was or ''), 'EX', 86400)
    if here_now then
      redis.call('HINCRBY', stock, f, d)
      live_changed(stock, redis.call('HINCRBY', stock, 'avail', d))
    end
  end
else
  redis.call('SET', token, 'undone', 'EX', 86400)
  if d < 0 and here_now then
    redis.call('HINCRBY', stock, f, -d)
    live_changed(stock, redis.call('HINCRBY', stock, 'avail', -d))
  end
end
if not loaded then return { 'not_loaded' } end
return counters()
