#!/usr/bin/env bash
# tollgate + its demo upstream against the Python baseline (bench/seed_app.py:
# FastAPI + slowapi under uvicorn) on POST /events, with WebSocket subscribers
# watching every accepted event:
#
#   bash bench/demo.sh [rounds] [seconds]        # defaults: 3 rounds of 5 s per variant
#   SUBSCRIBERS=10 CONNECTIONS=50 WS_VIA=gateway PROFILE=1 TOLLGATE=path/to/tollgate bash bench/demo.sh 3 5
#
# Variants, run in interleaved rounds (tollgate seed tollgate seed ...):
#   tollgate+demo   target/release/tollgate with server.threads: 1, one memory limit
#                   per request (admitting everything) on POST /events, routed to the
#                   built-in demo upstream (its own thread); the subscribers connect
#                   through the gateway (GET /ws/vehicles, no limits), as the product's
#                   clients do; WS_VIA=demo connects them to the demo's own port instead
#                   (what the gateway's WebSocket forwarding costs)
#   seed            bench/seed_app.py under uvicorn, 1 worker: slowapi's limit per
#                   client IP (admitting everything), pydantic validation, the latest
#                   state per vehicle, a fan-out to the subscribers
# Each run: SUBSCRIBERS (10) WebSocket clients connect (bench/ws_count.py counts what
# they receive), wrk -t1 -c50 POSTs valid events (bench/demo_post.lua: 1000 vehicle
# ids) for the given seconds, the fan-out gets 1 s to drain, the clients leave.
# Prints requests/s (median, min-max), events delivered to the subscribers per second
# and as a share of (requests x subscribers), the server process's CPU time (user +
# system, from /proc) per request, and the ratio tollgate+demo / seed. PROFILE=1 then
# records one more tollgate run with `perf record` and prints the top symbols.
#
# Loopback only, bounded (rounds x 2 x (seconds + ~2 s)), and it stops everything it
# starts. Needs wrk (apt-get install wrk) and the seed app's packages
# (pip install fastapi "uvicorn[standard]" slowapi; [standard] brings websockets,
# which uvicorn needs for /ws/vehicles, and uvloop/httptools, which it then uses).
# Builds target/release/tollgate when it is missing.
set -euo pipefail
ROUNDS=${1:-3}
DURATION=${2:-5}
SUBSCRIBERS=${SUBSCRIBERS:-10}
WS_VIA=${WS_VIA:-gateway}
CONNECTIONS=${CONNECTIONS:-50}
HERE=$(cd "$(dirname "$0")/.." && pwd)
. "$HERE/bench/lib.sh"
require "apt-get install wrk" wrk python3
python3 -c 'import fastapi, uvicorn, slowapi, websockets' 2>/dev/null || {
  echo "missing the seed app's Python packages: pip install fastapi \"uvicorn[standard]\" slowapi" >&2; exit 1; }
[ "${PROFILE:-0}" = 0 ] || require "apt-get install linux-perf" perf
BIN=${TOLLGATE:-$HERE/target/release/tollgate}
[ -x "$BIN" ] || (cd "$HERE" && cargo build --release --quiet --bin tollgate)
scratch demo

declare -A PORT PID
PORT[tollgate]=$(free_port); ADMIN=$(free_port); DEMO=$(free_port); PORT[seed]=$(free_port)
cat > "$WORK/tollgate.yaml" <<YAML
server: { listen: ["127.0.0.1:${PORT[tollgate]}"], admin: "127.0.0.1:$ADMIN", threads: 1, watch: false }
upstreams: { demo: { servers: ["127.0.0.1:$DEMO"] } }
rules:
  - name: post-events
    match: { path: /events, methods: [POST] }
    upstream: demo
    limits: [{ name: per-ip, key: ip, rate: 100000000/second }]
  - { name: vehicle-stream, match: { path: /ws/vehicles }, upstream: demo }
demo: { enabled: true, listen: "127.0.0.1:$DEMO", bus: memory }
YAML
RUST_LOG=error "$BIN" run -c "$WORK/tollgate.yaml" >"$WORK/tollgate.log" 2>&1 & PIDS+=($!); PID[tollgate]=$!
python3 -m uvicorn seed_app:app --app-dir "$HERE/bench" --host 127.0.0.1 --port "${PORT[seed]}" \
  --workers 1 --log-level warning --no-access-log >"$WORK/seed.log" 2>&1 & PIDS+=($!); PID[seed]=$!
