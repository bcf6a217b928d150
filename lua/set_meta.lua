-- set_meta.lua: replace a sku's catalog entry (name, price, sale) after MySQL committed it.
-- KEYS: 1 meta
-- ARGV: field/value pairs
-- Returns: 1
redis.call('DEL', KEYS[1])
redis.call('HSET', KEYS[1], unpack(ARGV))
return 1
