#!/usr/bin/env bash
# Side by side: a 3-member etcd cluster (Debian's etcd-server, its default fsync) and a 3-replica
# cluster of ours (durable: --sync fsync, the default), driven by the same load generator
# (`client bench`, which speaks etcd's KV API with --system etcd), on loopback, closed loop,
# 100,000 keys, 16-byte keys and values. Both sides plaintext (ours --insecure, etcd http://):
# TLS on one side only would not be a fair comparison.
#
# Cells: 100% PUT and 50% linearizable GET; concurrency 1, 16, 128, 512; single target (one
# replica / one etcd endpoint) and round-robin (all replicas / all endpoints). Each cell runs
# RUNS times per system, alternating systems run by run; the table shows medians. Our ceilings
# follow: 1 replica, and 3 replicas with --sync none. Server CPU is utime+stime of the server
# processes (/proc/PID/stat) across each run, per 1,000 answered commands.
# Attempts time out after 5 s (not the bench's default 1 s): at concurrency 512 a loaded but
# healthy server must not be taken for a slow one and avoided.
#
# Usage: bench/compare.sh [--quick] [--duration S] [--runs N] [--out DIR]
#   --quick: 1 run of 3 s per cell, concurrency 1 and 128 only, to try it (about 2 minutes).
#   --out: where runs.jsonl, table.txt and compare.svg go (default: a new directory under
#          bench/results/).
# Prints the table and ends with `ratio put c128 rr: X.XX` (our ops/s over etcd's) and
# `ratio p50 c1 rr: X.XX` (our p50 over etcd's), both 100% PUT, round-robin.
# Both clusters keep their data under $TMPDIR (default /tmp), which must be a real disk for the
# fsyncs to mean anything. Needs bash, python3, cargo; installs etcd-server with apt-get if etcd
# is missing. Every process and temporary directory it makes is removed on exit, however it
# exits.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$(pwd)

QUICK=0
DURATION=10
RUNS=3
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) QUICK=1; DURATION=3; RUNS=1 ;;
    --duration) DURATION=${2:?--duration needs seconds}; shift ;;
    --runs) RUNS=${2:?--runs needs a number}; shift ;;
    --out) OUT=${2:?--out needs a directory}; shift ;;
    -h|--help) sed -n '2,23p' "$0"; exit 0 ;;
    *) echo "compare.sh: unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
  shift
done
[[ $DURATION =~ ^[0-9]+([.][0-9]+)?$ ]] || { echo "compare.sh: --duration must be a number" >&2; exit 2; }
[[ $RUNS =~ ^[1-9][0-9]*$ ]] || { echo "compare.sh: --runs must be a positive number" >&2; exit 2; }
if [ "$QUICK" = 1 ]; then
  CONCURRENCY="1 128"
else
  CONCURRENCY="1 16 128 512"
fi
WORKLOADS="put get50"
TARGETS="single round-robin"
CEIL_CONCURRENCY="1 128"

OUT=${OUT:-bench/results/compare-$(date -u +%Y%m%dT%H%M%SZ)}
mkdir -p "$OUT"
OUT=$(cd "$OUT" && pwd)

if ! command -v etcd >/dev/null; then
  echo "compare.sh: etcd not found; installing Debian's etcd-server" >&2
  apt-get install -y etcd-server >/dev/null || {
    echo "compare.sh: apt-get install etcd-server failed (run apt-get update first?)" >&2
    exit 1
  }
fi
echo "building release binaries..." >&2
cargo build --release --bin replica --bin client >&2
REPLICA=$ROOT/target/release/replica
CLIENT=$ROOT/target/release/client

tmp=$(mktemp -d "${TMPDIR:-/tmp}/compare.XXXXXX")
if [ "$(stat -f -c %T "$tmp")" = tmpfs ]; then
  echo "compare.sh: warning: $tmp is on tmpfs, where fsync costs nothing; set TMPDIR to a disk" >&2
