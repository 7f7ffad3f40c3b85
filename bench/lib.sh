# Shared by the bench scripts: ports, readiness, and the nginx origin.
# Expects WORK (a scratch directory) and PIDS (an array of started processes).

free_port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }

wait_port() {
  for _ in $(seq 1 400); do (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null && return 0; sleep 0.05; done
  echo "nothing listens on port $1" >&2; exit 1
}

# An nginx answering `200 ok` on 127.0.0.1:$1 with one worker: the fast upstream.
start_origin() {
  cat > "$WORK/origin.conf" <<NGINX
worker_processes 1;
daemon off;
pid $WORK/origin.pid;
error_log $WORK/origin-error.log;
events { worker_connections 4096; }
http { access_log off; server { listen 127.0.0.1:$1; location / { return 200 "ok\n"; } } }
NGINX
  nginx -c "$WORK/origin.conf" -p "$WORK" >/dev/null 2>&1 & PIDS+=($!)
}
