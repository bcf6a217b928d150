-- set_aside.lua: take an outbox event that can never be written (unparseable, or its order id
-- belongs to another order in MySQL) out of the partition's outbox into the partition's
-- set-aside stream, whole, in one atomic step: copied (fields prefixed 'f:'), acknowledged,
-- deleted. Nothing is lost and nothing is set aside twice (a second call finds it gone).
-- KEYS: 1 the partition's outbox stream, 2 the partition's set-aside stream
-- ARGV: 1 the event's stream id, 2 consumer group, 3 reason ('unparseable' | 'collision'),
--       4 error message
-- Returns: {'ok', set-aside entry id} | {'gone'} (not in the outbox any more: handled before)
local outbox, dead, id = KEYS[1], KEYS[2], ARGV[1]
local found = redis.call('XRANGE', outbox, id, id)
if #found == 0 then
  redis.call('XACK', outbox, ARGV[2], id)
  return { 'gone' }
end
-- An event is decide_order.lua's snapshot of one order record: a few dozen fields at most.
local fields = found[1][2]
local args = { 'reason', ARGV[3], 'error', ARGV[4], 'stream_id', id,
  'set_aside_at', string.format('%d', now_ms()) }
for i = 1, #fields, 2 do
  args[#args + 1] = 'f:' .. fields[i]
  args[#args + 1] = fields[i + 1]
end
local entry = redis.call('XADD', dead, '*', unpack(args))
redis.call('XACK', outbox, ARGV[2], id)
redis.call('XDEL', outbox, id)
return { 'ok', entry }
