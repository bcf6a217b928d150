-- adjust_stock.lua: an admin adds (delta > 0) or removes (delta < 0) units of one warehouse.
-- Only available units can be removed: held, reserved and sold units are spoken for.
-- KEYS: 1 stock
-- ARGV: 1 warehouse_id, 2 delta
-- Returns: {'ok', available in that warehouse, available in all} | {'short', available there}
--        | {'not_loaded'}
local stock = KEYS[1]
if redis.call('EXISTS', stock) == 0 then return { 'not_loaded' } end
local f, d = 'w' .. ARGV[1], tonumber(ARGV[2])
local cur = tonumber(redis.call('HGET', stock, f) or '0')
if cur + d < 0 then return { 'short', cur } end
local now_there = redis.call('HINCRBY', stock, f, d)
local avail = redis.call('HINCRBY', stock, 'avail', d)
live_changed(stock, avail)
return { 'ok', now_there, avail }
