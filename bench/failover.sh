#!/usr/bin/env bash
# Failover experiment on a local cluster (run.sh, config.json): round-robin closed-loop load,
# SIGKILL of one replica in the middle, and then:
#   - throughput before the kill, during the first seconds after it, and after that (from the
#     bench's per-second progress lines);
#   - the time from the kill to the first increase of epaxos_recovered_total summed over the
#     survivors (polled every 100 ms), i.e. until a survivor completed a recovery;
#   - the restart of the killed replica and the time until every digest agrees again.
# Usage:
#   bench/failover.sh [KILL_ID]                      (default 0)
# Environment (defaults): DURATION=20 (s of load), KILL_AFTER=5 (s into the load), WINDOW=3 (s
# counted as "right after the kill"), CONCURRENCY=32, WRITE_PCT=50, CONFLICT_PCT=5 (share of
# requests on one hot key, so that survivors depend on the dead replica's instances), KEYS=100000,
# TIMEOUT_MS=1000 (client per-attempt timeout), RECOVERY_TIMEOUT=15 (s), CONFIG, DATA,
# REPLICA_FLAGS (passed to run.sh), WIPE=0 (1: delete the killed replica's data directory after
# the kill, so that it comes back empty and rejoins from a peer's snapshot; the time to rejoin
# is then reported too).
# The cluster is (re)started with ./run.sh start and stopped at exit, as bench/matrix.sh does; the
# exit status is 0 when the restarted replica caught up (same digest everywhere within 30 s).
# Needs bash, python3 and cargo only.
set -euo pipefail
cd "$(dirname "$0")/.."

KILL_ID=${1:-${KILL_ID:-0}}
DURATION=${DURATION:-20}
KILL_AFTER=${KILL_AFTER:-5}
WINDOW=${WINDOW:-3}
CONCURRENCY=${CONCURRENCY:-32}
WRITE_PCT=${WRITE_PCT:-50}
CONFLICT_PCT=${CONFLICT_PCT:-5}
KEYS=${KEYS:-100000}
TIMEOUT_MS=${TIMEOUT_MS:-1000}
RECOVERY_TIMEOUT=${RECOVERY_TIMEOUT:-15}
CONFIG=${CONFIG:-config.json}
# A plaintext cluster (REPLICA_FLAGS=--insecure) is driven by a plaintext client.
case " ${REPLICA_FLAGS:-} " in *" --insecure "*) CLIENT_FLAGS="--insecure" ;; *) CLIENT_FLAGS="" ;; esac
export CONFIG
DATA=${DATA:-data}
export DATA
WIPE=${WIPE:-0}
CLIENT=target/release/client

die() { echo "failover.sh: $*" >&2; exit 1; }
is_num() { [[ $1 =~ ^[0-9]+([.][0-9]+)?$ ]]; }
for v in DURATION KILL_AFTER WINDOW CONCURRENCY WRITE_PCT CONFLICT_PCT KEYS TIMEOUT_MS RECOVERY_TIMEOUT; do
  is_num "${!v}" || die "$v must be a number, not '${!v}'"
done
[[ $KILL_ID =~ ^[0-9]+$ ]] || die "KILL_ID must be a replica id, not '$KILL_ID'"
python3 -c "import sys; sys.exit(0 if float(sys.argv[1]) + float(sys.argv[2]) < float(sys.argv[3]) else 1)" \
  "$KILL_AFTER" "$WINDOW" "$DURATION" || die "need KILL_AFTER + WINDOW < DURATION"
[ -f "$CONFIG" ] || die "config file $CONFIG not found"

# Per replica id: "id metrics_addr", one a line.
replicas=$(python3 - "$CONFIG" <<'PY'
import json, sys
for r in json.load(open(sys.argv[1]))["replicas"]:
    print(r["id"], r["metrics_addr"])
PY
) || die "cannot read $CONFIG"
grep -q "^$KILL_ID " <<<"$replicas" || die "replica $KILL_ID is not in $CONFIG"
survivor_metrics=$(awk -v k="$KILL_ID" '$1 != k { print $2 }' <<<"$replicas" | tr '\n' ' ')
survivor_ids=$(awk -v k="$KILL_ID" '$1 != k { print $1 }' <<<"$replicas" | tr '\n' ' ')

