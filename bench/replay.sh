#!/usr/bin/env bash
# How fast `tollgate replay` reads and decides an access log:
#
#   bash bench/replay.sh [BINARY] [lines]     # defaults: target/release/tollgate, 1,000,000
#
# Generates a JSON access log of `lines` requests (2,000 clients of 100
# tenants over one hour, as the gateway writes them: decided_at to the
# nanosecond, identity digests for the tenant header, a tenth of them
# limited), once plain and once gzipped, and replays each through a config
# with a per-IP and a per-tenant limit on two rules. Prints lines per minute
# the CPU time and the peak memory the replay used (it runs on one thread). Nothing
# network; the scratch directory goes at the end.
set -euo pipefail
HERE=$(cd "$(dirname "$0")/.." && pwd)
BIN=${1:-$HERE/target/release/tollgate}
LINES=${2:-1000000}
. "$HERE/bench/lib.sh"
require "apt-get install python3 gzip time" python3 gzip /usr/bin/time
[ -x "$BIN" ] || { echo "no binary at $BIN: cargo build --release" >&2; exit 1; }
scratch replay

cat > "$WORK/candidate.yaml" <<'YAML'
server: { listen: ["127.0.0.1:1"], admin: "127.0.0.1:2" }
upstreams: { api: { servers: ["127.0.0.1:3"] } }
rules:
  - name: batch
    match: { path: "/batch/**" }
    upstream: api
    exempt: [{ header: { name: x-internal, value: "batch-*" } }]
    limits: [{ name: per-ip, key: ip, rate: 20/minute }]
  - name: api
    match: { path: "/**" }
    upstream: api
    limits:
      - { name: per-ip, key: ip, rate: 5/second, burst: 20 }
      - { name: per-tenant, key: { header: x-tenant }, rate: 50/second, missing: skip }
YAML

python3 - "$WORK/access.log" "$LINES" <<'PY'
import hashlib, json, random, sys
from datetime import datetime, timedelta, timezone
path, lines = sys.argv[1], int(sys.argv[2])
random.seed(7)
start = datetime(2026, 12, 1, 10, tzinfo=timezone.utc)
tenants = [hashlib.sha256(f"tenant-{t}".encode()).hexdigest() for t in range(100)]
step = 3600e9 / lines  # nanoseconds between requests: one hour in all
with open(path, "w") as out:
    for n in range(lines):
        ns = int(n * step)
        at = start + timedelta(microseconds=ns // 1000)
        client = random.randrange(2000)
        batch = random.random() < 0.1
        limited = random.random() < 0.1
        line = {
            "time": at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond // 1000:03d}Z",
            "request_id": f"{n:032x}",
            "client_ip": f"10.{client // 65536}.{client // 256 % 256}.{client % 256}",
            "method": "GET", "host": "api.example.com",
            "path": "/batch/run" if batch else f"/v1/items/{n % 977}",
            "protocol": "HTTP/1.1", "tls": False,
            "status": 429 if limited else 200,
            "rule": "batch" if batch else "api",
            "outcome": "limited" if limited else "allowed",
            "limit": {"name": "per-ip", "allowed": not limited, "remaining": 0},
            "decided_at": at.strftime("%Y-%m-%dT%H:%M:%S.") + f"{at.microsecond:06d}{ns % 1000:03d}Z",
            "identity": {"parts": {"header:x-tenant": tenants[client % 100]}},
            "upstream": "api", "bytes_in": 0, "bytes_out": 15,
            "duration_ms": 0.8, "upstream_ms": 0.5, "limiter_ms": 0.01,
        }
        out.write(json.dumps(line, separators=(",", ":")) + "\n")
PY
gzip -k "$WORK/access.log"
echo "log: $LINES lines, $(du -h "$WORK/access.log" | cut -f1) plain, $(du -h "$WORK/access.log.gz" | cut -f1) gzipped"

for log in access.log access.log.gz; do
  /usr/bin/time -o "$WORK/time" -f '%e %U %S %M' \
    "$BIN" -c "$WORK/candidate.yaml" replay --json "$WORK/$log" >"$WORK/report.json" 2>/dev/null
  times=$(cat "$WORK/time")
  python3 - "$log" "$LINES" "$times" "$WORK/report.json" <<'PY'
import json, sys
log, lines, times, report = sys.argv[1], int(sys.argv[2]), sys.argv[3].split(), json.load(open(sys.argv[4]))
wall, user, system, rss = map(float, times)
assert report["requests"] == lines and report["bad_lines"] == 0, report["bad_lines"]
print(f"{log:15} {wall:6.2f} s wall, {user + system:6.2f} s CPU: "
      f"{lines / wall * 60 / 1e6:5.2f} M lines/minute ({lines / (user + system) * 60 / 1e6:5.2f} M per CPU-minute), "
      f"peak RSS {rss / 1024:.0f} MiB ({rss * 1024 / lines:.0f} bytes per line)")
PY
done
