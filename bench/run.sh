#!/usr/bin/env bash
# tollgate side by side with nginx on this machine, in one run:
#
#   bash bench/run.sh [rounds] [seconds]        # defaults: 3 rounds of 5 s per variant
#
# Variants, each with 1 and 2 workers (nginx worker_processes = tollgate server.threads):
#   direct                 wrk -> nginx origin (`return 200`): the ceiling
#   nginx                  nginx proxy_pass with keepalive to the origin: the baseline proxy
#   nginx+limit_req        ... with limit_req keyed by $binary_remote_addr, admitting everything
#   nginx+limit_req/deny   ... with a limit that denies almost everything (429)
#   pingora                a bare Pingora ProxyHttp (examples/pingora_baseline.rs), same profile
#   tollgate               no limits
#   tollgate+limit         one memory limit per request, admitting everything
#   tollgate+limit/deny    one memory limit that denies almost everything (429)
#   tollgate+redis         one Redis limit (exact), admitting everything
#   tollgate+redis/batched the same limit with sync: batched (batch: 100)
#   ws direct / ws tollgate / ws tollgate+limit   WebSocket echo round trips per second
# Rounds are interleaved (A B C ... A B C ...); the table shows medians, min-max and ratios.
# Latency (p50/p99) comes from wrk --latency (closed loop) and, when `oha` is installed
# (`cargo install oha`), from oha at a fixed rate with latency correction (open loop).
#
# Loopback only, bounded (rounds x variants x seconds), and it stops everything it starts.
# Needs nginx, redis-server, wrk (apt-get install nginx redis-server wrk).
set -euo pipefail
ROUNDS=${1:-3}
DURATION=${2:-5}
CONNECTIONS=${CONNECTIONS:-64}
WORKERS=${WORKERS:-"1 2"}
HERE=$(cd "$(dirname "$0")/.." && pwd)

for tool in nginx redis-server wrk python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install nginx redis-server wrk" >&2; exit 1; }
done
HAVE_OHA=0; command -v oha >/dev/null && HAVE_OHA=1
[ "$HAVE_OHA" = 1 ] || echo "oha is not installed (cargo install oha): the open-loop rows are skipped" >&2
(cd "$HERE" && cargo build --release --quiet --bin tollgate --example ws_bench --example pingora_baseline)
BIN="$HERE/target/release/tollgate"
WSBENCH="$HERE/target/release/examples/ws_bench"
BASELINE="$HERE/target/release/examples/pingora_baseline"

