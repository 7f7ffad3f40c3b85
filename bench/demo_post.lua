-- wrk script for bench/demo.sh: POST /events with a valid event, 1000 vehicle ids
-- in turn, positions and speeds varied. The requests are made once, in init, so
-- that wrk spends its time sending them, not formatting them.
local requests = {}
local n = 0

function init(args)
  local headers = { ["Content-Type"] = "application/json" }
  for i = 1, 1000 do
    local body = string.format('{"id":"veh-%d","lat":%.5f,"lon":%.5f,"speed":%.1f}',
      i, 52.4 + (i % 97) / 500, 13.3 + (i % 89) / 400, (i * 7) % 130)
    requests[i] = wrk.format("POST", "/events", headers, body)
  end
end

function request()
  n = n % #requests + 1
  return requests[n]
end
