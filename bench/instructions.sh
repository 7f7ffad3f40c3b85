#!/usr/bin/env bash
# Instructions per proxied request of two tollgate binaries, counted by
# valgrind (callgrind), for a change that must not make the gateway slower
# where wall-clock rates are too noisy to tell (a shared 2-core VM):
#
#   bash bench/instructions.sh OLD_BINARY NEW_BINARY [requests]
#
# Either binary may be examples/pingora_baseline (a bare Pingora proxy), to
# see what tollgate adds to Pingora:
#   bash bench/instructions.sh target/release/examples/pingora_baseline target/release/tollgate
#
# OLD_SERVER / NEW_SERVER add settings to one side's `server:` block, to
# compare settings of one binary (as in bench/compare.sh), and OLD_LIMITS /
# NEW_LIMITS replace one side's list of limits, and OLD_CONFIG / NEW_CONFIG add
# top-level sections to one side's config:
#   OLD_SERVER="http1_path: pingora" NEW_SERVER="http1_path: fast" \
#     bash bench/instructions.sh target/release/tollgate target/release/tollgate
#   OLD_LIMITS="[]" bash bench/instructions.sh target/release/tollgate target/release/tollgate   # limits on/off
#   NEW_CONFIG="access_log: { format: json, path: /tmp/access.log }" bash bench/instructions.sh …   # log off/on
#
# Each binary runs under callgrind with the config of bench/compare.sh (one
# memory limit admitting everything, an nginx origin answering 200) twice:
# once for 1,000 keep-alive requests from `ab` and once for 1,000 + `requests`
# (default 10,000). The difference over `requests` is the cost of a request
# without start-up and shutdown. Counts are repeatable to a fraction of a per
# cent for the same binary; background tasks that run on wall-clock time (the
# store sweep, timers) add a little noise. Loopback only, bounded, stops what
# it starts. Needs valgrind, nginx and ab (apt-get install valgrind nginx
# apache2-utils).
set -euo pipefail
OLD=${1:?old binary}; NEW=${2:?new binary}
REQUESTS=${3:-10000}
BASE=1000
HERE=$(cd "$(dirname "$0")/.." && pwd)
. "$HERE/bench/lib.sh"
require "apt-get install valgrind nginx apache2-utils" valgrind nginx ab python3
scratch instructions

LIMIT="[{ name: per-ip, key: ip, rate: 100000000/second }]"
ORIGIN=$(free_port)
start_origin "$ORIGIN"
wait_port "$ORIGIN"

# Total instructions of one run of $1 serving $2 requests, with the
# server settings $3.
count() {
  local bin=$1 n=$2 extra=${3:-} limits=${4:-$LIMIT} config=${5:-} port admin out pid
  port=$(free_port); admin=$(free_port); out="$WORK/callgrind.$RANDOM"
  cat > "$WORK/gateway.yaml" <<YAML
server: { listen: ["127.0.0.1:$port"], admin: "127.0.0.1:$admin", threads: 1, watch: false${extra:+, $extra} }
upstreams: { origin: { servers: ["127.0.0.1:$ORIGIN"] } }
rules:
  - { name: all, match: { path: "/**" }, upstream: origin, limits: $limits }
$config
YAML
  gateway_args "$bin" "$port" "$WORK/gateway.yaml"
  RUST_LOG=error valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" "${ARGS[@]}" >/dev/null 2>&1 &
  pid=$!
  # Slow under valgrind: allow a minute to start.
  for _ in $(seq 1 1200); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  ab -q -k -c 8 -n "$n" "http://127.0.0.1:$port/all" >"$WORK/ab.out" 2>&1 ||
    { echo "ab failed:" >&2; cat "$WORK/ab.out" >&2; exit 1; }
  grep -q "^Failed requests: *0" "$WORK/ab.out" || { echo "requests failed:" >&2; cat "$WORK/ab.out" >&2; exit 1; }
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  callgrind_total "$out"
}

for side in old new; do
  bin=$OLD; extra=${OLD_SERVER:-}; limits=${OLD_LIMITS:-$LIMIT}; config=${OLD_CONFIG:-}
  [ "$side" = new ] && { bin=$NEW; extra=${NEW_SERVER:-}; limits=${NEW_LIMITS:-$LIMIT}; config=${NEW_CONFIG:-}; }
  small=$(count "$bin" "$BASE" "$extra" "$limits" "$config")
  large=$(count "$bin" $((BASE + REQUESTS)) "$extra" "$limits" "$config")
  per=$(( (large - small) / REQUESTS ))
  echo "$side: $per instructions per request ($small for $BASE requests, $large for $((BASE + REQUESTS)))"
  echo "$per" > "$WORK/$side"
done
python3 -c "o=int(open('$WORK/old').read()); n=int(open('$WORK/new').read()); print(f'new/old instructions per request: {n/o:.3f}')"
