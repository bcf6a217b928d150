-- note_account.lua: what a user's tokens are checked against, noted for every instance
-- (src/service/tokens.rs): the account's token version and role, or that it was deleted.
-- KEYS: 1 the user's note (<prefix>:{user:<id>}:account)
-- ARGV: 1 the note: '<version> <role>' or 'gone', 2 how long it is kept, ms (> 0)
-- Returns: 1 noted | 0 kept the note there (the deletion, or the same or a newer version)
-- Versions only go up, so the highest wins in whatever order notes come: a note of what an
-- instance read from MySQL never replaces a newer one written after a change, nor the deletion.
local note, ttl = ARGV[1], tonumber(ARGV[2])
if not ttl or ttl <= 0 then
  return redis.error_reply('ttl must be > 0')
end
if note == 'gone' then
  redis.call('SET', KEYS[1], 'gone', 'PX', ttl)
  return 1
end
local want = tonumber(string.match(note, '^(%d+) %a+$') or '')
if not want then
  return redis.error_reply('malformed note ' .. tostring(note))
end
local cur = redis.call('GET', KEYS[1])
if cur then
  if cur == 'gone' then
    return 0
  end
  local have = tonumber(string.match(cur, '^(%d+) ') or '')
  if have and have >= want then
    return 0
  end
end
redis.call('SET', KEYS[1], note, 'PX', ttl)
return 1
