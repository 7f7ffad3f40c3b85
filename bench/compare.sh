#!/usr/bin/env bash
# Two tollgate binaries side by side through the same proxy path, for a change
# that must not make the gateway slower (a refactor, a dependency bump):
#
#   bash bench/compare.sh OLD_BINARY NEW_BINARY [rounds] [seconds]
#
# Either binary may be examples/pingora_baseline (a bare Pingora proxy), to
# see what tollgate adds to Pingora.
#
# Both run with one worker and the same config (one memory limit admitting
# everything, in front of an nginx origin answering 200); wrk -t1 -c50 drives
# each in turn, rounds interleaved (old new old new ...). Prints each round and
# the median new/old ratios of requests per second and of the gateway's CPU
# time (user + system, from /proc) per request: on a shared machine the
# second moves much less with the neighbours than the first. Loopback only,
# bounded, stops what it starts.
# OLD_SERVER / NEW_SERVER add settings to one side's `server:` block, and
# OLD_LIMITS / NEW_LIMITS replace one side's list of limits, and OLD_CONFIG /
# NEW_CONFIG add top-level sections to one side's config, to compare two
# settings of one binary; THREADS sets server.threads on both (default 1):
#   NEW_SERVER="work_stealing: false" bash bench/compare.sh target/release/tollgate target/release/tollgate
#   OLD_LIMITS="[]" bash bench/compare.sh target/release/tollgate target/release/tollgate   # limits on/off
#   NEW_CONFIG="access_log: { format: json, path: /tmp/access.log }" bash bench/compare.sh …     # log off/on
# Needs nginx and wrk (apt-get install nginx wrk).
set -euo pipefail
OLD=${1:?old binary}; NEW=${2:?new binary}
ROUNDS=${3:-5}; DURATION=${4:-5}
HERE=$(cd "$(dirname "$0")/.." && pwd)
. "$HERE/bench/lib.sh"
require "apt-get install nginx wrk" nginx wrk python3
scratch compare

ORIGIN=$(free_port)
start_origin "$ORIGIN"
wait_port "$ORIGIN"
declare -A PORT PID
LIMIT="[{ name: per-ip, key: ip, rate: 100000000/second }]"
for side in old new; do
  P=$(free_port); A=$(free_port); PORT[$side]=$P
  extra=${OLD_SERVER:-}; limits=${OLD_LIMITS:-$LIMIT}; config=${OLD_CONFIG:-}
  [ "$side" = new ] && { extra=${NEW_SERVER:-}; limits=${NEW_LIMITS:-$LIMIT}; config=${NEW_CONFIG:-}; }
  cat > "$WORK/$side.yaml" <<YAML
server: { listen: ["127.0.0.1:$P"], admin: "127.0.0.1:$A", threads: ${THREADS:-1}, watch: false${extra:+, $extra} }
upstreams: { origin: { servers: ["127.0.0.1:$ORIGIN"] } }
rules:
  - { name: all, match: { path: "/**" }, upstream: origin, limits: $limits }
$config
YAML
  bin=$OLD; [ "$side" = new ] && bin=$NEW
  gateway_args "$bin" "$P" "$WORK/$side.yaml"
  RUST_LOG=error "$bin" "${ARGS[@]}" >/dev/null 2>&1 & PIDS+=($!); PID[$side]=$!
  wait_port "$P"
done

# CPU ticks (user + system) the gateway process $1 has used.
ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }

# Runs wrk against side $1; prints "requests/s CPU-microseconds/request".
measure() {
  local before after out
  before=$(ticks "${PID[$1]}")
  out=$(wrk -t1 -c50 -d"${DURATION}s" "http://127.0.0.1:${PORT[$1]}/all")
  after=$(ticks "${PID[$1]}")
  python3 -c '
import re, sys, os
out, ticks = sys.argv[1], int(sys.argv[2])
rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))
requests = int(re.search(r"(\d+) requests in", out).group(1))
hz = os.sysconf("SC_CLK_TCK")
print(f"{rps:.0f} {ticks / hz * 1e6 / requests:.2f}")' "$out" $((after - before))
}
: > "$WORK/ratios"
for round in $(seq 1 "$ROUNDS"); do
  read -r old old_cpu <<<"$(measure old)"; read -r new new_cpu <<<"$(measure new)"
  ratios=$(python3 -c "print(f'{$new/$old:.3f} {$new_cpu/$old_cpu:.3f}')")
  echo "round $round: old $old req/s $old_cpu us/req, new $new req/s $new_cpu us/req, new/old $ratios"
  echo "$ratios" >> "$WORK/ratios"
done
python3 -c "
import statistics
rows = [list(map(float, l.split())) for l in open('$WORK/ratios')]
for i, what in enumerate(['requests per second', 'CPU per request']):
    r = [row[i] for row in rows]
    print(f'median new/old {what}: {statistics.median(r):.3f} (min {min(r):.3f}, max {max(r):.3f})')"
