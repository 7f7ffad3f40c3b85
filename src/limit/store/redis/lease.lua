-- tollgate: renew or release a concurrency lease taken by decide.lua.
-- KEYS[1]: the limit's key. ARGV: op (renew | release), lease id, cost,
-- lease length in microseconds.
-- A renewed lease is pushed to now + lease; a lease that already expired
-- (its gateway stalled past the lease) is not brought back: XX.

local op, member, cost = ARGV[1], ARGV[2], tonumber(ARGV[3])
local key = KEYS[1]
if op == 'release' then
  for k = 1, cost do redis.call('ZREM', key, member .. '#' .. k) end
  if redis.call('ZCARD', key) == 0 then redis.call('DEL', key) end
  return 1
end
local lease = tonumber(ARGV[4])
local t = redis.call('TIME')
local now = tonumber(t[1]) * 1000000 + tonumber(t[2])
local renewed = 0
for k = 1, cost do
  renewed = renewed + redis.call('ZADD', key, 'XX', 'CH', string.format('%d', now + lease), member .. '#' .. k)
end
if renewed > 0 then redis.call('PEXPIRE', key, math.floor((lease + 999) / 1000)) end
return renewed
