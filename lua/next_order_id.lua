-- next_order_id.lua: hand out the next order id, unless
--  * the counter is missing: Redis lost its data (flush, restart without persistence) since the
--    counter was raised; the caller raises it from MySQL (raise_seq.lua) and asks again;
--  * the next id is past the caller's block limit (the order id mark MySQL holds: every id
--    handed out must be at or below it); the caller raises the mark in MySQL and asks again;
--  * the next id is at or below the caller's floor (an id this instance saw handed out, or
--    MySQL's largest order id): Redis came back from older persistence; the caller refuses
--    every stock and order script until `flashsale rebuild-cache` ran.
-- Nothing is written unless an id is handed out.
-- KEYS: 1 the counter
-- ARGV: 1 the block limit, 2 the floor
-- Returns: {'ok', id} | {'lost'} | {'block', counter} | {'behind', counter}
local cur = redis.call('GET', KEYS[1])
if not cur then return { 'lost' } end
cur = tonumber(cur)
local limit, floor = tonumber(ARGV[1]), tonumber(ARGV[2])
if cur + 1 <= floor then return { 'behind', cur } end
if cur + 1 > limit then return { 'block', cur } end
return { 'ok', redis.call('INCR', KEYS[1]) }
