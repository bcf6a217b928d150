-- adjust_stock.lua: an admin adds (delta > 0) or removes (delta < 0) units of one warehouse,
-- or takes such a change back. Only available units can be removed: held, reserved and sold
-- units are spoken for. Each change has a token key of its own that says whether it was
-- applied or taken back, so a call whose answer was lost can be repeated safely, and an undo
-- never takes back a change that never happened (nor lets it happen after the undo). The token
-- names the counters it was applied to (the stock hash's 'gen', set by load_sku.lua): counters
-- loaded again since (rebuild-cache) were read from MySQL, which holds the change or not on its
-- own, so an undo leaves them alone.
-- KEYS: 1 stock, 2 the change's token key (kept for a day)
-- ARGV: 1 warehouse_id, 2 delta, 3 'apply' | 'undo'
-- Returns: {'ok', available in that warehouse, available in all} | {'short', available there}
--        | {'not_loaded'} | {'same'} (applied or taken back before; undo of a change never applied)
local stock, token, mode = KEYS[1], KEYS[2], ARGV[3]
if mode ~= 'apply' and mode ~= 'undo' then return redis.error_reply('unknown mode ' .. tostring(mode)) end
if redis.call('EXISTS', stock) == 0 then return { 'not_loaded' } end
local f, d = 'w' .. ARGV[1], tonumber(ARGV[2])
local seen = redis.call('GET', token)
local applied = 'applied:' .. (redis.call('HGET', stock, 'gen') or '')
if mode == 'apply' then
  if seen then return { 'same' } end
else
  -- 'applied' alone: a token from before generations, taken as applied to these counters.
  if seen ~= applied and seen ~= 'applied' then
    if not seen then redis.call('SET', token, 'undone', 'EX', 86400) end
    return { 'same' }
  end
  d = -d
end
local cur = tonumber(redis.call('HGET', stock, f) or '0')
if cur + d < 0 then return { 'short', cur } end
local now_there = redis.call('HINCRBY', stock, f, d)
local avail = redis.call('HINCRBY', stock, 'avail', d)
redis.call('SET', token, mode == 'apply' and applied or 'undone', 'EX', 86400)
live_changed(stock, avail)
return { 'ok', now_there, avail }
