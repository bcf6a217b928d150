-- fence_order.lua: an order id whose request gave it up before it was recorded (its
-- Idempotency-Key's retry places the order afresh; a checkout failed after taking lines) can
-- never be recorded after this: create_order.lua answers 'exists' to a late holder, which then
-- gives its lines back. The fence is a `failed` record of no items, in no customer's index and
-- without an outbox event (so never in MySQL, never listed), gone after ARGV 2 ms, past any
-- deadline the order's lines could have.
-- KEYS: 1 the order record
-- ARGV: 1 user_id, 2 ms the fence is kept
-- Returns: {'fenced'} | {'exists', status} (the order was recorded: decide its fate instead)
local key = KEYS[1]
local user, keep = ARGV[1], tonumber(ARGV[2])
if not tonumber(user) or not keep or keep < 1 then
  return redis.error_reply('user_id and keep ms must be positive numbers')
end
if redis.call('EXISTS', key) == 1 then
  return { 'exists', redis.call('HGET', key, 'status') or '' }
end
local ts = string.format('%d', now_ms())
redis.call('HSET', key, 'user', user, 'status', 'failed', 'cancel_reason', 'failed',
  'created_at', ts, 'expires_at', ts, 'cancelled_at', ts, 'items', '[]', 'total', '0', 'fenced', '1')
redis.call('PEXPIRE', key, keep)
return { 'fenced' }
