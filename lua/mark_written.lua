-- mark_written.lua: the write-back lowered MySQL's on_hand by a paid order line: its units
-- leave the `sold` bucket (sold, not yet written back). Idempotent per order line.
-- KEYS: 1 stock, 2 sold ledger
-- ARGV: 1 rid ('o:<order_id>')
-- Returns: units moved out of `sold` (0: done before)
local v = redis.call('HGET', KEYS[2], ARGV[1])
if not v then return 0 end
local _, c = parse_entry(v)
redis.call('HDEL', KEYS[2], ARGV[1])
redis.call('HINCRBY', KEYS[1], 'sold', -c)
return c
