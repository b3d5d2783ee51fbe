#!/usr/bin/env bash
# Partitions on a real (virtual) network: a 3-host cluster, one replica per Linux network
# namespace on its own IP behind a bridge, and `client bench --target round-robin` in a namespace
# of its own. During one bench run:
#   - replica 2 is cut off (its link down) for CUT seconds, then healed;
#   - then replica 0 is cut off for CUT seconds and healed: "the client's own host", read as the
#     replica the client talks to first (the config's first replica: where single-target
#     clients send everything and round-robin sessions start; the client itself stays in its
#     own namespace, as a client on another machine would);
# and reports: throughput (from the bench's per-second lines) before, during and after each
# cut, errors per phase and by kind, the time from each heal until the healed replica has
# executed what the others had executed at the heal (under load), and the time from the end of
# the load until every replica reports the same digest.
# Usage: sudo bench/netns-partition.sh
# Environment (defaults): CONCURRENCY=64, PHASE=8 (s before, between and after the cuts),
# CUT=8 (s each cut lasts), TIMEOUT_MS=1000 (client per-attempt timeout), WRITE_PCT=50,
# KEYS=100000, REPLICA_FLAGS (extra replica flags; replica defaults otherwise: 1 s heartbeat,
# 3 s suspicion).
# Needs root, iproute2, python3 and cargo. Everything it creates (namespaces ek<pid>s*, bridge,
# temporary directory, processes) is removed at exit, also on Ctrl-C.
set -euo pipefail
cd "$(dirname "$0")/.."

CONCURRENCY=${CONCURRENCY:-64}
PHASE=${PHASE:-8}
CUT=${CUT:-8}
TIMEOUT_MS=${TIMEOUT_MS:-1000}
WRITE_PCT=${WRITE_PCT:-50}
KEYS=${KEYS:-100000}
REPLICA_FLAGS=${REPLICA_FLAGS:-}
TARGET=${TARGET:-round-robin}