fi
PIDS=()
cleanup() {
  local p
  for p in "${PIDS[@]}"; do kill -CONT "$p" 2>/dev/null || true; kill "$p" 2>/dev/null || true; done
  for p in "${PIDS[@]}"; do
    # Bounded wait, then SIGKILL.
    for _ in $(seq 50); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
  rm -rf "$tmp"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# N free loopback ports below the ephemeral range (nothing dials out from those).
free_ports() {
  python3 - "$1" <<'PY'
import random, socket, sys
n = int(sys.argv[1])
lo = 10000
hi = int(open("/proc/sys/net/ipv4/ip_local_port_range").read().split()[0])
held, ports = [], set()
while len(ports) < n:
    p = random.randrange(lo, hi)
    if p in ports:
        continue
    s = socket.socket()
    try:
        s.bind(("127.0.0.1", p))
    except OSError:
        s.close()
        continue
    held.append(s)
    ports.add(p)
print(" ".join(map(str, ports)))
PY
}

# Waits (bounded) until CMD... succeeds.
wait_for() {
  local what=$1; shift
  for _ in $(seq 300); do
    if "$@" >/dev/null 2>&1; then return 0; fi
    sleep 0.1
  done
  echo "compare.sh: $what did not come up within 30 s" >&2
  return 1
}

# Starts our cluster NAME with N replicas and extra replica flags; sets OURS_PIDS_<NAME>.
start_ours() {
  local name=$1 n=$2; shift 2
  local dir=$tmp/$name ports entries="" i
  mkdir -p "$dir"
  read -r -a ports <<<"$(free_ports $((3 * n)))"
  for ((i = 0; i < n; i++)); do
    [ -n "$entries" ] && entries+=", "
    entries+="{\"id\": $i, \"addr\": \"127.0.0.1:${ports[i]}\", \"peer_addr\": \"127.0.0.1:${ports[n + i]}\", \"metrics_addr\": \"127.0.0.1:${ports[2 * n + i]}\"}"
  done
  echo "{\"replicas\": [$entries]}" >"$dir/config.json"
  local pids=()
  for ((i = 0; i < n; i++)); do
    "$REPLICA" --config "$dir/config.json" --id "$i" --insecure --data-dir "$dir/r$i" "$@" \
      >"$dir/r$i.log" 2>&1 &
    PIDS+=($!)
    pids+=($!)
  done
  eval "OURS_PIDS_$name=\"${pids[*]}\""
  wait_for "our cluster $name" "$CLIENT" --config "$dir/config.json" --insecure status
}

stop_pids() {
  local p
  for p in "$@"; do kill "$p" 2>/dev/null || true; done
  for p in "$@"; do
    for _ in $(seq 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    kill -9 "$p" 2>/dev/null || true
  done
}

# Starts the 3-member etcd cluster; sets ETCD_PIDS and ETCD_ENDPOINTS.
start_etcd() {
  local dir=$tmp/etcd ports i initial="" eps=""
  mkdir -p "$dir"
  read -r -a ports <<<"$(free_ports 6)"
  for i in 0 1 2; do
    [ -n "$initial" ] && initial+=","
    initial+="e$i=http://127.0.0.1:${ports[3 + i]}"
    [ -n "$eps" ] && eps+=","
    eps+="127.0.0.1:${ports[i]}"
  done
  local pids=()
  for i in 0 1 2; do
    etcd --name "e$i" --data-dir "$dir/e$i" \
      --listen-client-urls "http://127.0.0.1:${ports[i]}" \
      --advertise-client-urls "http://127.0.0.1:${ports[i]}" \
      --listen-peer-urls "http://127.0.0.1:${ports[3 + i]}" \
      --initial-advertise-peer-urls "http://127.0.0.1:${ports[3 + i]}" \
      --initial-cluster "$initial" --initial-cluster-token "compare-$$" \
      --initial-cluster-state new --quota-backend-bytes 8589934592 \
      --logger zap --log-outputs stderr --log-level warn >"$dir/e$i.log" 2>&1 &
    PIDS+=($!)
    pids+=($!)
  done
  ETCD_PIDS="${pids[*]}"
  ETCD_ENDPOINTS=$eps
  wait_for "etcd" "$CLIENT" --target round-robin bench --system etcd --endpoints "$eps" \
    --duration 0.2 --concurrency 1 --write-pct 100 --quiet --json --attempt-timeout-ms 500
}

. bench/cpu.sh

# One run: run SYSTEM WORKLOAD C TARGET CELL_LABEL PIDS... ; appends a JSON line to runs.jsonl.
run_one() {
  local system=$1 workload=$2 c=$3 target=$4 label=$5; shift 5
  local pct args before after line
  case "$workload" in put) pct=100 ;; get50) pct=50 ;; esac
  case "$system" in
    etcd) args=(--system etcd --endpoints "$ETCD_ENDPOINTS") ;;
    *) args=(--config "$tmp/$system/config.json" --insecure) ;;
  esac
  before=$(cpu_ticks "$@")
  line=$("$CLIENT" --target "$target" bench "${args[@]}" \
    --duration "$DURATION" --concurrency "$c" --keys 100000 --key-size 16 --value-size 16 \
    --write-pct "$pct" --attempt-timeout-ms 5000 --label "$label" --quiet --json 2>>"$OUT/bench-stderr.log") || {
    echo "compare.sh: bench failed: $label $workload c$c $target (see $OUT/bench-stderr.log)" >&2
    return 1
  }
  after=$(cpu_ticks "$@")
  python3 - "$line" "$system" "$workload" "$c" "$target" "$before" "$after" "$TICKS" <<'PY' >>"$OUT/runs.jsonl"
