#!/usr/bin/env bash
# Side-by-side throughput of two builds in one run: alternates OLD and NEW clusters run by run
# (so both see the same machine noise) and prints each run and the medians: ops/s, p50, p99,
# the replicas' CPU (utime+stime of the three processes, /proc/PID/stat) per 1,000 commands, and
# their log syncs per 1,000 commands, records per sync and mean write+sync time (from their
# metrics: epaxos_fsync_seconds, epaxos_persisted_records_total).
#
#   bench/ab.sh OLD_BIN_DIR NEW_BIN_DIR [RUNS] [SECONDS] [CONCURRENCY] [TARGET]
#
# Each BIN_DIR holds a `replica` and a `client` binary (e.g. copy target/release/{replica,client}
# aside before a change). Defaults: 3 runs of 10 s, concurrency 128, round-robin; durable
# (--sync fsync), plaintext (--insecure on both sides, so only the code differs). Every run
# starts a fresh 3-replica cluster on free ports in a temporary directory, removed on exit.
set -euo pipefail
OLD=${1:?usage: bench/ab.sh OLD_BIN_DIR NEW_BIN_DIR [RUNS] [SECONDS] [CONCURRENCY] [TARGET]}
NEW=${2:?usage: bench/ab.sh OLD_BIN_DIR NEW_BIN_DIR [RUNS] [SECONDS] [CONCURRENCY] [TARGET]}
RUNS=${3:-3}
SECONDS_=${4:-10}
CONC=${5:-128}
TARGET=${6:-round-robin}
for d in "$OLD" "$NEW"; do
  [ -x "$d/replica" ] && [ -x "$d/client" ] || { echo "ab.sh: $d lacks replica or client" >&2; exit 1; }
done
WORK=$(mktemp -d /tmp/epaxos-ab.XXXXXX)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT

# Nine free loopback ports (python3 binds port 0 and reports what the kernel chose).
ports() {
  python3 - <<'PY'
import socket
socks = []
for _ in range(9):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
}

. "$(dirname "$0")/cpu.sh"

run() { # BIN_DIR LABEL -> prints "ops p50 p99 cpu_ms_per_1000"
  local bin=$1 dir="$WORK/$2-$RANDOM" p
  mkdir -p "$dir"
  read -r -a p <<<"$(ports)"
  cat >"$dir/config.json" <<JSON
{ "replicas": [
  { "id": 0, "addr": "127.0.0.1:${p[0]}", "peer_addr": "127.0.0.1:${p[1]}", "metrics_addr": "127.0.0.1:${p[2]}" },
  { "id": 1, "addr": "127.0.0.1:${p[3]}", "peer_addr": "127.0.0.1:${p[4]}", "metrics_addr": "127.0.0.1:${p[5]}" },
  { "id": 2, "addr": "127.0.0.1:${p[6]}", "peer_addr": "127.0.0.1:${p[7]}", "metrics_addr": "127.0.0.1:${p[8]}" } ] }
JSON
  PIDS=()
  for i in 0 1 2; do
    "$bin/replica" --config "$dir/config.json" --id "$i" --insecure --data-dir "$dir/r$i" \
      >"$dir/r$i.log" 2>&1 &
    PIDS+=($!)
  done
  local up=0
  for _ in $(seq 100); do
    if "$bin/client" --config "$dir/config.json" --insecure status >/dev/null 2>&1; then up=1; break; fi
    sleep 0.1
  done
  [ "$up" = 1 ] || { echo "ab.sh: cluster of $bin did not come up; see $dir" >&2; exit 1; }
  local before after line
  before=$(cpu_ticks "${PIDS[@]}")
  line=$("$bin/client" --config "$dir/config.json" --insecure --target "$TARGET" bench \
    --duration "$SECONDS_" --concurrency "$CONC" --keys 100000 --value-size 16 --json 2>/dev/null)
  after=$(cpu_ticks "${PIDS[@]}")
  # Log syncs and records appended, summed over the replicas (their metrics ports), for the
  # whole life of the cluster (start-up adds a handful).
  local syncs
  syncs=$(python3 - "127.0.0.1:${p[2]}" "127.0.0.1:${p[5]}" "127.0.0.1:${p[8]}" <<'PY'
import sys, urllib.request
syncs = records = seconds = 0.0
for addr in sys.argv[1:]:
    for l in urllib.request.urlopen(f"http://{addr}/metrics", timeout=5).read().decode().splitlines():
        if l.startswith("epaxos_fsync_seconds_count"):
            syncs += float(l.split()[-1])
        elif l.startswith("epaxos_fsync_seconds_sum"):
            seconds += float(l.split()[-1])
        elif l.startswith("epaxos_persisted_records_total"):
            records += float(l.split()[-1])
print(f"{syncs:.0f} {records:.0f} {seconds:.6f}")
PY
)
  python3 -c 'import json,sys; r=json.loads(sys.argv[1]); cpu=(int(sys.argv[3])-int(sys.argv[2]))/int(sys.argv[4]); s,rec,sec=map(float,sys.argv[5].split()); ops=max(r["ops"],1); print("%.0f %.2f %.2f %.1f %.0f %.2f %.0f" % (r["ops_per_sec"], r["p50_ms"], r["p99_ms"], 1e6*cpu/ops, 1000*s/ops, rec/max(s,1), 1e6*sec/max(s,1)))' \
    "$line" "$before" "$after" "$TICKS" "$syncs"
  for p in "${PIDS[@]}"; do kill -9 "$p" 2>/dev/null || true; done
  PIDS=()
}

echo "c=$CONC $TARGET, ${SECONDS_}s runs, durable, plaintext; load: $(cut -d' ' -f1-3 /proc/loadavg)"
printf '%-4s %-4s %10s %8s %8s %14s %16s %12s %10s\n' run bin ops/s p50_ms p99_ms cpu_ms/1000cmd \
  syncs/1000cmd records/sync sync_us
OLD_RUNS=(); NEW_RUNS=()
for r in $(seq "$RUNS"); do
  for which in old new; do
    if [ "$which" = old ]; then d=$OLD; else d=$NEW; fi
    read -r ops p50 p99 cpu syncs per us <<<"$(run "$d" "$which")"
    printf '%-4s %-4s %10s %8s %8s %14s %16s %12s %10s\n' "$r" "$which" "$ops" "$p50" "$p99" "$cpu" \
      "$syncs" "$per" "$us"
    if [ "$which" = old ]; then OLD_RUNS+=("$ops,$p50,$p99,$cpu,$syncs,$per,$us"); else NEW_RUNS+=("$ops,$p50,$p99,$cpu,$syncs,$per,$us"); fi
  done
done
python3 - "${OLD_RUNS[*]}" "${NEW_RUNS[*]}" <<'PY'
import statistics, sys
def medians(arg):
    runs = [[float(v) for v in r.split(",")] for r in arg.split()]
    return [statistics.median(col) for col in zip(*runs)]
o, n = medians(sys.argv[1]), medians(sys.argv[2])
for name, m in (("old", o), ("new", n)):
    print(f"median {name} {m[0]:.0f} ops/s p50 {m[1]:.2f} p99 {m[2]:.2f} ms cpu {m[3]:.1f} ms/1000cmd"
          f" syncs {m[4]:.0f}/1000cmd records/sync {m[5]:.2f} sync {m[6]:.0f} us")
print(f"new/old ops {n[0]/o[0]:.3f}  p50 {n[1]/o[1]:.3f}  cpu {n[3]/o[3]:.3f}")
PY
