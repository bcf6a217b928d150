-- reserve.lua: take units of one sku, for one customer or for several in one call (add to cart,
-- or one line of an order). Entries run one after another, exactly as separate calls would
-- (each sees what the ones before it took); the wrapper announces the sku's `avail` once.
-- KEYS: 1 meta, 2 stock, 3 users, 4 res, 5 exp, then per entry i the reservation's TTL key
--       (<base><rid>) at 5 + i
-- ARGV: 6 per entry i, from 6 * (i - 1) + 1:
--       1 user_id, 2 count (> 0), 3 rid ('h:<user_id>' cart hold | 'o:<order_id>' order line),
--       4 'ttl' (ARGV 5 = ms from now) or 'at' (ARGV 5 = deadline, unix ms),
--       6 'add' (add to a live reservation, which keeps its deadline: a hold's life is bounded
--           from its creation) | 'once' (an existing one is the answer)
--         | 'restore' (as 'once', without the sale window and limit checks: rebuild-cache puts
--           back an order that passed them before Redis lost it)
-- Returns one reply per entry, in order, each:
--          {'ok', units now in the reservation, deadline_ms, unit_price, available after, name
--           [, sold out for]}
--        | {'out_of_stock', available [, sold out for]}
--        | {'limit_exceeded', units the customer has, limit}
--        | {'sale_not_active'} | {'too_large', units the reservation would hold, unit_price}
--          (more than MAX_LINE_UNITS units, or a line total above MAX_TOTAL: lua/lib.lua)
--        | {'not_loaded'}
--        | {'fenced'} ('once' only: the order line was given up by release.lua with a fence before
--          this entry arrived: its request timed out waiting for this very call; nothing changed)
-- A rejection changes nothing. An expired reservation found here (not yet swept) is given back
-- first, in the same step, and its units count as available. Malformed arguments in any entry
-- fail the whole call before anything changed.
-- "sold out for" comes with an answer that leaves no unit available (for the instance's
-- in-process sold-out answer, src/service/sold_out.rs): how long it holds at most, ms from now
-- until the sku's earliest reservation deadline (<= 0: a reservation past its deadline, not
-- given back yet, which its owner may take again now), or 'none' (no reservation to lapse).
local meta, stock, users, res, exp = KEYS[1], KEYS[2], KEYS[3], KEYS[4], KEYS[5]
local entries = #KEYS - 5
if entries < 1 or #ARGV ~= 6 * entries then
  return redis.error_reply('reserve: one TTL key and 6 arguments per entry')
end
for i = 1, entries do
  local a = 6 * (i - 1)
  local n, kind, ms, mode = tonumber(ARGV[a + 2]), ARGV[a + 4], tonumber(ARGV[a + 5]), ARGV[a + 6]
  if not n or n <= 0 then return redis.error_reply('count must be positive') end
  if (kind ~= 'ttl' and kind ~= 'at') or not ms then
    return redis.error_reply("ARGV 4 must be 'ttl' or 'at' and ARGV 5 a number of ms")
  end
  if mode ~= 'add' and mode ~= 'once' and mode ~= 'restore' then
    return redis.error_reply("ARGV 6 must be 'add', 'once' or 'restore'")
  end
end

local function sold_out_for(left)
  if left > 0 then return nil end
  local first = redis.call('ZRANGE', exp, 0, 0, 'WITHSCORES')
  if #first == 0 then return 'none' end
  return tonumber(first[2]) - now_ms()
end

local function reserve_one(ttl_key, user, n, rid, kind, ms, mode)
  local avail = redis.call('HGET', stock, 'avail')
  if not avail or redis.call('EXISTS', meta) == 0 then return { 'not_loaded' } end
  avail = tonumber(avail)

  local cur = redis.call('HGET', res, rid)
  -- An order line's TTL key without its ledger entry is a fence (release.lua): given up.
  if not cur and mode == 'once' and redis.call('EXISTS', ttl_key) == 1 then return { 'fenced' } end
  -- Sold-out fast path: nothing to give back, nothing to take.
  if not cur and avail < n then return { 'out_of_stock', avail, sold_out_for(avail) } end

  local now = now_ms()
  local state, price, limit, name = sale_state(meta, now)
  local live_count, list, expired = 0, {}, 0
  if cur then
    local _, c, l = parse_entry(cur)
    if redis.call('EXISTS', ttl_key) == 1 then
      if mode ~= 'add' then
        return { 'ok', c, tonumber(redis.call('ZSCORE', exp, rid)), price, avail, name }
      end
      live_count, list = c, l
    else
      expired = c
    end
  end
  if mode == 'restore' then state, limit = 'none', 0 end
  if state == 'inactive' then return { 'sale_not_active' } end
  if mode ~= 'restore' and not line_fits(live_count + n, price) then
    return { 'too_large', live_count + n, price }
  end
  if limit > 0 then
    local mine = tonumber(redis.call('HGET', users, user) or '0') - expired
    if mine + n > limit then return { 'limit_exceeded', mine, limit } end
  end
  if avail + expired < n then
    return { 'out_of_stock', avail + expired, sold_out_for(avail + expired) }
  end
  local deadline = ms
  if kind == 'ttl' then deadline = now + ms end
  -- Adding to a live reservation keeps its deadline (the TTL key's, should the index lack it).
  if live_count > 0 then
    deadline = tonumber(redis.call('ZSCORE', exp, rid)) or redis.call('PEXPIRETIME', ttl_key)
  end

  if expired > 0 then release_entry(stock, users, res, exp, rid, cur, ttl_key) end
  take_units(stock, n, bucket_of(rid), list)
  redis.call('HINCRBY', users, user, n)
  local total = live_count + n
  redis.call('HSET', res, rid, format_entry(user, total, list))
  redis.call('SET', ttl_key, total, 'PXAT', string.format('%d', deadline))
  redis.call('ZADD', exp, string.format('%d', deadline), rid)
  local left = avail + expired - n
  return { 'ok', total, deadline, price, left, name, sold_out_for(left) }
end

local replies = {}
for i = 1, entries do
  local a = 6 * (i - 1)
  replies[i] = reserve_one(KEYS[5 + i], ARGV[a + 1], tonumber(ARGV[a + 2]), ARGV[a + 3],
    ARGV[a + 4], tonumber(ARGV[a + 5]), ARGV[a + 6])
end
return replies
