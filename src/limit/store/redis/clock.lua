-- tollgate: prepended to decide.lua and refund.lua. The time in microseconds:
-- ARGV[1] when given (a pinned clock: tests, or the time a decision used),
-- else Redis's own clock, which every gateway shares.
local function clock_now(pinned)
  if pinned ~= '' then return tonumber(pinned) end
  local t = redis.call('TIME')
  return tonumber(t[1]) * 1000000 + tonumber(t[2])
end

