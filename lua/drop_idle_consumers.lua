-- drop_idle_consumers.lua: delete the consumers of a stream's group that hold no pending entry
-- and have been idle for long: instances gone (an instance's name changes at every start), which
-- would otherwise pile up for ever. Checked and deleted in one atomic step: XGROUP DELCONSUMER
-- drops a consumer's pending entries with it (they would never be delivered again), so a
-- consumer that holds one, or reads one meanwhile, is never deleted.
-- KEYS: 1 the stream
-- ARGV: 1 group, 2 least idle time in ms, 3 a consumer never deleted (the caller's), 4 most to
--       delete in this call
-- Returns: the names deleted ({} also when the stream or the group does not exist)
if redis.call('EXISTS', KEYS[1]) == 0 then
  return {}
end
local consumers = redis.pcall('XINFO', 'CONSUMERS', KEYS[1], ARGV[1])
if type(consumers) == 'table' and consumers.err then
  -- NOGROUP: nothing to tidy.
  return {}
end
local min_idle, most = tonumber(ARGV[2]), tonumber(ARGV[4])
local dropped = {}
for _, c in ipairs(consumers) do
  if #dropped >= most then
    break
  end
  local f = {}
  for i = 1, #c, 2 do
    f[c[i]] = c[i + 1]
  end
  if f.name ~= ARGV[3] and tonumber(f.pending) == 0 and tonumber(f.idle) >= min_idle then
    redis.call('XGROUP', 'DELCONSUMER', KEYS[1], ARGV[1], f.name)
    dropped[#dropped + 1] = f.name
  end
end
return dropped
