#!/usr/bin/env bash
# Runs `client bench` over a matrix (concurrency x target mode x conflict share) against a fresh
# local cluster and prints one line per run. Usage:
#   bench/matrix.sh [DURATION_S] [WRITE_PCT]      (defaults: 10, 100)
# Environment: CONCURRENCY="1 16 128", TARGETS="single round-robin", CONFLICTS="0 100",
# REPLICA_FLAGS (passed to run.sh), CONFIG.
set -euo pipefail
cd "$(dirname "$0")/.."
DURATION=${1:-10}
WRITE_PCT=${2:-100}
CONCURRENCY=${CONCURRENCY:-"1 16 128"}
TARGETS=${TARGETS:-"single round-robin"}
CONFLICTS=${CONFLICTS:-"0 100"}
CONFIG=${CONFIG:-config.json}
# A plaintext cluster (REPLICA_FLAGS=--insecure) is driven by a plaintext client.
case " ${REPLICA_FLAGS:-} " in *" --insecure "*) CLIENT_FLAGS="--insecure" ;; *) CLIENT_FLAGS="" ;; esac
export CONFIG

./run.sh stop >/dev/null 2>&1 || true
./run.sh start >/dev/null
trap './run.sh stop >/dev/null 2>&1' EXIT

printf '%-12s %5s %9s %10s %8s %8s %8s %7s\n' target conc conflict ops/s p50_ms p99_ms max_ms errors
for target in $TARGETS; do
  for conflict in $CONFLICTS; do
    for c in $CONCURRENCY; do
      line=$(target/release/client --config "$CONFIG" $CLIENT_FLAGS --target "$target" bench \
        --duration "$DURATION" --concurrency "$c" --keys 100000 --write-pct "$WRITE_PCT" \
        --conflict-pct "$conflict" --value-size 16 --json 2>/dev/null)
      python3 - "$target" "$c" "$conflict" "$line" <<'PY'
import json, sys
t, c, p, line = sys.argv[1:5]
r = json.loads(line)
print(f"{t:<12} {c:>5} {p+'%':>9} {r['ops_per_sec']:>10.0f} {r['p50_ms']:>8.2f} {r['p99_ms']:>8.2f} {r['max_ms']:>8.1f} {r['errors']:>7}")
PY
    done
  done
done
target/release/client --config "$CONFIG" $CLIENT_FLAGS status | tail -n 1