import json, sys
line, system, workload, c, target, before, after, ticks = sys.argv[1:9]
r = json.loads(line)
r.pop("series", None)
r.update(system_key=system, workload=workload, cell_target=target,
         server_cpu_s=(int(after) - int(before)) / int(ticks))
print(json.dumps(r))
PY
  python3 - "$line" "$label" "$workload" "$c" "$target" <<'PY' >&2
import json, sys
r = json.loads(sys.argv[1])
print(f"  {sys.argv[2]:<14} {sys.argv[3]:<6} c{sys.argv[4]:<4} {sys.argv[5]:<12} "
      f"{r['ops_per_sec']:>9.0f} ops/s  p50 {r['p50_ms']:7.2f}  p99 {r['p99_ms']:7.2f} ms  errors {r['errors']}")
PY
}

: >"$OUT/runs.jsonl"
: >"$OUT/bench-stderr.log"
echo "starting etcd (3 members) and ours (3 replicas, durable), both plaintext..." >&2
start_etcd
start_ours ours 3
read -r -a OURS <<<"$OURS_PIDS_ours"
read -r -a ETCD <<<"$ETCD_PIDS"
echo "etcd $(etcd --version | head -1 | sed 's/etcd Version: //'), ours $("$REPLICA" --version)" >&2

for workload in $WORKLOADS; do
  for c in $CONCURRENCY; do
    for target in $TARGETS; do
      for ((run = 1; run <= RUNS; run++)); do
        # Alternate which system goes first, run by run.
        if (((run + c) % 2)); then order="etcd ours"; else order="ours etcd"; fi
        for system in $order; do
          if [ "$system" = etcd ]; then
            run_one etcd "$workload" "$c" "$target" etcd "${ETCD[@]}"
          else
            run_one ours "$workload" "$c" "$target" ours "${OURS[@]}"
          fi
        done
      done
    done
  done
done

echo "our ceilings: 1 replica, and 3 replicas with --sync none..." >&2
stop_pids "${ETCD[@]}" "${OURS[@]}"
start_ours one 1
read -r -a ONE <<<"$OURS_PIDS_one"
for c in $CEIL_CONCURRENCY; do
  for ((run = 1; run <= RUNS; run++)); do
    run_one one put "$c" single "ours-1-replica" "${ONE[@]}"
  done
done
stop_pids "${ONE[@]}"
start_ours nosync 3 --sync none
read -r -a NOSYNC <<<"$OURS_PIDS_nosync"
for c in $CEIL_CONCURRENCY; do
  for ((run = 1; run <= RUNS; run++)); do
    run_one nosync put "$c" round-robin "ours-sync-none" "${NOSYNC[@]}"
  done
done
stop_pids "${NOSYNC[@]}"

python3 bench/compare_report.py "$OUT" "$DURATION" "$RUNS" >"$OUT/table.txt"
"$CLIENT" bench chart "$OUT/medians.jsonl" --out "$OUT/compare.svg" \
  --title "ours vs etcd: 3 members, durable, 100% PUT, throughput vs latency (medians)" 2>/dev/null ||
  echo "compare.sh: could not draw the chart" >&2
echo "runs: $OUT/runs.jsonl  chart: $OUT/compare.svg" >&2
cat "$OUT/table.txt"
