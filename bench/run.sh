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
#   nginx/https            nginx terminating TLS (listen ... ssl, TLS 1.3, HTTP/1.1, no http2),
#                          proxy_pass with keepalive to the origin; wrk keeps its connections alive
#   pingora                a bare Pingora ProxyHttp (examples/pingora_baseline.rs), same profile,
#                          with Pingora's default work-stealing runtime
#   pingora/no-steal       the same with work_stealing off (one runtime per thread)
#   pingap                 Pingap 0.13.1 (a Pingora-based gateway), threads = workers, its default
#                          work stealing, no access log, upstream keepalive pool 128
#   pingap+limit           ... with its `limit` plugin (type rate, tag ip), admitting everything
#   pingap+limit/deny      ... with a limit of 10/s per ip that denies almost everything (429)
#   tollgate               no limits
#   tollgate+limit         one memory limit per request, admitting everything
#   tollgate+limit/deny    one memory limit that denies almost everything (429)
#   tollgate+limit/steal   tollgate+limit with server.work_stealing: true (one work-stealing
#                          runtime, Pingora's default), beside pingora
#   tollgate+limit/no-steal  ... with server.work_stealing: false (one runtime per thread),
#                          beside pingora/no-steal. tollgate+limit runs tollgate's default:
#                          no-steal with one worker, steal with more
#   tollgate+limit/pingora-path  tollgate+limit with server.http1_path: pingora (Pingora's proxy
#                          phases instead of tollgate's own HTTP/1.1 loop, the default)
#   tollgate+jwt           a plan limit keyed by the consumer of a bearer JWT (HS256, one
#                          token for every request, so verified once and then cached)
#   tollgate+redis         one Redis limit (exact), admitting everything
#   tollgate+redis/batched the same limit with sync: batched (batch: 100)
#   tollgate/https         tollgate terminating TLS (server.tls, alpn [http/1.1]), no limits
#   tollgate+limit/https   ... with the tollgate+limit limit
#   tollgate+limit+log     tollgate+limit with the access log on (JSON lines to a file); skipped
#                          with a message if that tollgate does not start (e.g. a build
#                          without access_log)
#   ws direct / ws tollgate / ws tollgate+limit   WebSocket echo round trips per second
# Rounds are interleaved (A B C ... A B C ...); the table shows medians, min-max and ratios.
# Latency (p50/p99) comes from wrk --latency (closed loop) and, when `oha` is installed
# (`cargo install oha --locked`), from oha at a fixed rate (RATE, default 4000 req/s) with
# latency correction (open loop: p50/p99/p99.9, rounds interleaved too) for nginx+limit_req,
# pingora, pingap+limit and tollgate+limit.
# The https rows share one self-signed P-256 certificate made with `openssl` at the start
# (without openssl they are skipped).
# The pingap rows need `pingap` on PATH (apt-get install protobuf-compiler &&
# cargo install pingap@0.13.1 --locked, ~15 min); without it they are skipped.
# BUILD=0 uses target/release as it is instead of running cargo build first.
# The closed loop is `wrk -t1 -c50` per variant, the load the hot-path goals are stated
# with; WRK_THREADS and CONNECTIONS change it (WRK_THREADS=2 CONNECTIONS=64: the runs
# before issue 14's last round). CONNECTIONS also sets the open loop's and the
# WebSocket rows' connections; WORKERS (default "1 2") the worker counts.
#
# Loopback only, bounded (rounds x variants x seconds), and it stops everything it starts
# (SIGINT, which stops Pingora, Pingap, tollgate, nginx and Redis at once; SIGKILL after 10 s).
# Needs nginx, redis-server, wrk (apt-get install nginx redis-server wrk).
set -euo pipefail
ROUNDS=${1:-3}
DURATION=${2:-5}
CONNECTIONS=${CONNECTIONS:-50}
WRK_THREADS=${WRK_THREADS:-1}
WORKERS=${WORKERS:-"1 2"}
HERE=$(cd "$(dirname "$0")/.." && pwd)

