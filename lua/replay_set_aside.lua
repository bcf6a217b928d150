-- replay_set_aside.lua: an operator replays a set-aside event: it goes back into its
-- partition's outbox (the writer then writes it like any other) and leaves the set-aside
-- stream, in one atomic step, so replaying twice or concurrently replays it once.
-- KEYS: 1 the partition's set-aside stream, 2 the partition's outbox stream
-- ARGV: 1 the set-aside entry id
-- Returns: {'ok', new outbox stream id} | {'gone'} (no such entry: replayed before)
--        | {'empty'} (the entry holds no event to replay; it stays)
local dead, outbox, id = KEYS[1], KEYS[2], ARGV[1]
local found = redis.call('XRANGE', dead, id, id)
if #found == 0 then return { 'gone' } end
local fields = found[1][2]
local args, orig, has_orig = {}, nil, false
for i = 1, #fields, 2 do
  local k = fields[i]
  if string.sub(k, 1, 2) == 'f:' then
    local name = string.sub(k, 3)
    if name == 'replay_of' then has_orig = true end
    args[#args + 1] = name
    args[#args + 1] = fields[i + 1]
  elseif k == 'stream_id' then
    orig = fields[i + 1]
  end
end
if #args == 0 then return { 'empty' } end
-- The event keeps its first stream id: its event_id and time stay those of the decision.
if not has_orig and orig then
  args[#args + 1] = 'replay_of'
  args[#args + 1] = orig
end
local new_id = redis.call('XADD', outbox, '*', unpack(args))
redis.call('XDEL', dead, id)
return { 'ok', new_id }
