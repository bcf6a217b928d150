-- claim_idempotency.lua: a request with an Idempotency-Key asks to run. The record is a short
-- lease while a request works on it, then the stored answer.
-- KEYS: 1 the record (hash: fp = what the request asked, owner + until = the lease (unix ms),
--       status + body = the final answer, order = the order id the holder was creating)
-- ARGV: 1 fingerprint, 2 owner (a random token of the claiming request), 3 lease ms,
--       4 seconds the record is kept
-- Returns: {'claimed', order}   this request runs (order: '' or the order id bound by a holder
--                                whose lease ran out: it vanished mid-way)
--        | {'done', status, body} the answer of the request that ran
--        | {'busy', ms}          another request holds the lease for ms more
--        | {'mismatch'}          the key was used for another request
local key = KEYS[1]
local fp, owner, lease, keep = ARGV[1], ARGV[2], tonumber(ARGV[3]), tonumber(ARGV[4])
if not lease or lease < 1 or not keep or keep < 1 or owner == '' then
  return redis.error_reply('lease and keep must be positive, owner non-empty')
end
local r = redis.call('HMGET', key, 'fp', 'status', 'body', 'owner', 'until', 'order')
local now = now_ms()
if r[1] then
  if r[1] ~= fp then return { 'mismatch' } end
  if r[2] then return { 'done', r[2], r[3] or '' } end
  local until_ms = tonumber(r[5]) or 0
  if r[4] and until_ms > now then return { 'busy', until_ms - now } end
end
redis.call('HSET', key, 'fp', fp, 'owner', owner, 'until', string.format('%d', now + lease))
redis.call('EXPIRE', key, keep)
return { 'claimed', r[6] or '' }