for tool in nginx redis-server wrk python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install nginx redis-server wrk" >&2; exit 1; }
done
HAVE_OHA=0; command -v oha >/dev/null && HAVE_OHA=1
[ "$HAVE_OHA" = 1 ] || echo "oha is not installed (cargo install oha --locked): the open-loop rows are skipped" >&2
HAVE_TLS=0; command -v openssl >/dev/null && HAVE_TLS=1
[ "$HAVE_TLS" = 1 ] || echo "openssl is not installed (apt-get install openssl): the https rows are skipped" >&2
HAVE_PINGAP=0; command -v pingap >/dev/null && HAVE_PINGAP=1
[ "$HAVE_PINGAP" = 1 ] || echo "pingap is not installed (apt-get install protobuf-compiler && cargo install pingap@0.13.1 --locked, ~15 min): the pingap rows are skipped" >&2
if [ "${BUILD:-1}" != 0 ]; then
  (cd "$HERE" && cargo build --release --quiet --bin tollgate --example ws_bench --example pingora_baseline)
fi
BIN="$HERE/target/release/tollgate"
WSBENCH="$HERE/target/release/examples/ws_bench"
BASELINE="$HERE/target/release/examples/pingora_baseline"
for bin in "$BIN" "$BASELINE"; do
  [ -x "$bin" ] || { echo "missing $bin: cargo build --release --bin tollgate --example pingora_baseline" >&2; exit 1; }
done
HAVE_WS=0; [ -x "$WSBENCH" ] && HAVE_WS=1
[ "$HAVE_WS" = 1 ] || echo "missing $WSBENCH (cargo build --release --example ws_bench): the ws rows are skipped" >&2