WORK=$(mktemp -d /tmp/tollgate-bench.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

. "$HERE/bench/lib.sh"
start() { "$@" >/dev/null 2>&1 & PIDS+=($!); }

ORIGIN=$(free_port); REDIS=$(free_port); WSECHO=$(free_port)
start_origin "$ORIGIN"
start redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK"
start "$WSBENCH" serve "127.0.0.1:$WSECHO"
wait_port "$ORIGIN"; wait_port "$REDIS"; wait_port "$WSECHO"

declare -A PORT
for W in $WORKERS; do
  P=$(free_port); PORT[nginx$W]=$P
  cat > "$WORK/nginx$W.conf" <<NGINX
worker_processes $W;
daemon off;
pid $WORK/nginx$W.pid;
error_log $WORK/nginx$W-error.log;
events { worker_connections 4096; }
http {
  access_log off;
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 128; }
  limit_req_zone \$binary_remote_addr zone=all$W:10m rate=100000000r/s;
  limit_req_zone \$binary_remote_addr zone=few$W:10m rate=10r/s;
  limit_req_status 429;
  server {
    listen 127.0.0.1:$P;
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    location /open { proxy_pass http://origin; }
    location /all  { limit_req zone=all$W burst=100000 nodelay; proxy_pass http://origin; }
    location /few  { limit_req zone=few$W nodelay; proxy_pass http://origin; }
  }
}
NGINX
  start nginx -c "$WORK/nginx$W.conf" -p "$WORK"
  P=$(free_port); PORT[pingora$W]=$P
  start "$BASELINE" "127.0.0.1:$P" "127.0.0.1:$ORIGIN" "$W"
  wait_port "$P"
  for store in memory redis; do
    P=$(free_port); A=$(free_port); PORT[tollgate$W$store]=$P
    if [ "$store" = redis ]; then
      STORE="{ backend: redis, redis: { url: \"redis://127.0.0.1:$REDIS\", prefix: \"b$W\" }, on_error: deny }"
      BATCHED="sync: batched, batch: 100"
    else
      STORE="{ backend: memory }"
      BATCHED="algorithm: gcra"
    fi
    cat > "$WORK/tollgate$W$store.yaml" <<YAML
server: { listen: ["127.0.0.1:$P"], admin: "127.0.0.1:$A", threads: $W, watch: false }
store: $STORE
upstreams:
  origin: { servers: ["127.0.0.1:$ORIGIN"] }
  echo: { servers: ["127.0.0.1:$WSECHO"] }
rules:
  - { name: open, match: { path: /open }, upstream: origin }
  - { name: all, match: { path: /all }, upstream: origin, limits: [{ name: per-ip, key: ip, rate: 100000000/second }] }
  - { name: few, match: { path: /few }, upstream: origin, limits: [{ name: per-ip, key: ip, rate: 10/second }] }
  - { name: batched, match: { path: /batched }, upstream: origin, limits: [{ name: per-ip, key: ip, rate: 100000000/second, $BATCHED }] }
  - { name: ws, match: { path: /ws/open }, upstream: echo }
  - name: ws-limited
    match: { path: /ws/limited }
    upstream: echo
    websocket: { messages: { key: connection, rate: 100000000/second } }
YAML
    start env RUST_LOG=error "$BIN" run -c "$WORK/tollgate$W$store.yaml"
    wait_port "$P"
  done
  wait_port "${PORT[nginx$W]}"
done

# One wrk run: prints "rps p50_ms p99_ms".
http_run() {
  wrk -t2 -c"$CONNECTIONS" -d"${DURATION}s" --latency "$1" | python3 -c '
import re, sys
text = sys.stdin.read()
def ms(v, unit): return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p = {k: ms(v, u) for k, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)$", text, re.M)}
print(rps, p["50"], p["99"])'
}
ws_run() { read -r per_second _ < <("$WSBENCH" drive "$1" "$CONNECTIONS" "$DURATION"); echo "$per_second 0 0"; }

variants() { # name kind url, per worker count
  local W=$1
  echo "direct http http://127.0.0.1:$ORIGIN/open"
  echo "nginx http http://127.0.0.1:${PORT[nginx$W]}/open"
  echo "nginx+limit_req http http://127.0.0.1:${PORT[nginx$W]}/all"
  echo "nginx+limit_req/deny http http://127.0.0.1:${PORT[nginx$W]}/few"
  echo "pingora http http://127.0.0.1:${PORT[pingora$W]}/open"
  echo "tollgate http http://127.0.0.1:${PORT[tollgate${W}memory]}/open"
  echo "tollgate+limit http http://127.0.0.1:${PORT[tollgate${W}memory]}/all"
  echo "tollgate+limit/deny http http://127.0.0.1:${PORT[tollgate${W}memory]}/few"
  echo "tollgate+redis http http://127.0.0.1:${PORT[tollgate${W}redis]}/all"
  echo "tollgate+redis/batched http http://127.0.0.1:${PORT[tollgate${W}redis]}/batched"
  echo "ws_direct ws ws://127.0.0.1:$WSECHO/ws/open"
  echo "ws_tollgate ws ws://127.0.0.1:${PORT[tollgate${W}memory]}/ws/open"
  echo "ws_tollgate+limit ws ws://127.0.0.1:${PORT[tollgate${W}memory]}/ws/limited"
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "wrk -t2 -c$CONNECTIONS -d${DURATION}s; $ROUNDS interleaved rounds; workers: $WORKERS"
for W in $WORKERS; do   # warm-up: connections, Redis script, caches
  variants "$W" | while read -r name kind url; do
    if [ "$kind" = http ]; then wrk -t1 -c8 -d1s "$url" >/dev/null; fi
  done
done
RESULTS="$WORK/results.txt"; : > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  for W in $WORKERS; do
    while read -r name kind url; do
      if [ "$kind" = http ]; then out=$(http_run "$url"); else out=$(ws_run "$url"); fi
      echo "$name $W $out" >> "$RESULTS"
    done < <(variants "$W")
  done
  echo "round $round of $ROUNDS done" >&2
done

if [ "$HAVE_OHA" = 1 ]; then
  # Open loop at a fixed rate both proxies sustain: latency without the
  # coordinated omission of a closed loop.
  RATE=${RATE:-4000}
  for W in $WORKERS; do
    for pair in "nginx+limit_req http://127.0.0.1:${PORT[nginx$W]}/all" "tollgate+limit http://127.0.0.1:${PORT[tollgate${W}memory]}/all"; do
      set -- $pair
      oha -z "${DURATION}s" -q "$RATE" -c "$CONNECTIONS" --latency-correction --no-tui --output-format json "$2" \
        | python3 -c 'import json,sys; d=json.load(sys.stdin)["latencyPercentiles"]; print(sys.argv[1], sys.argv[2], d["p50"]*1000, d["p99"]*1000)' "$1" "$W" >> "$WORK/oha.txt"
    done
  done
fi

python3 - "$RESULTS" "$WORK/oha.txt" <<'PY'
import collections, os, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, w, rps, p50, p99 = line.split()
    rows[(name, int(w))].append((float(rps), float(p50), float(p99)))
def med(key, i=0):
    v = [r[i] for r in rows.get(key, [])]
    return statistics.median(v) if v else float("nan")
def span(key):
    v = [r[0] for r in rows.get(key, [])]
    return f"{min(v):.0f}-{max(v):.0f}" if v else "-"
workers = sorted({w for _, w in rows})
names = list(dict.fromkeys(n for n, _ in rows))
print()
print("| variant | workers | req/s or msg/s (median) | min-max | p50 ms | p99 ms |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for w in workers:
    for n in names:
        k = (n, w)
        if k not in rows: continue
        lat = "| - | - |" if n.startswith("ws_") else f"| {med(k,1):.2f} | {med(k,2):.2f} |"
        print(f"| {n} | {w} | {med(k):.0f} | {span(k)} {lat}")
print()
print("| ratio | " + " | ".join(f"{w} worker{'s' if w > 1 else ''}" for w in workers) + " |")
print("| --- |" + " ---: |" * len(workers))
ratios = [
    ("tollgate / nginx (no limits)", "tollgate", "nginx"),
    ("tollgate+limit / pingora (what tollgate adds to Pingora)", "tollgate+limit", "pingora"),
    ("pingora / nginx", "pingora", "nginx"),
    ("tollgate+limit / nginx+limit_req", "tollgate+limit", "nginx+limit_req"),
    ("tollgate+limit/deny / nginx+limit_req/deny", "tollgate+limit/deny", "nginx+limit_req/deny"),
    ("limits on / off (tollgate+limit / tollgate)", "tollgate+limit", "tollgate"),
    ("Redis / memory (tollgate+redis / tollgate+limit)", "tollgate+redis", "tollgate+limit"),
    ("Redis batched / memory (tollgate+redis/batched / tollgate+limit)", "tollgate+redis/batched", "tollgate+limit"),
    ("429 / admitted (tollgate+limit/deny / tollgate+limit)", "tollgate+limit/deny", "tollgate+limit"),
    ("tollgate / direct (of the ceiling)", "tollgate", "direct"),
    ("ws tollgate / direct", "ws_tollgate", "ws_direct"),
    ("ws message limit on / off", "ws_tollgate+limit", "ws_tollgate"),
]
for label, a, b in ratios:
    cells = []
    for w in workers:
        cells.append(f"{med((a, w)) / med((b, w)):.2f}")
    print(f"| {label} | " + " | ".join(cells) + " |")
p99 = []
for w in workers:
    p99.append(f"{med(('tollgate+limit', w), 2):.2f} vs {med(('nginx+limit_req', w), 2):.2f}")
print(f"| p99 ms, tollgate+limit vs nginx+limit_req (wrk) | " + " | ".join(p99) + " |")
if os.path.exists(sys.argv[2]):
    print()
    print("| open loop (oha, latency-corrected) | workers | p50 ms | p99 ms |")
    print("| --- | ---: | ---: | ---: |")
    for line in open(sys.argv[2]):
        name, w, p50, p99 = line.split()
        print(f"| {name} | {w} | {float(p50):.2f} | {float(p99):.2f} |")
PY
