-- tollgate: give back what decide.lua spent, for a request whose limits live
-- in several Redis Cluster slots and was denied in another slot. Best effort:
-- a window that has rolled over since is left alone (it spent nothing then).
--
-- Same KEYS and per-check ARGV as decide.lua; ARGV[1] is the time decide.lua
-- used (it returns it last).

local now = clock_now(ARGV[1])
local n = tonumber(ARGV[2])

local function sat(a) if a < 0 then return 0 end return a end

for i = 1, n do
  local base = 2 + (i - 1) * 14
  local alg = ARGV[base + 1]
  local a, b = tonumber(ARGV[base + 2]), tonumber(ARGV[base + 3])
  local cost, member = tonumber(ARGV[base + 5]), ARGV[base + 7]
  local key = KEYS[i]
  if alg == 'gcra' or alg == 'leaky' then
    local tat = tonumber(redis.call('GET', key))
    if tat then
      local back = tat - a * cost
      if back <= now then
        redis.call('DEL', key)
      else
        redis.call('SET', key, string.format('%d', back), 'KEEPTTL')
      end
    end
  elseif alg == 'token' then
    local level = tonumber(redis.call('HGET', key, 'level'))
    if level then
      redis.call('HSET', key, 'level', string.format('%d', math.min(b * a, level + a * cost)))
    end
  elseif alg == 'fixed' or alg == 'counter' then
    local field = 'count'
    if alg == 'counter' then field = 'current' end
    local s = redis.call('HMGET', key, 'start', field)
    local start, count = tonumber(s[1]), tonumber(s[2])
    if start and count then
      local t = math.max(now, start)
      if start == t - (t % a) then
        redis.call('HSET', key, field, sat(count - cost))
      end
    end
  elseif alg == 'log' then
    local suffix = ':' .. member
    for _, entry in ipairs(redis.call('ZRANGE', key, 0, -1)) do
      if string.sub(entry, -#suffix) == suffix then redis.call('ZREM', key, entry) end
    end
  elseif alg == 'conc' then
    for k = 1, cost do redis.call('ZREM', key, member .. '#' .. k) end
  end
end
return 1
