#!/usr/bin/env bash
# Membership changes under load (issue 15): throughput before, during and after each change,
# and how long a replacement took to start voting.
#
#   bench/membership.sh
#
# A fresh 3-replica cluster of the real binaries (target/release, or $BIN) on free loopback
# ports in a temporary directory, TLS on (certificates from `replica certs`). One
# `client bench --target round-robin --concurrency 64 --json` runs throughout (it sends to
# the members at its start, config.json's replicas 0, 1, 2; a member removed meanwhile is
# avoided) while the script, GAP seconds apart:
#   grow 3 -> 5:     starts replica 3 (not in config.json, its addresses on the command line),
#                    `member add 3`; then the same for replica 4;
#   shrink 5 -> 3:   `member remove 4`, then `member remove 3` (each the removal of a live member);
#   replace a dead:  SIGKILLs replica 2, `member remove 2`, starts replica 5 on new addresses,
#                    `member add 5`.
# Prints, per change, the bench's mean ops/s over the GAP/2 seconds before it, while it ran
# (from its first command to the last one's return), and over the GAP/2 seconds after it (from
# the per-second series of --json), the errors in each window, and the replacement's time from
# `member add 5` returning to its log's `joined the cluster as an added member` line (it votes
# from then on).
# Environment (defaults): GAP=10, CONCURRENCY=64, WRITE_PCT=50, KEYS=100000, VALUE_SIZE=100,
# BIN=target/release, KEEP=0 (1: keep the temporary directory, logs included).
# Every process and file it makes is removed on exit, however it exits (bench/lib.sh). Needs
# bash, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

GAP=${GAP:-10}
CONCURRENCY=${CONCURRENCY:-64}
WRITE_PCT=${WRITE_PCT:-50}
KEYS=${KEYS:-100000}
VALUE_SIZE=${VALUE_SIZE:-100}
KEEP=${KEEP:-0}
BIN=${BIN:-target/release}

NAME=membership.sh
. bench/lib.sh
whole_numbers GAP CONCURRENCY WRITE_PCT KEYS VALUE_SIZE
[ "$GAP" -ge 4 ] || die "need GAP >= 4"
need_binaries

make_work
# Eighteen free loopback ports: three per replica 0..5.
free_ports 18
write_config
"$BIN/replica" certs --config "$WORK/config.json" >/dev/null
CLIENT=("$BIN/client" --config "$WORK/config.json")

# Starts replica $1, not in config.json, with its addresses (its certificate made first).
start_added() {
  "$BIN/replica" certs --config "$WORK/config.json" --id "$1" --peer-addr "$(peer "$1")" \
    --client-addr "$(addr "$1")" >/dev/null
  start_replica "$1" --peer-addr "$(peer "$1")" --client-addr "$(addr "$1")" \
    --metrics-addr "$(metrics "$1")"
}

now() { python3 -c 'import time; print(f"{time.time():.3f}")'; }

# `client member ARGS`, retried (10 s) while the new replica's Join has not reached the member
# asked; exits on any other failure.
member() {
  local out
  for _ in $(seq 1 50); do
    if out=$("${CLIENT[@]}" member "$@" 2>&1); then return 0; fi
    grep -q "first" <<<"$out" || die "member $*: $out"
    sleep 0.2
  done
  die "member $*: $out"
}

# Records a change: its name, when its first command started and its last one returned.
EVENTS="$WORK/events"
: >"$EVENTS"
mark() { echo "$1 $2 $(now)" >>"$EVENTS"; }

for id in 0 1 2; do start_replica "$id"; done
wait_converged 60 || die "the cluster did not come up: $(tail -n 3 "$WORK/r0.log")"

DURATION=$((GAP * 8))
bench_start=$(now)
"${CLIENT[@]}" --target round-robin bench --duration "$DURATION" --concurrency "$CONCURRENCY" \
  --keys "$KEYS" --write-pct "$WRITE_PCT" --value-size "$VALUE_SIZE" --json \
  >"$WORK/bench.json" 2>"$WORK/bench.log" &
bench_pid=$!

sleep "$GAP"
t=$(now); start_added 3; member add 3 "$(peer 3)" "$(addr 3)"; mark "add-3" "$t"
sleep "$GAP"
t=$(now); start_added 4; member add 4 "$(peer 4)" "$(addr 4)"; mark "add-4" "$t"
sleep "$GAP"
t=$(now); member remove 4; mark "remove-4" "$t"
sleep "$GAP"
t=$(now); member remove 3; mark "remove-3" "$t"
sleep "$GAP"
t=$(now)
kill -9 "${PID[2]}"; wait "${PID[2]}" 2>/dev/null || true; unset 'PID[2]'
# The survivors suspect it before the removal (its vote is not needed: 0, 1 are a majority).
member remove 2
start_added 5
member add 5 "$(peer 5)" "$(addr 5)"
added=$(now)
mark "replace-2-by-5" "$t"
joined=""
for _ in $(seq 1 300); do
  if line=$(grep -m1 "joined the cluster as an added member" "$WORK/r5.log"); then joined=$line; break; fi
  sleep 0.1
done
[ -n "$joined" ] || die "replica 5 did not join within 30 s: $(tail -n 5 "$WORK/r5.log")"
wait "$bench_pid" || die "the bench failed: $(tail -n 5 "$WORK/bench.log")"
bench_pid=""

python3 - "$WORK/bench.json" "$EVENTS" "$bench_start" "$GAP" "$added" "$joined" <<'PY'
import datetime, json, re, sys
bench = json.loads(open(sys.argv[1]).read().strip().splitlines()[-1])
series = bench["series"]
start, gap, added = float(sys.argv[3]), int(sys.argv[4]), float(sys.argv[5])
half = gap / 2

def window(a, b):
    """Mean ops/s and errors over the bench seconds ending in (a, b] (seconds since start)."""
    secs = [s for s in series if a < s["t_s"] <= b]
    if not secs:
        return "-", "-"
    ops = sum(s["ops"] for s in secs)
    return f"{ops / len(secs):.0f}", str(sum(s["errors"] for s in secs))

print(f"{'change':<16}{'before ops/s':>14}{'during ops/s':>14}{'after ops/s':>13}"
      f"{'took s':>8}{'errors b/d/a':>14}")
for line in open(sys.argv[2]):
    name, t0, t1 = line.split()
    a, b = float(t0) - start, float(t1) - start
    before, eb = window(a - half, a)
    # A change shorter than a second still spans the second it falls in.
    during, ed = window(a, max(b, a + 1))
    after, ea = window(max(b, a + 1), max(b, a + 1) + half)
    print(f"{name:<16}{before:>14}{during:>14}{after:>13}{b - a:>8.2f}{eb + '/' + ed + '/' + ea:>14}")
stamp = re.search(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d+Z", sys.argv[6]).group(0)
joined = datetime.datetime.strptime(stamp[:26], "%Y-%m-%dT%H:%M:%S.%f").replace(
    tzinfo=datetime.timezone.utc).timestamp()
print(f"replacement: replica 5 joined (votes) {max(0.0, joined - added) * 1000:.0f} ms after "
      f"`member add 5` returned (its log's line can precede the return: then 0)")
print(f"bench: {bench['ops']} ops in {bench['elapsed_s']:.0f} s, {bench['ops_per_sec']:.0f} ops/s, "
      f"{bench['errors']} errors, p50 {bench['p50_ms']:.2f} ms, p99 {bench['p99_ms']:.2f} ms")
PY
