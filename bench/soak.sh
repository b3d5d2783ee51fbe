#!/usr/bin/env bash
# Soak: a long `client bench` against a fresh local cluster (run.sh, config.json), sampling every
# replica's resident memory (VmRSS) and data directory size every SAMPLE seconds; prints the
# samples at the start (after WARMUP s), middle and end, the growth from start to end, and the
# maximum of each quarter of the run (disk use is a sawtooth between checkpoints, so the highs
# are what shows whether it stays flat).
# Usage:
#   bench/soak.sh [DURATION_S]                  (default 600)
# Environment (defaults): SAMPLE=10, WARMUP=60, CONCURRENCY=128, WRITE_PCT=50, KEYS=100000,
# VALUE_SIZE=100, CONFIG, DATA, REPLICA_FLAGS (passed to run.sh).
# The cluster's data directories are wiped first, and the cluster is stopped at exit.
# Needs bash, python3 and cargo only (Linux /proc for the memory).
set -euo pipefail
cd "$(dirname "$0")/.."

DURATION=${1:-${DURATION:-600}}
SAMPLE=${SAMPLE:-10}
WARMUP=${WARMUP:-60}
CONCURRENCY=${CONCURRENCY:-128}
WRITE_PCT=${WRITE_PCT:-50}
KEYS=${KEYS:-100000}
VALUE_SIZE=${VALUE_SIZE:-100}
CONFIG=${CONFIG:-config.json}
# A plaintext cluster (REPLICA_FLAGS=--insecure) is driven by a plaintext client.
case " ${REPLICA_FLAGS:-} " in *" --insecure "*) CLIENT_FLAGS="--insecure" ;; *) CLIENT_FLAGS="" ;; esac
DATA=${DATA:-data}
export CONFIG DATA
CLIENT=target/release/client

die() { echo "soak.sh: $*" >&2; exit 1; }
for v in DURATION SAMPLE WARMUP CONCURRENCY WRITE_PCT KEYS VALUE_SIZE; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, not '${!v}'"
done
[ "$WARMUP" -lt "$DURATION" ] || die "need WARMUP < DURATION"
[ -f "$CONFIG" ] || die "config file $CONFIG not found"

tmp=$(mktemp -d)
bench_pid=""
cleanup() {
  local rc=$?
  if [ -n "$bench_pid" ] && kill -0 "$bench_pid" 2>/dev/null; then
    kill "$bench_pid" 2>/dev/null || true
    wait "$bench_pid" 2>/dev/null || true
  fi
  ./run.sh stop >/dev/null 2>&1 || true
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "soak.sh: interrupted; stopping the cluster" >&2; exit 130' INT TERM

ids=$(python3 -c 'import json,sys; print(" ".join(str(r["id"]) for r in json.load(open(sys.argv[1]))["replicas"]))' "$CONFIG") \
  || die "cannot read $CONFIG"
./run.sh stop >/dev/null 2>&1 || true
for id in $ids; do rm -rf "${DATA:?}/replica-$id"; done
./run.sh start >/dev/null

"$CLIENT" --config "$CONFIG" $CLIENT_FLAGS --target round-robin bench --duration "$DURATION" \
  --concurrency "$CONCURRENCY" --keys "$KEYS" --write-pct "$WRITE_PCT" \
  --value-size "$VALUE_SIZE" --json >"$tmp/result.json" 2>"$tmp/progress.log" &
bench_pid=$!

start=$SECONDS
echo "t_s $(for id in $ids; do printf 'rss_mb_r%s disk_mb_r%s ' "$id" "$id"; done)" >"$tmp/samples"
while kill -0 "$bench_pid" 2>/dev/null; do
  line="$((SECONDS - start))"
  for id in $ids; do
    pid=$(cat "$DATA/replica-$id.pid" 2>/dev/null || echo 0)
    rss_kb=$(awk '/^VmRSS:/ { print $2 }' "/proc/$pid/status" 2>/dev/null || echo 0)
    disk_kb=$(du -sk "$DATA/replica-$id" 2>/dev/null | awk '{ print $1 }')
    line="$line $((rss_kb / 1024)) $((${disk_kb:-0} / 1024))"
  done
  echo "$line" >>"$tmp/samples"
  sleep "$SAMPLE" &
  wait $! || true
done
wait "$bench_pid" || die "the bench failed: $(tail -n 5 "$tmp/progress.log")"
bench_pid=""

python3 - "$tmp/samples" "$tmp/result.json" "$WARMUP" <<'PY'
import json, sys
rows = [l.split() for l in open(sys.argv[1])]
head, rows = rows[0], [list(map(int, r)) for r in rows[1:]]
warm = [r for r in rows if r[0] >= int(sys.argv[3])]
if len(warm) < 8:
    sys.exit("soak.sh: too few samples after the warm-up")
picks = [("start", warm[0]), ("middle", warm[len(warm) // 2]), ("end", warm[-1])]
print("       " + "  ".join(f"{h:>13}" for h in head))
for name, r in picks:
    print(f"{name:<7}" + "  ".join(f"{v:>13}" for v in r))
grow = [e - s for s, e in zip(warm[0][1:], warm[-1][1:])]
print("growth " + " " * 15 + "  ".join(f"{g:>+13}" for g in grow))
print("max    " + " " * 15 + "  ".join(f"{max(r[i] for r in warm):>13}" for i in range(1, len(head))))
# Flat means the highs stop rising: the maximum of each quarter of the run after the warm-up.
q = len(warm) // 4
for k in range(4):
    part = warm[k * q:(k + 1) * q] if k < 3 else warm[3 * q:]
    label = f"max Q{k + 1}"
    print(f"{label:<7}" + f"{part[0][0]:>6}-{part[-1][0]:<6}" + "   " +
          "  ".join(f"{max(r[i] for r in part):>13}" for i in range(1, len(head))))
r = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
print(f"bench: {r['ops']} ops in {r['elapsed_s']:.0f} s, {r['ops_per_sec']:.0f} ops/s, "
      f"{r['errors']} errors, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms")
PY
"$CLIENT" --config "$CONFIG" $CLIENT_FLAGS status | tail -n 1 || true
