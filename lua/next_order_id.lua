-- next_order_id.lua: hand out the next order id, unless the counter is missing: then Redis
-- lost its data (flush, restart without persistence) since the counter was raised, and
-- counting from 1 again would repeat ids MySQL already holds. The caller raises the counter
-- from MySQL (raise_seq.lua) and asks again; no id is handed out until then.
-- KEYS: 1 the counter
-- Returns: {'ok', id} | {'lost'}
if redis.call('EXISTS', KEYS[1]) == 0 then return { 'lost' } end
return { 'ok', redis.call('INCR', KEYS[1]) }