. "$HERE/bench/lib.sh"
scratch bench
start() { "$@" >/dev/null 2>&1 & PIDS+=($!); }
# Like wait_port, but returns 1 instead of exiting once process $2 has exited.
wait_port_of() {
  for _ in $(seq 1 400); do
    (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0
    running "$2" || return 1; sleep 0.05
  done
  return 1
}
if [ "$HAVE_TLS" = 1 ]; then   # one pair for nginx and tollgate alike
  openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 2 -subj /CN=localhost \
    -addext subjectAltName=DNS:localhost,IP:127.0.0.1 -keyout "$WORK/key.pem" -out "$WORK/cert.pem" 2>/dev/null \
    || { echo "openssl could not make a certificate: the https rows are skipped" >&2; HAVE_TLS=0; }
fi

ORIGIN=$(free_port); REDIS=$(free_port); WSECHO=$(free_port)
start_origin "$ORIGIN"
start redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK"
[ "$HAVE_WS" = 1 ] && start "$WSBENCH" serve "127.0.0.1:$WSECHO"
wait_port "$ORIGIN"; wait_port "$REDIS"; [ "$HAVE_WS" = 0 ] || wait_port "$WSECHO"

declare -A PORT
# The JWT every tollgate+jwt request carries, and its key (HS256).
JWT_SECRET=bench-secret
JWT_KEY=$(printf %s "$JWT_SECRET" | base64 | tr '+/' '-_' | tr -d '=')
JWT=$(python3 - "$JWT_SECRET" <<'PY'
import base64, hashlib, hmac, json, sys, time
b64 = lambda d: base64.urlsafe_b64encode(d).rstrip(b"=").decode()
head = b64(json.dumps({"alg": "HS256", "kid": "bench"}).encode())
body = b64(json.dumps({"sub": "bench", "plan": "pro", "exp": int(time.time()) + 86400}).encode())
sig = b64(hmac.new(sys.argv[1].encode(), f"{head}.{body}".encode(), hashlib.sha256).digest())
print(f"{head}.{body}.{sig}")
PY
)

for W in $WORKERS; do
  P=$(free_port); PORT[nginx$W]=$P
  NGINX_TLS=""
  if [ "$HAVE_TLS" = 1 ]; then
    PORT[nginx${W}tls]=$(free_port)
    NGINX_TLS="server {
    listen 127.0.0.1:${PORT[nginx${W}tls]} ssl;
    ssl_certificate $WORK/cert.pem;
    ssl_certificate_key $WORK/key.pem;
    ssl_protocols TLSv1.2 TLSv1.3;   # 1.3 as tollgate (nginx's default only from 1.23.4)
    proxy_http_version 1.1;
    proxy_set_header Connection \"\";
    location /open { proxy_pass http://origin; }
  }"
  fi
  nginx_conf "nginx$W" "$W" <<NGINX
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
  $NGINX_TLS
NGINX
  start nginx -c "$WORK/nginx$W.conf" -p "$WORK"
  for steal in steal no-steal; do
    P=$(free_port); PORT[pingora$W$steal]=$P
    start "$BASELINE" "127.0.0.1:$P" "127.0.0.1:$ORIGIN" "$W" "$steal"
    wait_port "$P"
  done
  if [ "$HAVE_PINGAP" = 1 ]; then
    # Pingap's defaults but for what the other proxies do too: no access log
    # (none unless set), threads = workers, keepalive pool of 128 to the origin.
    # Its limit plugin counts per ip over a sliding window of `interval` and
    # answers 429 past `max` per second. Short grace periods for SIGTERM; the
    # cleanup sends SIGINT anyway. No daemon (no -d), no autorestart.
    P=$(free_port); PORT[pingap$W]=$P
    cat > "$WORK/pingap$W.toml" <<TOML
[basic]
name = "bench$W"
pid_file = "$WORK/pingap$W.pid"
upgrade_sock = "$WORK/pingap$W.sock"
threads = $W
grace_period = "1s"
graceful_shutdown_timeout = "1s"
upstream_keepalive_pool_size = 128
log_level = "error"

[upstreams.origin]
addrs = ["127.0.0.1:$ORIGIN"]

[plugins.limitAll]
category = "limit"
type = "rate"
tag = "ip"
max = 100000000
interval = "1s"

[plugins.limitFew]
category = "limit"
type = "rate"
tag = "ip"
max = 10
interval = "1s"

[locations.open]
upstream = "origin"
path = "/open"

[locations.all]
upstream = "origin"
path = "/all"
plugins = ["limitAll"]

[locations.few]
upstream = "origin"
path = "/few"
plugins = ["limitFew"]

[servers.bench]
addr = "127.0.0.1:$P"
locations = ["open", "all", "few"]
threads = $W
TOML
    start env RUST_LOG=error PINGAP_DISABLE_ACME=1 pingap -c "$WORK/pingap$W.toml"
    wait_port "$P"
  fi
  for store in memory redis log steal nosteal pingorapath; do
    P=$(free_port); A=$(free_port); PORT[tollgate$W$store]=$P
    printf '{"keys":[{"kty":"oct","kid":"bench","k":"%s"}]}' "$JWT_KEY" > "$WORK/jwks.json"
    if [ "$store" = redis ]; then
      STORE="{ backend: redis, redis: { url: \"redis://127.0.0.1:$REDIS\", prefix: \"b$W\" }, on_error: deny }"
      BATCHED="sync: batched, batch: 100"
    else
      STORE="{ backend: memory }"
      BATCHED="algorithm: gcra"
    fi
    TLS=""
    # The same gateway with each runtime flavour, beside its default.
    [ "$store" = steal ] && TLS=", work_stealing: true"
    [ "$store" = nosteal ] && TLS=", work_stealing: false"
    [ "$store" = pingorapath ] && TLS=", http1_path: pingora"
    if [ "$store" = memory ] && [ "$HAVE_TLS" = 1 ]; then
      PORT[tollgate${W}tls]=$(free_port)
      TLS=", tls: [{ listen: \"127.0.0.1:${PORT[tollgate${W}tls]}\", certs: [{ cert: cert.pem, key: key.pem }], alpn: [http/1.1] }]"
    fi
    cat > "$WORK/tollgate$W$store.yaml" <<YAML
server: { listen: ["127.0.0.1:$P"], admin: "127.0.0.1:$A", threads: $W, watch: false$TLS }
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
  - { name: jwt, match: { path: /jwt }, upstream: origin, plan: true }
plans: { pro: { limits: [{ name: per-consumer, key: consumer, rate: 100000000/second }] } }
consumers:
  jwt: { keys: jwks.json, algorithms: [HS256], plan_claim: plan }
YAML
    if [ "$store" = log ]; then
      printf 'access_log:\n  format: json\n  path: %s\n' "$WORK/access$W.log" >> "$WORK/tollgate$W$store.yaml"
      env RUST_LOG=error "$BIN" run -c "$WORK/tollgate$W$store.yaml" >/dev/null 2>"$WORK/tollgate$W$store.err" & PIDS+=($!)
      if ! wait_port_of "$P" "${PIDS[-1]}"; then
        why=$(sed -n '/error:/{s/^ *//;p;q}' "$WORK/tollgate$W$store.err")
        echo "tollgate+limit+log skipped ($W workers): tollgate did not start with access_log: ${why:-no message}" >&2
        unset "PORT[tollgate${W}log]"
      fi
      continue
    fi
    start env RUST_LOG=error "$BIN" run -c "$WORK/tollgate$W$store.yaml"
    wait_port "$P"
  done
  [ "$HAVE_TLS" = 0 ] || { wait_port "${PORT[nginx${W}tls]}"; wait_port "${PORT[tollgate${W}tls]}"; }
  wait_port "${PORT[nginx$W]}"
done

# One wrk run: prints "rps p50_ms p99_ms". Extra arguments go to wrk.
http_run() {
  local url=$1; shift
  wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"${DURATION}s" --latency "$@" "$url" | python3 -c '
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
  [ "$HAVE_TLS" = 0 ] || echo "nginx/https http https://127.0.0.1:${PORT[nginx${W}tls]}/open"
  echo "pingora http http://127.0.0.1:${PORT[pingora${W}steal]}/open"
  echo "pingora/no-steal http http://127.0.0.1:${PORT[pingora${W}no-steal]}/open"
  if [ "$HAVE_PINGAP" = 1 ]; then
    echo "pingap http http://127.0.0.1:${PORT[pingap$W]}/open"
    echo "pingap+limit http http://127.0.0.1:${PORT[pingap$W]}/all"
    echo "pingap+limit/deny http http://127.0.0.1:${PORT[pingap$W]}/few"
  fi
  echo "tollgate http http://127.0.0.1:${PORT[tollgate${W}memory]}/open"
  echo "tollgate+limit http http://127.0.0.1:${PORT[tollgate${W}memory]}/all"
  echo "tollgate+limit/deny http http://127.0.0.1:${PORT[tollgate${W}memory]}/few"
  echo "tollgate+limit/steal http http://127.0.0.1:${PORT[tollgate${W}steal]}/all"
  echo "tollgate+limit/no-steal http http://127.0.0.1:${PORT[tollgate${W}nosteal]}/all"
  echo "tollgate+limit/pingora-path http http://127.0.0.1:${PORT[tollgate${W}pingorapath]}/all"
  echo "tollgate+jwt jwt http://127.0.0.1:${PORT[tollgate${W}memory]}/jwt"
  echo "tollgate+redis http http://127.0.0.1:${PORT[tollgate${W}redis]}/all"
  echo "tollgate+redis/batched http http://127.0.0.1:${PORT[tollgate${W}redis]}/batched"
  if [ "$HAVE_TLS" = 1 ]; then
    echo "tollgate/https http https://127.0.0.1:${PORT[tollgate${W}tls]}/open"
    echo "tollgate+limit/https http https://127.0.0.1:${PORT[tollgate${W}tls]}/all"
  fi
  if [ -n "${PORT[tollgate${W}log]:-}" ]; then
    echo "tollgate+limit+log http http://127.0.0.1:${PORT[tollgate${W}log]}/all"
  fi
  if [ "$HAVE_WS" = 1 ]; then
    echo "ws_direct ws ws://127.0.0.1:$WSECHO/ws/open"
    echo "ws_tollgate ws ws://127.0.0.1:${PORT[tollgate${W}memory]}/ws/open"
    echo "ws_tollgate+limit ws ws://127.0.0.1:${PORT[tollgate${W}memory]}/ws/limited"
  fi
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s; $ROUNDS interleaved rounds; workers: $WORKERS"
for W in $WORKERS; do   # warm-up: connections, Redis script, caches
  variants "$W" | while read -r name kind url; do
    if [ "$kind" = http ]; then wrk -t1 -c8 -d1s "$url" >/dev/null; fi
    if [ "$kind" = jwt ]; then wrk -t1 -c8 -d1s -H "authorization: Bearer $JWT" "$url" >/dev/null; fi
  done
done
RESULTS="$WORK/results.txt"; : > "$RESULTS"
for round in $(seq 1 "$ROUNDS"); do
  for W in $WORKERS; do
    while read -r name kind url; do
      case $kind in
        http) out=$(http_run "$url") ;;
        jwt) out=$(http_run "$url" -H "authorization: Bearer $JWT") ;;
        *) out=$(ws_run "$url") ;;
      esac
      echo "$name $W $out" >> "$RESULTS"
      [ "$name" != tollgate+limit+log ] || : > "$WORK/access$W.log"   # bounded disk use
    done < <(variants "$W")
  done
  echo "round $round of $ROUNDS done" >&2
