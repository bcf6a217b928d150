-- settle_idempotency.lua: what the holder of an Idempotency-Key lease does with it.
-- KEYS: 1 the record (see claim_idempotency.lua)
-- ARGV: 1 owner, 2 action:
--         'renew'   ARGV 3 lease ms: the lease runs ARGV[3] ms from now
--         'bind'    ARGV 3 order id: the order this request is creating (a retry after the
--                   holder vanished resumes it instead of making another)
--         'answer'  ARGV 3 status, 4 body, 5 seconds kept: the final answer; the lease ends
--         'release' the lease ends without an answer; the record goes unless an order is bound
-- Returns: 1 done | 0 the lease is not this owner's (ran out and was taken, or answered):
--          nothing changed
local key, owner, action = KEYS[1], ARGV[1], ARGV[2]
local r = redis.call('HMGET', key, 'owner', 'status', 'order')
if r[1] ~= owner or r[2] then return 0 end
if action == 'renew' then
  local lease = tonumber(ARGV[3])
  if not lease or lease < 1 then return redis.error_reply('lease must be positive') end
  redis.call('HSET', key, 'until', string.format('%d', now_ms() + lease))
elseif action == 'bind' then
  if not tonumber(ARGV[3]) then return redis.error_reply('order id must be a number') end
  redis.call('HSET', key, 'order', ARGV[3])
elseif action == 'answer' then
  local keep = tonumber(ARGV[5])
  if not tonumber(ARGV[3]) or not keep or keep < 1 then
    return redis.error_reply('status and keep must be numbers')
  end
  redis.call('HSET', key, 'status', ARGV[3], 'body', ARGV[4])
  redis.call('HDEL', key, 'owner', 'until')
  redis.call('EXPIRE', key, keep)
elseif action == 'release' then
  if r[3] then
    redis.call('HDEL', key, 'owner', 'until')
  else
    redis.call('DEL', key)
  end
else
  return redis.error_reply('unknown action ' .. tostring(action))
end
return 1
