#!/usr/bin/env bash
# Instructions per WebSocket message round trip through two tollgate
# binaries, counted by valgrind (callgrind): what a change to the tunnel
# costs or saves where message rates are too noisy to tell:
#
#   bash bench/ws_instructions.sh OLD_BINARY NEW_BINARY
#
# Each binary runs under callgrind with one worker, in front of the echo
# upstream of examples/ws_bench.rs (no limits: every tunnel is inspected
# frame by frame anyway), twice: `ws_bench drive` keeps 8 connections busy
# (send, wait for the echo) for 2 s and then for 8 s. The difference in
# instructions over the difference in echoed messages is the cost of one
# round trip (a client message up, its echo down) without start-up and
# shutdown; the message counts differ from run to run, the cost per message
# much less (repeatable to about 1 %). Loopback only, bounded, stops what
# it starts. Needs valgrind (apt-get install valgrind); builds the ws_bench
# example when missing.
set -euo pipefail
OLD=${1:?old binary}; NEW=${2:?new binary}
HERE=$(cd "$(dirname "$0")/.." && pwd)
. "$HERE/bench/lib.sh"
require "apt-get install valgrind" valgrind python3
WSBENCH=$HERE/target/release/examples/ws_bench
[ -x "$WSBENCH" ] || (cd "$HERE" && cargo build --release --quiet --example ws_bench)
scratch ws-instructions

ECHO=$(free_port)
"$WSBENCH" serve "127.0.0.1:$ECHO" >/dev/null 2>&1 & PIDS+=($!)
wait_port "$ECHO"

# "instructions messages" of binary $1 relaying for $2 seconds.
count() {
  local bin=$1 seconds=$2 port admin out pid rate
  port=$(free_port); admin=$(free_port); out="$WORK/callgrind.$RANDOM"
  cat > "$WORK/gateway.yaml" <<YAML
server: { listen: ["127.0.0.1:$port"], admin: "127.0.0.1:$admin", threads: 1, watch: false }
upstreams: { echo: { servers: ["127.0.0.1:$ECHO"] } }
rules:
  - { name: ws, match: { path: "/**" }, upstream: echo }
YAML
  RUST_LOG=error valgrind --tool=callgrind --callgrind-out-file="$out" "$bin" run -c "$WORK/gateway.yaml" >/dev/null 2>&1 &
  pid=$!
  # Slow under valgrind: allow a minute to start.
  for _ in $(seq 1 1200); do (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.05; done
  read -r rate _ < <("$WSBENCH" drive "ws://127.0.0.1:$port/ws" 8 "$seconds")
  kill -INT "$pid"; wait "$pid" 2>/dev/null || true
  echo "$(callgrind_total "$out") $((rate * seconds))"
}

for side in old new; do
  bin=$OLD; [ "$side" = new ] && bin=$NEW
  read -r small_i small_m < <(count "$bin" 2)
  read -r large_i large_m < <(count "$bin" 8)
  [ "$large_m" -gt "$small_m" ] || { echo "$side: no more messages in 8 s than in 2 s" >&2; exit 1; }
  per=$(( (large_i - small_i) / (large_m - small_m) ))
  echo "$side: $per instructions per message round trip ($small_m and $large_m messages)"
  echo "$per" > "$WORK/$side"
done
python3 -c "o=int(open('$WORK/old').read()); n=int(open('$WORK/new').read()); print(f'new/old instructions per round trip: {n/o:.3f}')"
