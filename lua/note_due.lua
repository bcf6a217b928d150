-- note_due.lua: tell the sweeper that a sku has a reservation deadline (after a script added
-- one to the sku's `exp`). The due index lives in its own slot ({due}), hence this second call.
-- KEYS: 1 the due index (zset sku -> unix ms), 2 its versions (hash sku -> counter)
-- ARGV: 1 sku, 2 deadline (unix ms)
-- Returns: the sku's version after this note
-- ZADD LT adds a missing sku and only ever lowers a present one: the entry stays at or before
-- the earliest deadline. The version tells a sweeper that read the sku before this note not to
-- raise or drop the entry on what it saw (settle_due.lua).
local deadline = tonumber(ARGV[2])
if not deadline then return redis.error_reply('note_due: bad deadline') end
redis.call('ZADD', KEYS[1], 'LT', string.format('%d', deadline), ARGV[1])
return redis.call('HINCRBY', KEYS[2], ARGV[1], 1)
