#!/usr/bin/env bash
# Where a proxied request's CPU goes, for nginx + limit_req, the bare Pingora
# proxy and tollgate + one memory limit: user and system time per request
# (from /proc) and, when `perf` is installed, system calls per request:
#
#   bash bench/cpu.sh [rounds] [seconds]        # defaults: 3 rounds of 4 s per proxy
#
# Each proxy runs with one worker (nginx worker_processes 1, the bare Pingora
# proxy without work stealing, tollgate with server.threads: 1) in front of an
# nginx origin; wrk -t1 -c50 drives one proxy at a time, rounds interleaved
# (A B C A B C ...). The server process's ticks (user and system, nginx's
# worker only) over the run divided by the requests wrk counted are the CPU
# per request; the table shows medians. System time is what the kernel spends
# on the proxy's sockets; user time is the proxy's own code.
#
# Loopback only, bounded (rounds x 3 x (seconds + 1 s)), stops what it starts.
# Needs nginx and wrk (apt-get install nginx wrk); perf is optional
# (apt-get install linux-perf). Builds the release binaries when missing.
set -euo pipefail
ROUNDS=${1:-3}
DURATION=${2:-4}
HERE=$(cd "$(dirname "$0")/.." && pwd)
. "$HERE/bench/lib.sh"
require "apt-get install nginx wrk" nginx wrk python3
BIN=${TOLLGATE:-$HERE/target/release/tollgate}
BASELINE=$HERE/target/release/examples/pingora_baseline
[ -x "$BIN" ] && [ -x "$BASELINE" ] ||
  (cd "$HERE" && cargo build --release --quiet --bin tollgate --example pingora_baseline)
HAVE_PERF=0
command -v perf >/dev/null && perf stat -e raw_syscalls:sys_enter -- true >/dev/null 2>&1 && HAVE_PERF=1
scratch cpu

ORIGIN=$(free_port); start_origin "$ORIGIN"
declare -A PORT PID
PORT[nginx]=$(free_port)
nginx_conf nginx 1 <<NGINX
  upstream origin { server 127.0.0.1:$ORIGIN; keepalive 128; }
  limit_req_zone \$binary_remote_addr zone=all:10m rate=100000000r/s;
  server {
    listen 127.0.0.1:${PORT[nginx]};
    proxy_http_version 1.1;
    proxy_set_header Connection "";
    location / { limit_req zone=all burst=100000 nodelay; proxy_pass http://origin; }
  }
NGINX
nginx -c "$WORK/nginx.conf" -p "$WORK" >/dev/null 2>&1 & PIDS+=($!); NGINX_MASTER=$!
PORT[pingora]=$(free_port)
RUST_LOG=error "$BASELINE" "127.0.0.1:${PORT[pingora]}" "127.0.0.1:$ORIGIN" 1 no-steal >/dev/null 2>&1 &
PIDS+=($!); PID[pingora]=$!
PORT[tollgate]=$(free_port)
cat > "$WORK/tollgate.yaml" <<YAML
server: { listen: ["127.0.0.1:${PORT[tollgate]}"], admin: "127.0.0.1:$(free_port)", threads: 1, watch: false }
upstreams: { origin: { servers: ["127.0.0.1:$ORIGIN"] } }
rules:
  - { name: all, match: { path: "/**" }, upstream: origin, limits: [{ name: per-ip, key: ip, rate: 100000000/second }] }
YAML
RUST_LOG=error "$BIN" run -c "$WORK/tollgate.yaml" >/dev/null 2>&1 & PIDS+=($!); PID[tollgate]=$!
for v in nginx pingora tollgate; do wait_port "${PORT[$v]}"; done
wait_port "$ORIGIN"
# nginx's requests are served by its worker, a child of the master.
for _ in $(seq 1 100); do PID[nginx]=$(pgrep -P "$NGINX_MASTER" | head -1) && break; sleep 0.05; done

ticks() { awk '{print $14, $15}' "/proc/$1/stat"; }   # user and system, in clock ticks

echo "machine: $(nproc) cores, $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(uname -r)"
echo "wrk -t1 -c50 -d${DURATION}s per proxy; $ROUNDS interleaved rounds; system calls counted: $([ $HAVE_PERF = 1 ] && echo yes || echo 'no (perf missing)')"
for v in nginx pingora tollgate; do wrk -t1 -c50 -d1s "http://127.0.0.1:${PORT[$v]}/all" >/dev/null; done
: > "$WORK/results"
for round in $(seq 1 "$ROUNDS"); do
  for v in nginx pingora tollgate; do
    pid=${PID[$v]}
    read -r u0 s0 < <(ticks "$pid")
    if [ "$HAVE_PERF" = 1 ]; then
      perf stat -x, -e raw_syscalls:sys_enter -p "$pid" -o "$WORK/perf" -- sleep $((DURATION + 1)) &
      PERF=$!
    fi
    out=$(wrk -t1 -c50 -d"${DURATION}s" "http://127.0.0.1:${PORT[$v]}/all")
    read -r u1 s1 < <(ticks "$pid")
    calls=0
    if [ "$HAVE_PERF" = 1 ]; then
      wait "$PERF"
      calls=$(awk -F, '$3 == "raw_syscalls:sys_enter" {print $1}' "$WORK/perf")
    fi
    requests=$(echo "$out" | grep -oE '[0-9]+ requests in' | cut -d' ' -f1)
    echo "$v $requests $((u1 - u0)) $((s1 - s0)) $calls" >> "$WORK/results"
  done
  echo "round $round of $ROUNDS done" >&2
done

python3 - "$WORK/results" "$(getconf CLK_TCK)" "$DURATION" <<'PY'
import collections, statistics, sys
hz, seconds = int(sys.argv[2]), float(sys.argv[3])
runs = collections.defaultdict(list)
for line in open(sys.argv[1]):
    name, requests, user, system, calls = line.split()
    requests = int(requests)
    # perf counts over the run plus up to a second of idle: per request, that
    # second adds nothing (an idle proxy makes no system calls).
    runs[name].append((requests / seconds, int(user) / hz * 1e6 / requests,
                       int(system) / hz * 1e6 / requests, int(calls) / requests))
def med(name, i): return statistics.median(r[i] for r in runs[name])
label = {"nginx": "nginx + limit_req", "pingora": "bare Pingora proxy", "tollgate": "tollgate + memory limit"}
print()
print("| proxy (1 worker) | req/s (median) | user µs/request | system µs/request | CPU µs/request | system calls/request |")
print("| --- | ---: | ---: | ---: | ---: | ---: |")
for name in runs:
    calls = f"{med(name, 3):.2f}" if med(name, 3) else "-"
    print(f"| {label[name]} | {med(name, 0):.0f} | {med(name, 1):.1f} | {med(name, 2):.1f} "
          f"| {med(name, 1) + med(name, 2):.1f} | {calls} |")
PY