wait_port "${PORT[tollgate]}"; wait_port "$DEMO"; wait_port "${PORT[seed]}"
declare -A WS_PORT=([tollgate]=${PORT[tollgate]} [seed]=${PORT[seed]})
[ "$WS_VIA" = demo ] && WS_PORT[tollgate]=$DEMO

# CPU ticks (user + system) of process $1 (under "process", threads that ended
# included) and of each of its threads, summed by thread name, as JSON.
threads() {
  python3 -c '
import collections, glob, json, sys
def ticks(stat):
    text = open(stat).read()  # the name, in parentheses, may hold spaces
    name, fields = text[text.index("(") + 1:text.rindex(")")], text[text.rindex(")") + 2:].split()
    return name, int(fields[11]) + int(fields[12])
by_name = collections.Counter()
for stat in glob.glob(f"/proc/{sys.argv[1]}/task/*/stat"):
    try:
        name, n = ticks(stat)
    except OSError:
        continue
    by_name[name] += n
print(json.dumps({"process": ticks(f"/proc/{sys.argv[1]}/stat")[1], "threads": by_name}))' "$1"
}

post() { wrk -t1 -c"$CONNECTIONS" -d"$1" -s "$HERE/bench/demo_post.lua" "http://127.0.0.1:${PORT[$2]}/events"; }

# Starts the subscribers on variant $1 and waits until all are connected.
subscribe() {
  rm -f "$WORK/ws" "$WORK/ws.ready"
  python3 "$HERE/bench/ws_count.py" "127.0.0.1:${WS_PORT[$1]}" /ws/vehicles "$SUBSCRIBERS" "$WORK/ws" & SUB=$!; PIDS+=($SUB)
  for _ in $(seq 1 200); do [ -e "$WORK/ws.ready" ] && return 0; kill -0 "$SUB" 2>/dev/null || break; sleep 0.05; done
  echo "the subscribers could not connect to $1" >&2; exit 1
}
unsubscribe() { kill -TERM "$SUB"; wait "$SUB"; }

# One run of variant $1: appends a JSON line to $WORK/results.
measure() {
  local before after out
  subscribe "$1"
  before=$(threads "${PID[$1]}")
  out=$(post "${DURATION}s" "$1")
  sleep 1   # the fan-out drains what is queued
  after=$(threads "${PID[$1]}")
  unsubscribe
  python3 - "$1" "$out" "$before" "$after" "$(cat "$WORK/ws")" "$SUBSCRIBERS" "$DURATION" >> "$WORK/results" <<'PY'
import json, os, re, sys
variant, out, before, after, ws, subscribers, duration = sys.argv[1:]
before, after = json.loads(before), json.loads(after)
ticks = {name: n - before["threads"].get(name, 0) for name, n in after["threads"].items()}
process = after["process"] - before["process"]
events, lagged, closed, sub_cpu = ws.split()
non2xx = re.search(r"Non-2xx or 3xx responses: (\d+)", out)
errors = re.search(r"Socket errors: (.*)", out)
print(json.dumps({
    "variant": variant,
    "rps": float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1)),
    "requests": int(re.search(r"(\d+) requests in", out).group(1)),
    "non2xx": int(non2xx.group(1)) if non2xx else 0,
    "socket_errors": errors.group(1) if errors else "",
    "events": int(events), "lagged": int(lagged), "closed": int(closed),
    "subscriber_cpu": float(sub_cpu), "subscribers": int(subscribers),
    "seconds": float(duration), "hz": os.sysconf("SC_CLK_TCK"), "process": process, "ticks": ticks,
}))
PY
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "wrk -t1 -c$CONNECTIONS -d${DURATION}s POST /events; $SUBSCRIBERS WebSocket subscribers (to tollgate via the $WS_VIA); $ROUNDS interleaved rounds"
echo "seed: $(python3 -c 'import fastapi, pydantic, slowapi, uvicorn, importlib.util as u, sys
print(f"Python {sys.version.split()[0]}, FastAPI {fastapi.__version__}, pydantic {pydantic.__version__}, uvicorn {uvicorn.__version__}"
      + (" (uvloop" if u.find_spec("uvloop") else " (asyncio") + (", httptools)" if u.find_spec("httptools") else ", h11)"))')"