done

if [ "$HAVE_OHA" = 1 ]; then
  # Open loop at a fixed rate every proxy sustains: latency without the
  # coordinated omission of a closed loop. Rounds interleaved as above.
  RATE=${RATE:-4000}
  open_loop() { # name url, per worker count
    local W=$1
    echo "nginx+limit_req http://127.0.0.1:${PORT[nginx$W]}/all"
    echo "pingora http://127.0.0.1:${PORT[pingora${W}steal]}/open"
    [ "$HAVE_PINGAP" = 1 ] && echo "pingap+limit http://127.0.0.1:${PORT[pingap$W]}/all"
    echo "tollgate+limit http://127.0.0.1:${PORT[tollgate${W}memory]}/all"
    echo "tollgate+limit/steal http://127.0.0.1:${PORT[tollgate${W}steal]}/all"
    echo "tollgate+limit/no-steal http://127.0.0.1:${PORT[tollgate${W}nosteal]}/all"
    echo "tollgate+limit/pingora-path http://127.0.0.1:${PORT[tollgate${W}pingorapath]}/all"
  }
  for round in $(seq 1 "$ROUNDS"); do
    for W in $WORKERS; do
      while read -r name url; do
        # prints "name workers p50_ms p99_ms p99.9_ms non-2xx"
        oha -z "${DURATION}s" -q "$RATE" -c "$CONNECTIONS" --latency-correction --no-tui --output-format json "$url" \
          | python3 -c '
