-- decide_order.lua: the one place where an order's fate is decided; exactly one of pay, cancel
-- and expire wins. Once the payment window has passed, expiry wins over everything.
-- Every move appends an event to the order partition's outbox stream, in the same atomic step:
-- type (created | failed | paid | cancelled | expired) and a snapshot of the record.
-- KEYS: 1 the order record, 2 the partition's outbox stream
-- ARGV: 1 action: 'activate' | 'fail' | 'pay' | 'cancel' | 'expire'
--       2 activate/fail: items (JSON); pay: payment reference ('' for none)
--       3 activate/fail: total price
-- Returns: {'ok', status} (this call moved it) | {'same', status} (already there, or nothing due)
--        | {'reject', status} (not allowed from status) | {'missing'}
local key, outbox, action = KEYS[1], KEYS[2], ARGV[1]
local known = { activate = true, fail = true, pay = true, cancel = true, expire = true }
if not known[action] then return redis.error_reply('unknown action ' .. tostring(action)) end
if redis.call('EXISTS', key) == 0 then return { 'missing' } end

local function emit(kind)
  local snap = redis.call('HGETALL', key)
  redis.call('XADD', outbox, '*', 'type', kind, 'order_id', string.match(key, '(%d+)$'), unpack(snap))
end
local now = now_ms()
local r = redis.call('HMGET', key, 'status', 'expires_at')
local st, expires = r[1], tonumber(r[2])
local ts = string.format('%d', now)

if (st == 'new' or st == 'awaiting_payment') and now >= expires then
  redis.call('HSET', key, 'status', 'cancelled', 'cancel_reason', 'expired', 'cancelled_at', ts)
  emit('expired')
  if action == 'expire' then return { 'ok', 'cancelled' } end
  st = 'cancelled'
end

if action == 'activate' or action == 'fail' then
  if st ~= 'new' then return { 'reject', st } end
  if action == 'activate' then
    redis.call('HSET', key, 'status', 'awaiting_payment', 'items', ARGV[2], 'total', ARGV[3])
    emit('created')
    return { 'ok', 'awaiting_payment' }
  end
  redis.call('HSET', key, 'status', 'failed', 'cancel_reason', 'failed', 'cancelled_at', ts,
    'items', ARGV[2], 'total', ARGV[3])
  emit('failed')
  return { 'ok', 'failed' }
elseif action == 'pay' then
  if st == 'paid' then return { 'same', st } end
  if st ~= 'awaiting_payment' then return { 'reject', st } end
  redis.call('HSET', key, 'status', 'paid', 'paid_at', ts, 'payment_ref', ARGV[2] or '')
  emit('paid')
  return { 'ok', 'paid' }
elseif action == 'cancel' then
  if st == 'cancelled' then return { 'same', st } end
  if st == 'paid' or st == 'failed' then return { 'reject', st } end
  redis.call('HSET', key, 'status', 'cancelled', 'cancel_reason', 'customer', 'cancelled_at', ts)
  emit('cancelled')
  return { 'ok', 'cancelled' }
elseif action == 'expire' then
  return { 'same', st }
end
return redis.error_reply('unknown action ' .. tostring(action))