tmp=$(mktemp -d)
bench_pid=""
poll_pid=""
cleanup() {
  local rc=$?
  for pid in $bench_pid $poll_pid; do
    if kill -0 "$pid" 2>/dev/null; then
      kill "$pid" 2>/dev/null || true
      wait "$pid" 2>/dev/null || true
    fi
  done
  ./run.sh stop >/dev/null 2>&1 || true
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "failover.sh: interrupted; stopping the cluster" >&2; exit 130' INT TERM

# Wall-clock milliseconds (bash 5's EPOCHREALTIME, else python3).
now_ms() {
  if [ -n "${EPOCHREALTIME:-}" ]; then
    local us=${EPOCHREALTIME/[.,]/}
    echo $((us / 1000))
  else
    python3 -c 'import time; print(int(time.time() * 1000))'
  fi
}

# Sum of epaxos_recovered_total over the given metrics addresses (unreachable ones count 0), or,
# with --wait BASELINE KILL_MS TIMEOUT_S, polls every 100 ms until the sum exceeds BASELINE and
# prints "<ms since KILL_MS> <sum>" (or "timeout <sum> <whether the metric exists>").
recovered() {
  python3 - "$@" <<'PY'
import sys, time, urllib.request
args = sys.argv[1:]
wait = args[:1] == ["--wait"]
if wait:
    baseline, kill_ms, timeout_s = float(args[1]), int(args[2]), float(args[3])
    args = args[4:]
def total():
    s, seen = 0.0, False
    for addr in args:
        try:
            with urllib.request.urlopen(f"http://{addr}/metrics", timeout=0.5) as r:
                text = r.read().decode("utf-8", "replace")
        except Exception:
            continue
        for line in text.splitlines():
            if line.startswith("epaxos_recovered_total"):
                seen = True
                try:
                    s += float(line.rsplit(" ", 1)[1])
                except ValueError:
                    pass
    return s, seen
if not wait:
    print(total()[0])
    sys.exit(0)
deadline = kill_ms / 1000 + timeout_s
seen_any = False
while True:
    s, seen = total()
    seen_any |= seen
    now = time.time()
    if s > baseline:
        print(int(now * 1000) - kill_ms, s)
        break
    if now >= deadline:
        print("timeout", s, "present" if seen_any else "absent")
        break
    time.sleep(max(0.0, 0.1 - (time.time() - now)))
PY
}

./run.sh stop >/dev/null 2>&1 || true
./run.sh start >/dev/null
n=$(wc -l <<<"$replicas")

# The load, in the background: per-second progress lines on stderr, one JSON line on stdout.
t0=$(now_ms)
"$CLIENT" --config "$CONFIG" $CLIENT_FLAGS --target round-robin bench \
  --attempt-timeout-ms "$TIMEOUT_MS" --duration "$DURATION" --concurrency "$CONCURRENCY" --keys "$KEYS" --write-pct "$WRITE_PCT" \
  --conflict-pct "$CONFLICT_PCT" --json >"$tmp/result.json" 2>"$tmp/progress.log" &
bench_pid=$!

# (A background sleep and `wait`, so that a signal is handled at once.)
sleep "$KILL_AFTER" &
wait $!
kill -0 "$bench_pid" 2>/dev/null || { cat "$tmp/progress.log" >&2; die "the bench ended early"; }
# shellcheck disable=SC2086
baseline=$(recovered $survivor_metrics)
kill_ms=$(now_ms)
./run.sh kill "$KILL_ID" >/dev/null
if [ "$WIPE" = 1 ]; then
  rm -rf "${DATA:?}/replica-$KILL_ID"
fi
# shellcheck disable=SC2086
recovered --wait "$baseline" "$kill_ms" "$RECOVERY_TIMEOUT" $survivor_metrics >"$tmp/recovery" &
poll_pid=$!
wait "$poll_pid" || die "polling the survivors' metrics failed"
poll_pid=""
read -r rec_ms rec_sum rec_seen <"$tmp/recovery" || true

wait "$bench_pid" || die "the bench failed: $(tail -n 5 "$tmp/progress.log")"
bench_pid=""

# The killed replica comes back; bounded wait until every replica is up with the same digest
# (`client status` exits 0 only then).
log_file="$DATA/replica-$KILL_ID.log"
log_skip=$(( $(wc -l <"$log_file" 2>/dev/null || echo 0) + 1 ))
restart_ms=$(now_ms)
./run.sh start "$KILL_ID" >/dev/null
agreed=""
while [ $(( $(now_ms) - restart_ms )) -lt 30000 ]; do
  if "$CLIENT" --config "$CONFIG" $CLIENT_FLAGS status --status-timeout-ms 500 >/dev/null 2>&1; then
    agreed=$(( $(now_ms) - restart_ms ))
    break
  fi
  sleep 0.1 &
  wait $!
done

python3 - "$tmp/progress.log" "$tmp/result.json" "$((kill_ms - t0))" "$WINDOW" "$KILL_ID" "$n" \
  "${rec_ms:-}" "${rec_sum:-}" "${rec_seen:-}" "$baseline" "$RECOVERY_TIMEOUT" "$agreed" \
  "$survivor_ids" "$CONCURRENCY" "$WRITE_PCT" "$CONFLICT_PCT" "$TIMEOUT_MS" "$WIPE" "" \
  "$log_file" "$log_skip" <<'PY'
import json, re, sys
(progress, result, kill_ms, window, kill_id, n, rec_ms, rec_sum, rec_seen, baseline, rec_timeout,
 agreed, survivors, conc, writes, conflicts, timeout_ms, wipe, joined, log, skip) = sys.argv[1:22]
kill_s, window = int(kill_ms) / 1000, float(window)
line_re = re.compile(r"^\[\s*([\d.]+)s\]\s+([\d.]+) ops/s\s+errors\s+(\d+)")
before, during, after = [], [], []
for line in open(progress):
    m = line_re.match(line)
    if not m:
        continue
    t, ops, errs = float(m[1]), float(m[2]), int(m[3])
    # A line at t covers (t-1, t]: before the kill only if it ends before it.
    (before if t <= kill_s else during if t <= kill_s + window else after).append((t, ops, errs))
def summary(xs):
    if not xs:
        return "(no progress lines)"
    avg = sum(o for _, o, _ in xs) / len(xs)
    low = min(o for _, o, _ in xs)
    errs = sum(e for _, _, e in xs)
    return f"{avg:>9.0f} ops/s  (over {len(xs)} s, lowest second {low:.0f} ops/s, errors {errs})"
r = json.loads(open(result).read().strip().splitlines()[-1])
print(f"failover: {n} replicas, replica {kill_id} SIGKILLed {kill_s:.2f} s into a "
      f"{r['duration_s']:g} s round-robin bench (concurrency {conc}, writes {writes}%, "
      f"conflicts {conflicts}%, per-attempt timeout {timeout_ms} ms)")
print(f"  before the kill          {summary(before)}")
print(f"  first {window:g} s after the kill {summary(during)}")
print(f"  after that               {summary(after)}")
series = lambda xs: " ".join(f"{o:.0f}" for _, o, _ in xs)
print(f"  per second: {series(before)} | kill | {series(during)} | {series(after)}")
if rec_ms and rec_ms != "timeout":
    print(f"  kill -> first increase of epaxos_recovered_total on survivors {survivors.strip()}: "
          f"{int(rec_ms)} ms (sum {float(baseline):g} -> {float(rec_sum):g})")
else:
    why = ("the metric is absent: does this build recover instances?"
           if rec_seen == "absent" else "present but unchanged")
    print(f"  epaxos_recovered_total on survivors {survivors.strip()}: no increase within "
          f"{rec_timeout} s of the kill ({why})")
print(f"  bench total: {r['ops']} ops, {r['errors']} errors {r.get('errors_by_kind', {})}, "
      f"{r['ops_per_sec']:.0f} ops/s, p50 {r['p50_ms']:.2f} ms, p99 {r['p99_ms']:.2f} ms, "
      f"max {r['max_ms']:.0f} ms")
if wipe == "1":
    snap = ""
    for i, line in enumerate(open(log, errors="replace")):
        if i + 1 >= int(skip) and "snapshot received" in line:
            b = re.search(r"bytes=(\d+)", line)
            rc = re.search(r"records=(\d+)", line)
            snap = f" (snapshot of {int(b[1]):,} bytes and {rc[1]} committed instances)" if b and rc else ""
    from datetime import datetime
    def stamp(line):
        try:
            return datetime.fromisoformat(line.split()[0].replace("Z", "+00:00")).timestamp()
        except (ValueError, IndexError):
            return None
    began = joined = None
    for i, line in enumerate(open(log, errors="replace")):
        if i + 1 < int(skip):
            continue
        if began is None and "joining the cluster first" in line:
            began = stamp(line)
        if "rejoined the cluster from a peer's snapshot" in line:
            joined = stamp(line)
    if began is not None and joined is not None:
        print(f"  replica {kill_id} wiped: rejoined from a peer's snapshot {(joined - began) * 1000:.0f} ms after it started joining{snap}")
    else:
        print(f"  replica {kill_id} wiped: did NOT rejoin within 30 s (see {log})")
if agreed:
    print(f"  replica {kill_id} restarted: every replica up with the same digest after {agreed} ms")
else:
    print(f"  replica {kill_id} restarted: digests did NOT agree within 30 s")
PY
"$CLIENT" --config "$CONFIG" $CLIENT_FLAGS status | tail -n 1 || true
# Exit status: 0 when the killed replica caught up, 1 otherwise.
[ -n "$agreed" ]