import json, sys
d = json.load(sys.stdin)
p = d["latencyPercentiles"]
codes = {c: n for c, n in d.get("statusCodeDistribution", {}).items() if not c.startswith("2")}
# requests still in flight when -z ends are "aborted due to deadline": not failures
errors = {e: n for e, n in d.get("errorDistribution", {}).items() if "deadline" not in e}
bad = sum(codes.values()) + sum(errors.values())
if bad:
    print(f"oha {sys.argv[1]} ({sys.argv[2]} workers): non-2xx {codes}, errors {errors}", file=sys.stderr)
print(sys.argv[1], sys.argv[2], p["p50"] * 1000, p["p99"] * 1000, p["p99.9"] * 1000, bad)' "$name" "$W" >> "$WORK/oha.txt"
      done < <(open_loop "$W")
    done
    echo "open-loop round $round of $ROUNDS done" >&2
  done
fi

python3 - "$RESULTS" "$WORK/oha.txt" "${RATE:-4000}" <<'PY'
import collections, os, statistics, sys
rows = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, w, rps, p50, p99 = line.split()
    rows[(name, int(w))].append((float(rps), float(p50), float(p99)))
def med(key, i=0):
    v = [r[i] for r in rows.get(key, [])]
    return statistics.median(v) if v else float("nan")
