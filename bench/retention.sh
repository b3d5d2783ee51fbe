#!/usr/bin/env bash
# Retention with a member down (issue 15): resident memory and data size of the survivors while
# one member of three is down under load, and after it returns.
#
#   bench/retention.sh [MINUTES]          (default 10)
#
# A fresh 3-replica cluster of the real binaries (target/release, or $BIN) on free loopback
# ports in a temporary directory, TLS on (certificates from `replica certs`; INSECURE=1 for
# plaintext). After WARMUP seconds of load with all three up, replica 2 is killed (SIGKILL,
# data directory kept) and `client bench --target round-robin --concurrency 64` runs for
# MINUTES; every SAMPLE seconds each survivor's VmRSS (/proc/PID/status), data directory size
# (du) and instances held in memory (epaxos_instances_in_memory, from its metrics port) are
# sampled. Then replica 2 is restarted on its data directory and the script waits (at most
# RETURN_TIMEOUT s) for `client status` to report every replica serving with one digest; it
# prints the catch-up time and samples all three once more.
# Prints a table (start, middle and end of the outage, after the return), the bench's summary
# and whether replica 2 caught up by snapshot (epaxos_catch_ups_total).
# With THEN=remove, replica 2 does not return: `client member remove 2` removes it instead,
# and the survivors are sampled SAMPLE seconds after the removal returned ("removed").
# Environment (defaults): THEN=return, SAMPLE=30, WARMUP=20, CONCURRENCY=64, WRITE_PCT=50, KEYS=100000,
# VALUE_SIZE=100, RETURN_TIMEOUT=300, REPLICA_FLAGS (extra replica flags, e.g.
# "--retention-instances 20000"), INSECURE=0, BIN=target/release, KEEP=0 (1: keep the
# temporary directory, logs included).
# Every process and file it makes is removed on exit, however it exits (bench/lib.sh). Needs
# bash, python3.
set -euo pipefail
cd "$(dirname "$0")/.."

MINUTES=${1:-10}
THEN=${THEN:-return}
SAMPLE=${SAMPLE:-30}
WARMUP=${WARMUP:-20}
CONCURRENCY=${CONCURRENCY:-64}
WRITE_PCT=${WRITE_PCT:-50}
KEYS=${KEYS:-100000}
VALUE_SIZE=${VALUE_SIZE:-100}
RETURN_TIMEOUT=${RETURN_TIMEOUT:-300}
INSECURE=${INSECURE:-0}
KEEP=${KEEP:-0}
BIN=${BIN:-target/release}

NAME=retention.sh
. bench/lib.sh
whole_numbers MINUTES SAMPLE WARMUP CONCURRENCY WRITE_PCT KEYS VALUE_SIZE RETURN_TIMEOUT
[ "$MINUTES" -ge 1 ] && [ "$SAMPLE" -ge 1 ] || die "need MINUTES >= 1 and SAMPLE >= 1"
[ "$THEN" = return ] || [ "$THEN" = remove ] || die "THEN must be return or remove, not $THEN"
need_binaries

make_work
free_ports 9
write_config
METRICS=("${P[2]}" "${P[5]}" "${P[8]}")
FLAGS=()
CLIENT=("$BIN/client" --config "$WORK/config.json")
if [ "$INSECURE" = 1 ]; then
  FLAGS+=(--insecure); CLIENT+=(--insecure)
else
  "$BIN/replica" certs --config "$WORK/config.json" >/dev/null
fi
read -r -a EXTRA <<<"${REPLICA_FLAGS:-}"

metric() { # PORT NAME -> value (0 when absent or unreachable)
  python3 - "$1" "$2" <<'PY'
import sys, urllib.request
try:
    body = urllib.request.urlopen(f"http://127.0.0.1:{sys.argv[1]}/metrics", timeout=2).read().decode()
except Exception:
    print(0); sys.exit()
for line in body.splitlines():
    if line.startswith(sys.argv[2] + " ") or line.startswith(sys.argv[2] + "{"):
        print(int(float(line.split()[-1]))); break
else:
    print(0)
PY
}

sample() { # LABEL IDS... -> one line: label, then rss_mb disk_mb instances per replica
  local label=$1 line id rss disk; shift
  line="$label"
  for id in 0 1 2; do
    if [[ " $* " == *" $id "* ]]; then
      rss=$(awk '/^VmRSS:/ { print int($2 / 1024) }' "/proc/${PID[$id]}/status" 2>/dev/null || echo 0)
      disk=$(du -sm "$WORK/r$id" 2>/dev/null | awk '{ print $1 }')
      line="$line ${rss:-0} ${disk:-0} $(metric "${METRICS[$id]}" epaxos_instances_in_memory)"
    else
      line="$line - - -"
    fi
  done
  echo "$line" >>"$WORK/samples"
}

