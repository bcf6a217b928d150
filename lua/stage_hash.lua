-- stage_hash.lua: one chunk of a hash being loaded from MySQL (a sku's warehouses or its
-- buyers), written into a staging key that load_sku.lua moves into place once complete. A
-- loader that dies leaves only a staging key, which expires.
-- KEYS: 1 the staging hash (<base>load:<token>:stock or :users, the sku's slot)
-- ARGV: 1 its lifetime (ms, renewed by every chunk), then at most 2,000 field/value pairs
-- Returns: the staging hash's field count
local key, ttl = KEYS[1], tonumber(ARGV[1])
if not ttl or ttl <= 0 then return redis.error_reply('lifetime must be positive') end
if #ARGV < 3 or #ARGV % 2 == 0 or #ARGV > 4001 then
  return redis.error_reply('1..2000 field/value pairs expected')
end
redis.call('HSET', key, unpack(ARGV, 2))
redis.call('PEXPIRE', key, ttl)
return redis.call('HLEN', key)
