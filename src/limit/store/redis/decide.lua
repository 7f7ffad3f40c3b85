-- tollgate: decide every limit of one request in one atomic step.
--
-- The same algorithms as src/limit/algorithm/*.rs, in microseconds (Lua numbers are
-- doubles: integers are exact below 2^53, and microseconds since 1970 fit).
-- Phase 1 reads every state and decides; phase 2 writes the new states only
-- if no enforced limit denied — a denied request spends nothing anywhere.
-- Every key written gets a TTL no longer than its state matters.
--
-- KEYS[i]: the state key of check i; after the n state keys, the ban keys
-- of the checks that have a penalty box.
-- ARGV[1]: "now" in microseconds, or "" for the server's TIME (tests pin it).
-- ARGV[2]: the number of checks n; -n to peek (decide, write nothing).
-- Then 14 values per check: algorithm, a, b, c, cost, enforced (1/0), member
-- (the names are the `lua` names of src/limit/algorithm/mod.rs), then the
-- penalty box: its key's index in KEYS (0: none), after, within, for,
-- escalate, max (times in microseconds), enforced (1/0):
--   gcra                a = interval  b = capacity
--   leaky               a = interval  b = capacity   c = 1 to delay instead of denying
--   token               a = interval  b = capacity   c = debt
--   fixed | log | counter  a = period  b = limit
--   conc                a = lease     b = max         member = lease id
-- Returns 8 integers per check: allowed, remaining, reset, retry (-1 = never),
-- delay, ban (0 none, 1 banned, 2 this refusal started a ban), how long the
-- ban runs, the key's offences; then the time it decided at (for refund.lua).

local now = clock_now(ARGV[1])
local n = tonumber(ARGV[2])
local peek = n < 0
if peek then n = -n end
-- A pinned clock does not move with Redis's, so its keys get a real-time
-- margin on their TTL (tests only).
local slack = 0
if ARGV[1] ~= '' then slack = 600000 end

local function ceil_div(a, b) return math.floor((a + b - 1) / b) end
local function sat(a) if a < 0 then return 0 end return a end
local function ms(us) local v = ceil_div(sat(us), 1000) if v < 1 then v = 1 end return v + slack end
-- Lua's tostring keeps 14 digits; microsecond timestamps have 16.
local function int(x) return string.format('%d', x) end

local function tat_of(key, t)
  local stored = tonumber(redis.call('GET', key))
  if stored and stored > t then return stored end
  return t
end

local function gcra(key, interval, burst, cost)
  local tat = tat_of(key, now)
  local function remaining(at) return sat(burst - ceil_div(sat(at - now), interval)) end
  local new_tat = tat + interval * cost
  local allow_at = sat(new_tat - interval * burst)
  if cost > burst or now < allow_at then
    local retry = -1
    if cost <= burst then retry = allow_at - now end
    return {0, remaining(tat), tat - now, retry, 0}
  end
  return {1, remaining(new_tat), new_tat - now, 0, 0},
    function() redis.call('SET', key, int(new_tat), 'PX', ms(new_tat - now)) end
end

local function leaky_shape(key, interval, capacity, cost)
  local tat = tat_of(key, now)
  local function in_bucket(at) return ceil_div(sat(at - now), interval) end
  local wait = tat - now
  local new_tat = tat + interval * cost
  local queue = interval * sat(capacity - cost)
  if cost > capacity or wait > queue then
    local retry = -1
    if cost <= capacity then retry = wait - queue end
    return {0, sat(capacity - in_bucket(tat)), tat - now, retry, 0}
  end
  return {1, sat(capacity - in_bucket(new_tat)), new_tat - now, 0, wait},
    function() redis.call('SET', key, int(new_tat), 'PX', ms(new_tat - now)) end
end

local function token(key, interval, capacity, debt, cost)
  local s = redis.call('HMGET', key, 'level', 'at')
  local level, at = tonumber(s[1]), tonumber(s[2])
  local t = now
  local full = capacity * interval
  if at and at > t then t = at end
  if level == nil or at == nil then
    level = full
  else
    level = math.min(full, level + (t - at))
  end
  local function tokens(l) return math.floor(sat(l) / interval) end
  local need = cost * interval
  local floor_ = -debt * interval
  local after = level - need
  if cost > capacity + debt or level < 0 or after < floor_ then
    local retry = -1
    if cost <= capacity + debt then retry = math.max(need + floor_, 0) - level end
    return {0, tokens(level), full - level, retry, 0}
  end
  return {1, tokens(after), full - after, 0, 0},
    function()
      redis.call('HSET', key, 'level', int(after), 'at', int(t))
      redis.call('PEXPIRE', key, ms(full - after + t - now))
    end
end

local function fixed(key, period, limit, cost)
  local s = redis.call('HMGET', key, 'start', 'count')
  local stored_start, stored_count = tonumber(s[1]), tonumber(s[2])
  local t = now
  if stored_start and stored_start > t then t = stored_start end
  local start = t - (t % period)
  local count = 0
  if stored_start == start and stored_count then count = stored_count end
  local ends_in = start + period - t
  local after = count + cost
  if after > limit then
    local retry = -1
    if cost <= limit then retry = ends_in end
    return {0, sat(limit - count), ends_in, retry, 0}
  end
  return {1, limit - after, ends_in, 0, 0},
    function()
      redis.call('HSET', key, 'start', int(start), 'count', int(after))
      redis.call('PEXPIRE', key, ms(start + period - now))
    end
end

-- Log entries are members "<time>:<cost>:<id>" scored by time.
local function log(key, period, limit, cost, member)
  local newest = redis.call('ZRANGE', key, -1, -1, 'WITHSCORES')
  local t = now
  if #newest > 0 then
    local newest_at = tonumber(newest[2])
    if newest_at > t then t = newest_at end
    -- Entries a period older than the newest count for nothing at any time
    -- this key can still be decided at (never before its newest entry):
    -- drop them first, even for a request that will be denied, so each call
    -- reads only entries that may count.
    redis.call('ZREMRANGEBYSCORE', key, '-inf', int(newest_at - period))
  end
  local entries = redis.call('ZRANGE', key, 0, -1, 'WITHSCORES')
  local live, used = {}, 0
  for i = 1, #entries, 2 do
    local at = tonumber(entries[i + 1])
    if at + period > t then
      local c = tonumber(string.match(entries[i], '^[^:]+:([^:]+):'))
      live[#live + 1] = {at, c}
      used = used + c
    end
  end
  local reset = 0
  if #live > 0 then reset = live[#live][1] + period - t end
  if used + cost > limit then
    local retry = -1
    if cost <= limit then
      local to_free = used + cost - limit
      for _, e in ipairs(live) do
        to_free = to_free - e[2]
        if to_free <= 0 then retry = e[1] + period - t break end
      end
    end
    return {0, sat(limit - used), reset, retry, 0}
  end
  return {1, limit - used - cost, period, 0, 0},
    function()
      redis.call('ZREMRANGEBYSCORE', key, '-inf', int(t - period))
      redis.call('ZADD', key, int(t), int(t) .. ':' .. int(cost) .. ':' .. member)
      redis.call('PEXPIRE', key, ms(t + period - now))
    end
end

local function counter(key, period, limit, cost)
  local s = redis.call('HMGET', key, 'start', 'previous', 'current')
  local stored_start = tonumber(s[1])
  local t = now
  if stored_start and stored_start > t then t = stored_start end
  local start = t - (t % period)
  local previous, current = 0, 0
  if stored_start == start then
    previous, current = tonumber(s[2]) or 0, tonumber(s[3]) or 0
  elseif stored_start and stored_start + period == start then
    previous = tonumber(s[3]) or 0
  end
  local elapsed = t - start
  local function fits(p, c, e) return p * (period - e) + c * period <= limit * period end
  local function remaining(p, c, e)
    return sat(math.floor(sat(limit * period - p * (period - e)) / period) - c)
  end
  local function fits_from(p, c)
    if c > limit then return nil end
    if p == 0 then return 0 end
    local e = sat(period - math.floor((limit - c) * period / p))
    if e < period then return e end
    return nil
  end
  local reset = 0
  if current > 0 then reset = start + 2 * period - t elseif previous > 0 then reset = start + period - t end
  local after = current + cost
  if cost <= limit and fits(previous, after, elapsed) then
    return {1, remaining(previous, after, elapsed), start + 2 * period - t, 0, 0},
      function()
        redis.call('HSET', key, 'start', int(start), 'previous', int(previous), 'current', int(after))
        redis.call('PEXPIRE', key, ms(start + 2 * period - now))
      end
  end
  local retry
  if cost > limit then
    retry = -1
  else
    local e = fits_from(previous, after)
    if e and e > elapsed then
      retry = e - elapsed
    else
      local e2 = fits_from(current, cost)
      if e2 then retry = start + period + e2 - t else retry = start + 2 * period - t end
    end
  end
  return {0, remaining(previous, current, elapsed), reset, retry, 0}
end

-- Concurrency: one lease per unit of cost, members "<id>#<k>" scored by
-- their expiry; expired leases (a crashed gateway's) do not count.
local function conc(key, lease, max, cost, member)
  redis.call('ZREMRANGEBYSCORE', key, '-inf', int(now))
  local held = redis.call('ZCARD', key)
  local after = held + cost
  if after > max then
    local retry = 1000000
    if cost > max then retry = -1 end
    return {0, sat(max - held), 0, retry, 0}
  end
  return {1, max - after, 0, 0, 0},
    function()
      for k = 1, cost do redis.call('ZADD', key, int(now + lease), member .. '#' .. k) end
      redis.call('PEXPIRE', key, ms(lease))
    end
end

-- The penalty box, as src/limit/ban.rs: a hash of the key's refusals in the
-- current window (strikes, since), its offences and when its ban ends.
local function ban_state(bkey)
  local s = redis.call('HMGET', bkey, 'until', 'offences')
  local untl, offences = tonumber(s[1]) or 0, tonumber(s[2]) or 0
  local left = 0
  if untl > now then left = untl - now end
  return left, offences
end

local function strike(bkey, after, within, dur, escalate, max)
  local s = redis.call('HMGET', bkey, 'strikes', 'since', 'offences', 'until')
  local strikes, since = tonumber(s[1]) or 0, tonumber(s[2]) or 0
  local offences, untl = tonumber(s[3]) or 0, tonumber(s[4]) or 0
  if untl > 0 and now >= untl + max then offences = 0 end
  if strikes == 0 or now - since >= within then strikes, since = 0, now end
  strikes = strikes + 1
  local length = 0
  if strikes >= after then
    offences = offences + 1
    strikes = 0
    length = math.min(dur, max)
    for _ = 2, offences do
      if length >= max then break end
      length = math.min(length * escalate, max)
    end
    untl = now + length
  end
  redis.call('HSET', bkey, 'strikes', strikes, 'since', int(since), 'offences', offences,
    'until', int(untl))
  local expires = since + within
  if offences > 0 and untl + max > expires then expires = untl + max end
  redis.call('PEXPIRE', bkey, ms(expires - now))
  return length, offences
end

local out, writes, denied = {}, {}, false
for i = 1, n do
  local base = 2 + (i - 1) * 14
  local alg = ARGV[base + 1]
  local a, b, c = tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3]), tonumber(ARGV[base + 4])
  local cost, enforced, member = tonumber(ARGV[base + 5]), ARGV[base + 6] == '1', ARGV[base + 7]
  local key = KEYS[i]
  local bkey = nil
  local bk = tonumber(ARGV[base + 8])
  if bk > 0 then bkey = KEYS[bk] end
  local ban_enforced = enforced and ARGV[base + 14] == '1'
  local mark, left, offences = 0, 0, 0
  if bkey then left, offences = ban_state(bkey) end
  local r, write
  if left > 0 and ban_enforced then
    r = {0, 0, left, left, 0}
    mark = 1
  else
    if alg == 'gcra' then r, write = gcra(key, a, b, cost)
    elseif alg == 'leaky' and c == 1 then r, write = leaky_shape(key, a, b, cost)
    elseif alg == 'leaky' then r, write = gcra(key, a, b, cost)
    elseif alg == 'token' then r, write = token(key, a, b, c, cost)
    elseif alg == 'fixed' then r, write = fixed(key, a, b, cost)
    elseif alg == 'log' then r, write = log(key, a, b, cost, member)
    elseif alg == 'counter' then r, write = counter(key, a, b, cost)
    elseif alg == 'conc' then r, write = conc(key, a, b, cost, member)
    else return redis.error_reply('tollgate: unknown algorithm ' .. tostring(alg)) end
    if left > 0 then mark = 1 end
  end
  if bkey and r[1] == 0 and mark == 0 and not peek then
    local length
    length, offences = strike(bkey, tonumber(ARGV[base + 9]), tonumber(ARGV[base + 10]),
      tonumber(ARGV[base + 11]), tonumber(ARGV[base + 12]), tonumber(ARGV[base + 13]))
    if length > 0 then
      mark, left = 2, length
      if ban_enforced then
        r[2], r[4] = 0, length
        if length > r[3] then r[3] = length end
      end
    end
  end
  if r[1] == 0 and enforced then denied = true end
  if r[1] == 1 then writes[#writes + 1] = write end
  for _, v in ipairs(r) do out[#out + 1] = v end
  out[#out + 1] = mark
  out[#out + 1] = left
  out[#out + 1] = offences
end
if not denied and not peek then
  for _, write in ipairs(writes) do write() end
end
out[#out + 1] = now
return out