die() { echo "netns-partition.sh: $*" >&2; exit 1; }
for v in CONCURRENCY PHASE CUT TIMEOUT_MS WRITE_PCT KEYS; do
  [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, not '${!v}'"
done
[ "$(id -u)" = 0 ] || die "needs root (network namespaces)"
command -v ip >/dev/null || die "needs ip (iproute2)"
ip netns list >/dev/null 2>&1 || die "ip netns does not work here"

[ -x target/release/replica ] && [ -x target/release/client ] || cargo build --release
REPLICA=$PWD/target/release/replica
CLIENT=$PWD/target/release/client

# Names as tests/netns uses them (ek<pid><letter>), so that its leftover sweep also removes
# what a killed run of this script left.
P="ek$$s"
BR="${P}br"
tmp=$(mktemp -d)
pids=()
cleanup() {
  local rc=$?
  for pid in "${pids[@]}"; do kill -9 "$pid" 2>/dev/null || true; done
  for pid in "${pids[@]}"; do wait "$pid" 2>/dev/null || true; done
  for h in h0 h1 h2 c; do
    ip link del "${P}v$h" 2>/dev/null || true
    ip netns del "${P}$h" 2>/dev/null || true
  done
  ip link del "$BR" 2>/dev/null || true
  rm -rf "$tmp"
  exit "$rc"
}
trap cleanup EXIT
trap 'echo "netns-partition.sh: interrupted" >&2; exit 130' INT TERM

now_ms() { local us=${EPOCHREALTIME/[.,]/}; echo $((us / 1000)); }
# A /24 of 198.18.0.0/16 (RFC 2544 benchmarking range) no route uses yet.
X=""
for i in $(seq 0 255); do
  x=$(( ($$ * 7 + i) % 256 ))
  ip -4 route show | grep -q "198\.18\.$x\." || { X=$x; break; }
done
[ -n "$X" ] || die "no free /24 in 198.18.0.0/16"

ip link add "$BR" type bridge
ip addr add "198.18.$X.254/24" dev "$BR"
ip link set "$BR" up
add_host() { # tag last-octet
  ip netns add "${P}$1"
  ip link add "${P}v$1" type veth peer name eth0 netns "${P}$1"
  ip link set "${P}v$1" master "$BR" up
  ip -n "${P}$1" addr add "198.18.$X.$2/24" dev eth0
  ip -n "${P}$1" link set eth0 up
  ip -n "${P}$1" link set lo up
}
for i in 0 1 2; do add_host "h$i" $((i + 1)); done
add_host c 100

cfg=$tmp/config.json
python3 - "$cfg" "$X" <<'PY'
import json, sys
path, x = sys.argv[1], sys.argv[2]
reps = [{"id": i, "addr": f"198.18.{x}.{i+1}:7070", "peer_addr": f"198.18.{x}.{i+1}:7170",
         "metrics_addr": f"198.18.{x}.{i+1}:9070"} for i in range(3)]
json.dump({"replicas": reps, "tls": {"cluster_name": "epaxos", "cert_dir": "certs"}}, open(path, "w"))
PY
"$REPLICA" certs --config "$cfg" >/dev/null
for i in 0 1 2; do
  # shellcheck disable=SC2086
  ip netns exec "${P}h$i" "$REPLICA" --config "$cfg" --id "$i" --data-dir "$tmp/replica-$i" \
    $REPLICA_FLAGS 2>"$tmp/replica-$i.log" &
  pids+=($!)
done
# Bounded wait until all three answer with the same digest (from the initial namespace).
deadline=$(( $(now_ms) + 30000 ))
until "$CLIENT" --config "$cfg" status --status-timeout-ms 500 >/dev/null 2>&1; do
  [ "$(now_ms)" -lt "$deadline" ] || die "cluster did not come up: $(tail -n 3 "$tmp"/replica-*.log)"
  sleep 0.1
done

# Status of every replica every ~200 ms: "<ms> <json>" lines.
python3 - "$CLIENT" "$cfg" "$tmp/stop-poll" >"$tmp/status.log" <<'PY' &
import os, subprocess, sys, time
client, cfg, stop = sys.argv[1:4]
while not os.path.exists(stop):
    t = int(time.time() * 1000)
    r = subprocess.run([client, "--config", cfg, "status", "--json", "--status-timeout-ms", "300"],
                       capture_output=True, text=True, timeout=10)
    print(t, r.stdout.strip() or "[]", flush=True)
    time.sleep(0.2)
PY
poll_pid=$!
pids+=($poll_pid)

duration=$(( PHASE * 3 + CUT * 2 ))
t0=$(now_ms)
ip netns exec "${P}c" "$CLIENT" --config "$cfg" --target "$TARGET" --timeout-ms "$TIMEOUT_MS" \
  bench --attempt-timeout-ms "$TIMEOUT_MS" --duration "$duration" --concurrency "$CONCURRENCY" --keys "$KEYS" \
  --write-pct "$WRITE_PCT" --json >"$tmp/result.json" 2>"$tmp/progress.log" &
bench_pid=$!
pids+=($bench_pid)

events=$tmp/events
at() { # seconds-after-t0 action link
  local target=$(( t0 + $1 * 1000 ))
  while [ "$(now_ms)" -lt "$target" ]; do sleep 0.05; done
  ip link set "$3" "$2"
  echo "$(now_ms) $2 $3" >>"$events"
}
at "$PHASE" down "${P}vh2"
at $(( PHASE + CUT )) up "${P}vh2"
at $(( PHASE * 2 + CUT )) down "${P}vh0"
at $(( PHASE * 2 + CUT * 2 )) up "${P}vh0"

wait "$bench_pid" || die "the bench failed: $(tail -n 5 "$tmp/progress.log")"
load_end=$(now_ms)
deadline=$(( load_end + 60000 ))
agreed=""
until "$CLIENT" --config "$cfg" status --status-timeout-ms 500 >/dev/null 2>&1; do
  [ "$(now_ms)" -lt "$deadline" ] || break
  sleep 0.05
done
"$CLIENT" --config "$cfg" status --status-timeout-ms 500 >/dev/null 2>&1 && agreed=$(( $(now_ms) - load_end ))
touch "$tmp/stop-poll"
wait "$poll_pid" 2>/dev/null || true

python3 - "$tmp" "$t0" "$agreed" "$CONCURRENCY" "$TIMEOUT_MS" "$WRITE_PCT" "$PHASE" "$CUT" "$TARGET" <<'PY'
import json, re, sys
tmp, t0, agreed, conc, timeout_ms, writes, phase, cut, target = sys.argv[1:10]
t0 = int(t0)
events = [l.split() for l in open(f"{tmp}/events")]
ev = [(int(t) - t0) / 1000 for t, _, _ in events]  # cut 2, heal 2, cut 0, heal 0 (s after t0)
line_re = re.compile(r"^\[\s*([\d.]+)s\]\s+([\d.]+) ops/s\s+errors\s+(\d+)")
rows = [(float(m[1]), float(m[2]), int(m[3]))
        for m in map(line_re.match, open(f"{tmp}/progress.log")) if m]
names = ["before", "replica 2 cut off", "after healing 2", "replica 0 cut off", "after healing 0"]
bounds = [0.0] + ev + [1e9]
phases = [[] for _ in names]
for t, ops, errs in rows:
    for k in range(5):
        # A line at t covers (t-1, t]: it belongs to a phase only if it lies wholly inside.
        if bounds[k] <= t - 1 and t <= bounds[k + 1]:
            phases[k].append((t, ops, errs))
r = json.loads(open(f"{tmp}/result.json").read().strip().splitlines()[-1])
print(f"netns partition: 3 hosts (one replica per network namespace), client bench in its own "
      f"namespace: --target {target} --concurrency {conc} --timeout-ms {timeout_ms}, "
      f"writes {writes}%, {r.get('duration_s')} s; cuts of {cut} s by link down")
for name, xs in zip(names, phases):
    if not xs:
        print(f"  {name:<20} (no whole second)")
        continue
    avg = sum(o for _, o, _ in xs) / len(xs)
    print(f"  {name:<20} {avg:>8.0f} ops/s  (over {len(xs)} s, lowest second "
          f"{min(o for _, o, _ in xs):.0f}, errors {sum(e for _, _, e in xs)})   "
          + " ".join(f"{o:.0f}" for _, o, _ in xs))
print(f"  total: {r.get('ops')} ops, {r.get('errors')} errors, {r.get('ops_per_sec'):.0f} ops/s, "
      f"p50 {r.get('p50_ms')} ms, p99 {r.get('p99_ms')} ms")
print(f"  errors by kind: {json.dumps(r.get('errors_by_kind'))}; retries {r.get('retries')}; "
      f"answers by replica {json.dumps(r.get('ops_by_replica'))}")
samples = []
for line in open(f"{tmp}/status.log"):
    t, _, js = line.partition(" ")
    try:
        samples.append((int(t), json.loads(js)))
    except ValueError:
        pass
def executed(s, i):
    for row in s:
        if row.get("id") == i and row.get("up"):
            return row.get("executed")
    return None
for (heal_ms, _, link) in [events[1], events[3]]:
    heal_ms, rid = int(heal_ms), int(link[-1])
    before = [s for t, s in samples if t <= heal_ms]
    if not before:
        continue
    others = [executed(before[-1], j) for j in range(3) if j != rid]
    target = max(e for e in others if e is not None)
    caught = next((t for t, s in samples if t >= heal_ms and (executed(s, rid) or 0) >= target), None)
    if caught is None:
        print(f"  replica {rid}: did not reach the others' executed count at heal ({target})")
    else:
        print(f"  replica {rid}: heal -> executed what the others had at the heal ({target} "
              f"instances): {caught - heal_ms} ms (status sampled every ~200 ms, under load)")
print(f"  end of load -> same digest on all 3 replicas: "
      + (f"{agreed} ms" if agreed else "NOT within 60 s"))
PY
