# Shared by the bench scripts: ports, readiness, and the nginx origin.
# Expects WORK (a scratch directory) and PIDS (an array of started processes).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
  for _ in $(seq 1 400); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "nothing listens on port $1" >&2; exit 1
}

# Writes $WORK/$1.conf: an nginx in the foreground with $2 workers, its pid
# and error log in WORK, and the body of its `http` block read from stdin.
nginx_conf() {
  {
    printf 'worker_processes %s;\ndaemon off;\npid %s/%s.pid;\nerror_log %s/%s-error.log;\n' \
      "$2" "$WORK" "$1" "$WORK" "$1"
    printf 'events { worker_connections 4096; }\nhttp {\n  access_log off;\n'
    cat
    printf '}\n'
  } > "$WORK/$1.conf"
}

# An nginx answering `200 ok` on 127.0.0.1:$1 with one worker: the fast upstream.
start_origin() {
  nginx_conf origin 1 <<NGINX
  server { listen 127.0.0.1:$1; location / { return 200 "ok\n"; } }
NGINX
  nginx -c "$WORK/origin.conf" -p "$WORK" >/dev/null 2>&1 & PIDS+=($!)
}

# Exits with how to install them unless every command after the hint exists.
require() {
  local hint=$1 tool; shift
  for tool in "$@"; do
    command -v "$tool" >/dev/null || { echo "missing $tool: $hint" >&2; exit 1; }
  done
}

# A scratch WORK directory and a PIDS list. On exit (or Ctrl-C, SIGTERM) every
# process in PIDS gets SIGINT (Pingora, Pingap and tollgate stop at once on it;
# SIGTERM would hold them through their grace period; nginx and Redis stop
# too), whatever still runs after 10 s gets SIGKILL, and the directory goes:
# nothing outlives the script.
scratch() {
  WORK=$(mktemp -d "/tmp/tollgate-$1.XXXXXX")
  PIDS=()
  trap stop_all EXIT
  trap 'exit 130' INT TERM
}
running() { local s; s=$(ps -o stat= -p "$1" 2>/dev/null) && [ "${s:0:1}" != Z ]; }
stop_all() {
  trap - INT TERM
  local p left
  for p in "${PIDS[@]}"; do kill -INT "$p" 2>/dev/null || true; done
  for _ in $(seq 1 100); do
    left=0; for p in "${PIDS[@]}"; do running "$p" && left=1; done
    [ "$left" = 0 ] && break; sleep 0.1
  done
  for p in "${PIDS[@]}"; do
    running "$p" || continue
    echo "still running 10 s after SIGINT, killed: $(ps -o args= -p "$p" 2>/dev/null)" >&2
    kill -KILL "$p" 2>/dev/null || true
  done
  wait 2>/dev/null || true
  rm -rf "$WORK"
}

# ARGS for gateway binary $1 to listen on port $2 with config file $3 and
# ORIGIN as its upstream: tollgate's `run -c`, or a pingora_baseline* build's
# listen/upstream/threads/runtimes (BASELINE_RUNTIMES: `steal`, Pingora's
# default, or `no-steal`, tollgate's).
gateway_args() {
  case "$(basename "$1")" in
    pingora_baseline*) ARGS=("127.0.0.1:$2" "127.0.0.1:$ORIGIN" 1 "${BASELINE_RUNTIMES:-steal}") ;;
    *) ARGS=(run -c "$3") ;;
  esac
}

# The instructions callgrind counted in its output files $1* (it writes one
# per thread group): their summaries summed.
callgrind_total() {
  cat "$1"* | python3 -c 'import sys; print(sum(int(l.split()[1]) for l in sys.stdin if l.startswith("summary:")))'
}