for id in 0 1 2; do start_replica "$id" "${FLAGS[@]}" "${EXTRA[@]}"; done
wait_converged 60 || die "the cluster did not come up: $(tail -n 3 "$WORK/r0.log")"

BENCH=(bench --duration "$((MINUTES * 60 + WARMUP))" --concurrency "$CONCURRENCY" --keys "$KEYS"
  --write-pct "$WRITE_PCT" --value-size "$VALUE_SIZE" --json)
"${CLIENT[@]}" --target round-robin "${BENCH[@]}" >"$WORK/bench.json" 2>"$WORK/bench.log" &
bench_pid=$!
sleep "$WARMUP"
sample "all up" 0 1 2
kill -9 "${PID[2]}"
wait "${PID[2]}" 2>/dev/null || true
unset 'PID[2]'
down_at=$SECONDS
echo "retention.sh: replica 2 killed; sampling the survivors every ${SAMPLE}s for ${MINUTES} min" >&2
while kill -0 "$bench_pid" 2>/dev/null; do
  sleep "$SAMPLE" &
  wait $! || true
  kill -0 "$bench_pid" 2>/dev/null || break
  sample "down $((SECONDS - down_at))s" 0 1
done
wait "$bench_pid" || die "the bench failed: $(tail -n 5 "$WORK/bench.log")"
bench_pid=""

if [ "$THEN" = remove ]; then
  removed_at=$SECONDS
  "${CLIENT[@]}" member remove 2 >"$WORK/remove.txt" 2>&1 ||
    die "member remove 2 failed: $(cat "$WORK/remove.txt")"
  caught_up_s=$((SECONDS - removed_at))
  sleep "$SAMPLE"
  sample "removed" 0 1
  catch_ups=-
else
  start_replica 2 "${FLAGS[@]}" "${EXTRA[@]}"
  back_at=$SECONDS
  wait_converged "$RETURN_TIMEOUT" || die "replica 2 did not catch up in ${RETURN_TIMEOUT}s: $(tail -n 5 "$WORK/status.txt")"
  caught_up_s=$((SECONDS - back_at))
  sleep "$SAMPLE"
  sample "returned" 0 1 2
  catch_ups=$(metric "${METRICS[2]}" epaxos_catch_ups_total)
fi

python3 - "$WORK/samples" "$WORK/bench.json" "$caught_up_s" "$catch_ups" "$THEN" <<'PY'
import json, sys
rows = [l.split() for l in open(sys.argv[1])]
# Labels hold a space ("down 30s"): the last nine fields are the figures.
rows = [(" ".join(r[:-9]), r[-9:]) for r in rows]
down = [r for r in rows if r[0].startswith("down")]
if len(down) < 3:
    sys.exit("retention.sh: too few samples with replica 2 down (raise MINUTES or lower SAMPLE)")
picks = [rows[0], ("down: start " + down[0][0][5:], down[0][1]),
         ("down: middle " + down[len(down) // 2][0][5:], down[len(down) // 2][1]),
         ("down: end " + down[-1][0][5:], down[-1][1]), rows[-1]]
head = ["rss_mb", "disk_mb", "in_mem"]
print(f"{'':<20}" + "".join(f"{'r%d %s' % (i, h):>13}" for i in range(3) for h in head))
for label, v in picks:
    print(f"{label:<20}" + "".join(f"{x:>13}" for x in v))
for i in (0, 1):
    rss = [int(r[1][3 * i]) for r in down]
    disk = [int(r[1][3 * i + 1]) for r in down]
    print(f"r{i} while down: rss {min(rss)}..{max(rss)} MB, disk {min(disk)}..{max(disk)} MB "
          f"over {len(down)} samples")
r = json.loads(open(sys.argv[2]).read().strip().splitlines()[-1])
print(f"bench: {r['ops']} ops in {r['elapsed_s']:.0f} s, {r['ops_per_sec']:.0f} ops/s, "
      f"{r['errors']} errors, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms")
if sys.argv[5] == "remove":
    print(f"replica 2 removed: `member remove 2` took {sys.argv[3]} s")
else:
    print(f"replica 2 back: every replica serving with one digest after {sys.argv[3]} s; "
          f"snapshots installed by it (epaxos_catch_ups_total): {sys.argv[4]}")
PY
