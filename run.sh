#!/usr/bin/env bash
# Runs the gateway from a fresh checkout: installs cmake when it is missing
# (Pingora's zlib-ng build needs it), then `cargo run --release`. Arguments go
# to tollgate: `bash run.sh check`, `bash run.sh run -c examples/multi-upstream.yaml`.
set -euo pipefail
cd "$(dirname "$0")"
bash .ci/install cmake
exec cargo run --release --locked -- "$@"
