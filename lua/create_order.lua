-- create_order.lua: record a new order (status 'new') before any of its lines is reserved.
-- KEYS: 1 the order record
-- ARGV: 1 user_id, 2 payment window (ms), 3 items (JSON, as requested), 4 total price
-- Returns: {'ok'|'exists', created_at_ms, expires_at_ms}
local key = KEYS[1]
if redis.call('EXISTS', key) == 1 then
  local r = redis.call('HMGET', key, 'created_at', 'expires_at')
  return { 'exists', tonumber(r[1]), tonumber(r[2]) }
end
local now = now_ms()
local expires = now + tonumber(ARGV[2])
redis.call('HSET', key, 'user', ARGV[1], 'status', 'new', 'created_at', string.format('%d', now),
  'expires_at', string.format('%d', expires), 'items', ARGV[3], 'total', ARGV[4])
return { 'ok', now, expires }
