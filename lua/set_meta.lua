-- set_meta.lua: replace a sku's catalog entry (name, price, sale) with what MySQL holds.
-- A change's own call ('change') carries its token: once the change is given up (its MySQL
-- transaction rolled back after the call's reply was lost, the call perhaps still on its way),
-- the entry MySQL holds is put back by a 'fence' call with the same token, which marks the token
-- dead for FENCE_MS. The late call then finds its fence and does nothing, whichever of the two
-- Redis runs first. 'put' writes unconditionally (rebuild, a commit whose reply was lost).
-- KEYS: 1 meta, 2 the change's fence key (same slot)
-- ARGV: 1 'change' | 'fence' | 'put', 2 fence lifetime ms ('fence'), then field/value pairs
-- Returns: 1 (written) | 0 ('change' whose token was fenced: nothing written)
local meta, fence, mode = KEYS[1], KEYS[2], ARGV[1]
if mode == 'change' then
  if redis.call('EXISTS', fence) == 1 then return 0 end
elseif mode == 'fence' then
  redis.call('SET', fence, '1', 'PX', tonumber(ARGV[2]))
elseif mode ~= 'put' then
  return redis.error_reply('unknown mode ' .. tostring(mode))
end
redis.call('DEL', meta)
redis.call('HSET', meta, unpack(ARGV, 3))
return 1
