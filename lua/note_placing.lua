-- note_placing.lua: an order is about to be placed: what its request will send, so that anyone
-- can hand its lines back should the request's process die (src/service/orders.rs, `place`).
-- The placement's start is this call's time, which the caller takes as the order's start.
-- KEYS: 1 the partition's placements (zset order id -> when the sweeper settles it, unix ms),
--       2 the partition's placement lines (hash order id -> `<user_id>|<sku>:<c>,...`)
-- ARGV: 1 order id, 2 the lines, 3 ms after now that the sweeper settles it
-- Returns: {now (unix ms), the lines an earlier note of this order named ('' if none)}
local due, lines = KEYS[1], KEYS[2]
local id, window = ARGV[1], tonumber(ARGV[3])
if not tonumber(id) or not window or window < 0 then
  return redis.error_reply('order id and window ms must be numbers')
end
local now = now_ms()
local before = redis.call('HGET', lines, id) or ''
redis.call('HSET', lines, id, ARGV[2])
redis.call('ZADD', due, string.format('%d', now + window), id)
return { now, before }
