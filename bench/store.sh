#!/usr/bin/env bash
# Throughput and latency through tollgate with the memory store and with the
# Redis store (exact), side by side: A/B rounds, medians and the ratio.
#
#   cargo build --release && bash bench/store.sh [rounds] [seconds]
#
# Loopback only, bounded (rounds x 2 runs of `seconds`), stops what it starts.
# Needs nginx (the origin: `return 200`), redis-server and wrk.
set -euo pipefail
ROUNDS=${1:-3}
SECONDS_PER_RUN=${2:-8}
CONNECTIONS=${CONNECTIONS:-32}
THREADS=${THREADS:-2}
HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN="$HERE/target/release/tollgate"
for tool in nginx redis-server wrk python3; do
  command -v "$tool" >/dev/null || { echo "missing $tool: apt-get install nginx redis-server wrk" >&2; exit 1; }
done
[ -x "$BIN" ] || { echo "build first: cargo build --release" >&2; exit 1; }

WORK=$(mktemp -d /tmp/tollgate-store-bench.XXXXXX)
PIDS=()
cleanup() { for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done; wait 2>/dev/null || true; rm -rf "$WORK"; }
trap cleanup EXIT

. "$(dirname "$0")/lib.sh"

ORIGIN=$(free_port); REDIS=$(free_port)
start_origin "$ORIGIN"
redis-server --port "$REDIS" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK" >/dev/null & PIDS+=($!)
wait_port "$ORIGIN"; wait_port "$REDIS"

start_gateway() { # name store-yaml -> port
  local name=$1 store=$2 port admin
  port=$(free_port); admin=$(free_port)
  cat > "$WORK/$name.yaml" <<YAML
server: { listen: ["127.0.0.1:$port"], admin: "127.0.0.1:$admin", threads: $THREADS, watch: false }
store: $store
upstreams: { origin: { servers: ["127.0.0.1:$ORIGIN"] } }
rules:
  - name: all
    match: { path: "/**" }
    upstream: origin
    limits: [{ name: per-ip, key: ip, rate: 100000000/second }]
YAML
  RUST_LOG=error "$BIN" run -c "$WORK/$name.yaml" >/dev/null 2>&1 & PIDS+=($!)
  wait_port "$port"
  echo "$port"
}
MEMORY=$(start_gateway memory "{ backend: memory }")
SHARED=$(start_gateway redis "{ backend: redis, redis: { url: \"redis://127.0.0.1:$REDIS\" }, on_error: deny }")

run() { # port -> "rps p50_ms p99_ms"
  wrk -t"$THREADS" -c"$CONNECTIONS" -d"${SECONDS_PER_RUN}s" --latency "http://127.0.0.1:$1/bench" |
    python3 -c '
import re, sys
text = sys.stdin.read()
if re.search(r"Non-2xx|Socket errors", text): sys.exit("errors in the run:\n" + text)
def ms(v, unit): return float(v) * {"us": 0.001, "ms": 1, "s": 1000}[unit]
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", text).group(1))
p = {k: ms(v, u) for k, v, u in re.findall(r"^\s+(50|99)%\s+([\d.]+)(us|ms|s)$", text, re.M)}
print(rps, p["50"], p["99"])'
}

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)"
echo "wrk -t$THREADS -c$CONNECTIONS -d${SECONDS_PER_RUN}s, tollgate threads: $THREADS, $ROUNDS rounds"
run "$MEMORY" >/dev/null; run "$SHARED" >/dev/null   # warm up (and load the script)
: > "$WORK/memory.txt"; : > "$WORK/redis.txt"
for round in $(seq 1 "$ROUNDS"); do
  run "$MEMORY" >> "$WORK/memory.txt"
  run "$SHARED" >> "$WORK/redis.txt"
done
python3 - "$WORK/memory.txt" "$WORK/redis.txt" <<'PY'
import statistics, sys
rows = {name: [list(map(float, l.split())) for l in open(path)] for name, path in zip(["memory", "redis"], sys.argv[1:])}
def col(name, i): return [r[i] for r in rows[name]]
print(f"{'store':8} {'req/s (median, min-max)':>30} {'p50 ms':>8} {'p99 ms':>8}")
for name in rows:
    rps = col(name, 0)
    print(f"{name:8} {statistics.median(rps):>12.0f} ({min(rps):.0f}-{max(rps):.0f}) {statistics.median(col(name, 1)):>8.2f} {statistics.median(col(name, 2)):>8.2f}")
ratio = statistics.median(col("redis", 0)) / statistics.median(col("memory", 0))
added = statistics.median(col("redis", 1)) - statistics.median(col("memory", 1))
print(f"redis / memory throughput: {ratio:.2f}x; added p50 latency: {added:.2f} ms")
PY