def have(name):
    return any((name, w) in rows for w in workers)
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
    ("tollgate+limit / pingora (each with its default runtime)", "tollgate+limit", "pingora"),
    ("tollgate+limit/no-steal / pingora/no-steal (both one runtime per thread)", "tollgate+limit/no-steal", "pingora/no-steal"),
    ("tollgate+limit/steal / pingora (both work stealing)", "tollgate+limit/steal", "pingora"),
    ("pingora/no-steal / pingora (Pingora's runtime flavours)", "pingora/no-steal", "pingora"),
    ("tollgate+limit/no-steal / tollgate+limit/steal (tollgate's runtime flavours)", "tollgate+limit/no-steal", "tollgate+limit/steal"),
    ("tollgate+limit / pingap+limit", "tollgate+limit", "pingap+limit"),
    ("fast loop / Pingora's proxy phases (tollgate+limit / tollgate+limit/pingora-path)", "tollgate+limit", "tollgate+limit/pingora-path"),
    ("tollgate+limit/pingora-path / pingora", "tollgate+limit/pingora-path", "pingora"),
    ("pingap+limit / pingora (what Pingap adds to Pingora)", "pingap+limit", "pingora"),
    ("pingora / nginx", "pingora", "nginx"),
    ("tollgate+limit / nginx+limit_req", "tollgate+limit", "nginx+limit_req"),
    ("tollgate+limit/deny / nginx+limit_req/deny", "tollgate+limit/deny", "nginx+limit_req/deny"),
    ("limits on / off (tollgate+limit / tollgate)", "tollgate+limit", "tollgate"),
    ("Redis / memory (tollgate+redis / tollgate+limit)", "tollgate+redis", "tollgate+limit"),
    ("Redis batched / memory (tollgate+redis/batched / tollgate+limit)", "tollgate+redis/batched", "tollgate+limit"),
    ("429 / admitted (tollgate+limit/deny / tollgate+limit)", "tollgate+limit/deny", "tollgate+limit"),
    ("JWT-keyed / IP-keyed limit (tollgate+jwt / tollgate+limit)", "tollgate+jwt", "tollgate+limit"),
    ("tollgate/https / nginx/https (no limits)", "tollgate/https", "nginx/https"),
    ("tollgate+limit/https / nginx/https", "tollgate+limit/https", "nginx/https"),
    ("access log on / off (tollgate+limit+log / tollgate+limit)", "tollgate+limit+log", "tollgate+limit"),
    ("tollgate / direct (of the ceiling)", "tollgate", "direct"),
    ("ws tollgate / direct", "ws_tollgate", "ws_direct"),
    ("ws message limit on / off", "ws_tollgate+limit", "ws_tollgate"),
]
for label, a, b in ratios:
    if not (have(a) and have(b)):
        continue  # e.g. pingap not installed
    cells = []
    for w in workers:
        cells.append(f"{med((a, w)) / med((b, w)):.2f}")
    print(f"| {label} | " + " | ".join(cells) + " |")
p99 = []
for w in workers:
    p99.append(f"{med(('tollgate+limit', w), 2):.2f} vs {med(('nginx+limit_req', w), 2):.2f}")
print(f"| p99 ms, tollgate+limit vs nginx+limit_req (wrk) | " + " | ".join(p99) + " |")
if os.path.exists(sys.argv[2]):
    rate = sys.argv[3]
    oha = collections.defaultdict(list)
    for line in open(sys.argv[2]):
        name, w, p50, p99, p999, bad = line.split()
        oha[(name, int(w))].append((float(p50), float(p99), float(p999), int(bad)))
    def omed(key, i):
        v = [r[i] for r in oha.get(key, [])]
        return statistics.median(v) if v else float("nan")
    print()
    print(f"| open loop (oha -q {rate}, latency-corrected; medians) | workers | p50 ms | p99 ms | p99.9 ms | p99 min-max | non-2xx or errors |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for w in sorted({w for _, w in oha}):
        for n in dict.fromkeys(n for n, _ in oha):
            k = (n, w)
            if k not in oha: continue
            p99s = [r[1] for r in oha[k]]
            print(f"| {n} | {w} | {omed(k,0):.2f} | {omed(k,1):.2f} | {omed(k,2):.2f} | {min(p99s):.2f}-{max(p99s):.2f} | {sum(r[3] for r in oha[k])} |")
    ows = sorted({w for _, w in oha})
    print()
    print("| open-loop ratio | " + " | ".join(f"{w} worker{'s' if w > 1 else ''}" for w in ows) + " |")
    print("| --- |" + " ---: |" * len(ows))
    for t in ("tollgate+limit", "tollgate+limit/steal", "tollgate+limit/no-steal"):
        for label, i in (("p99", 1), ("p99.9", 2)):
            cells = [f"{omed((t, w), i) / omed(('nginx+limit_req', w), i):.2f}" for w in ows]
            print(f"| {label}, {t} / nginx+limit_req | " + " | ".join(cells) + " |")
PY
