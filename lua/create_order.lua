-- create_order.lua: record a new order (status 'new') once its lines are reserved (each line's
-- reservation is keyed by the order id, so a line whose record never comes is given back by
-- the sweeper at the line's deadline, the order's expires_at).
-- KEYS: 1 the order record
-- ARGV: 1 user_id, 2 created_at (unix ms), 3 expires_at (unix ms), 4 items (JSON), 5 total price,
--       6 (optional) the lines' allocation, JSON {"<sku>": "<warehouse_id>:<units>,..."}, as the
--       skus' ledgers hold it ('' or absent: none known). Kept in the record's field `alloc`, so
--       every event of the order carries where its units came from (the write-back's movements
--       need nothing else from Redis).
-- Returns: {'ok'|'exists', created_at_ms, expires_at_ms} | {'late', now}: the lines' deadline
-- has passed, so the sweeper may be giving them back as lines without a record (it does so only
-- after that deadline): no record is written then, and the caller gives the lines back.
local key = KEYS[1]
if redis.call('EXISTS', key) == 1 then
  local r = redis.call('HMGET', key, 'created_at', 'expires_at')
  return { 'exists', tonumber(r[1]), tonumber(r[2]) }
end
local now = now_ms()
if now >= tonumber(ARGV[3]) then return { 'late', now } end
redis.call('HSET', key, 'user', ARGV[1], 'status', 'new', 'created_at', ARGV[2],
  'expires_at', ARGV[3], 'items', ARGV[4], 'total', ARGV[5])
if ARGV[6] and ARGV[6] ~= '' then redis.call('HSET', key, 'alloc', ARGV[6]) end
return { 'ok', tonumber(ARGV[2]), tonumber(ARGV[3]) }