for v in tollgate seed; do post 1s "$v" >/dev/null; done   # warm-up: connections, caches
: > "$WORK/results"
for round in $(seq 1 "$ROUNDS"); do
  for v in tollgate seed; do measure "$v"; done
  echo "round $round of $ROUNDS done" >&2
done

python3 - "$WORK/results" <<'PY'
import collections, json, statistics, sys
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    r = json.loads(line)
    runs[r["variant"]].append(r)
label = {"tollgate": "tollgate+demo", "seed": "seed (FastAPI+slowapi)"}
def med(v, f): return statistics.median(f(r) for r in runs[v])
def rps(r): return r["rps"]
def delivered(r): return r["events"] / r["seconds"]
def share(r): return r["events"] / (r["requests"] * r["subscribers"]) if r["subscribers"] else float("nan")
def cpu_us(r, names=None):
    ticks = r["process"] if names is None else sum(t for n, t in r["ticks"].items() if n in names)
    return ticks / r["hz"] * 1e6 / r["requests"]
print()
print("| variant | req/s (median) | min-max | events delivered/s (median) | delivered / (requests x subscribers) | server CPU us/request (median) | subscriber CPU s per run |")
print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
for v in runs:
    span = [rps(r) for r in runs[v]]
    print(f"| {label[v]} | {med(v, rps):.0f} | {min(span):.0f}-{max(span):.0f} | {med(v, delivered):.0f} "
          f"| {med(v, share):.3f} | {med(v, cpu_us):.1f} | {med(v, lambda r: r['subscriber_cpu']):.2f} |")
if "tollgate" in runs:
    print()
    print("tollgate's CPU us/request by thread name (median):",
          ", ".join(f"{n} {med('tollgate', lambda r: cpu_us(r, {n})):.1f}"
                    for n in sorted(runs["tollgate"][0]["ticks"], key=lambda n: -runs["tollgate"][0]["ticks"][n])
                    if any(r["ticks"].get(n) for r in runs["tollgate"])))
problems = [f"{label[r['variant']]}: {r['non2xx']} non-2xx, {r['socket_errors'] or 'no socket errors'}, "
            f"{r['lagged']} lagged notices, {r['closed']} subscribers closed"
            for rs in runs.values() for r in rs
            if r["non2xx"] or r["socket_errors"] or r["lagged"] or r["closed"]]
for p in problems:
    print("note:", p)
if {"tollgate", "seed"} <= runs.keys():
    print()
    print("| ratio tollgate+demo / seed | median |")
    print("| --- | ---: |")
    print(f"| requests per second (goal >= 20) | {med('tollgate', rps) / med('seed', rps):.1f} |")
    if med("seed", delivered):
        print(f"| events delivered per second | {med('tollgate', delivered) / med('seed', delivered):.1f} |")
    print(f"| seed CPU per request / tollgate CPU per request | {med('seed', cpu_us) / med('tollgate', cpu_us):.1f} |")
PY

if [ "${PROFILE:-0}" != 0 ]; then
  # One more tollgate run under perf: where the gateway and the demo spend their time.
  subscribe tollgate
  perf record -q -F 499 --call-graph dwarf,8192 -p "${PID[tollgate]}" -o "$WORK/perf.data" -- sleep "$DURATION" 2>/dev/null &
  PERF=$!
  post "${DURATION}s" tollgate >/dev/null
  wait "$PERF" || true
  unsubscribe
  echo
  # perf report is cut short by head: its SIGPIPE is no failure here.
  report() { perf report -i "$WORK/perf.data" --stdio -g none "$@" 2>/dev/null | grep -E '^ +[0-9.]+%' | sed -E 's/[ -]+$//' || true; }
  echo "perf: the process's samples by thread"
  report --no-children --sort comm | head -5
  echo
  echo "perf: top symbols by thread (self time)"
  report --no-children --sort comm,symbol | head -40
  echo
  echo "perf: tollgate's own functions with what they call (children time; inlined callees count in their callers)"
  report --children --sort comm,symbol | grep -E 'tollgate::|axum::extract::ws|tungstenite|Handler' | head -30
fi
