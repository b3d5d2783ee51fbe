#!/usr/bin/env bash
# Starts and stops a local EPaxos cluster described by config.json (or $CONFIG).
#
#   ./run.sh start [ID...]   build release binaries if needed, start replicas (all by default)
#   ./run.sh stop [ID...]    stop replicas (SIGTERM, then SIGKILL after 5 s) by their recorded PIDs
#   ./run.sh restart [ID...] stop, then start
#   ./run.sh kill ID...      SIGKILL, for failure experiments
#   ./run.sh status          which replicas run, and their Status (via the client); exit 1 if
#                            one is down or unhealthy
#   ./run.sh logs ID         follow a replica's log
#   ./run.sh add ID PEER_ADDR CLIENT_ADDR METRICS_ADDR
#                            add a replica not in config.json (a fresh id): make its
#                            certificate, start it in the background with these addresses
#                            (kept in its data directory: later starts need none), run
#                            `client member add` once it asks to join, wait until it joined
#
# Files: data/replica-<id>.pid, data/replica-<id>.log, data/replica-<id>/ (the replica's data
# directory), and the TLS certificates (config.json's tls.cert_dir, default data/certs/), which
# `start` creates when missing (`replica certs`). Extra replica flags go in $REPLICA_FLAGS (e.g.
# REPLICA_FLAGS=--thrifty; with REPLICA_FLAGS=--insecure the client runs --insecure too).
# $BIN names a directory with prebuilt `replica` and `client` binaries (then nothing is built).
# Unknown commands or ids and every failure exit non-zero.
set -euo pipefail

cd "$(dirname "$0")"
CONFIG=${CONFIG:-config.json}
DATA=${DATA:-data}
if [ -n "${BIN:-}" ]; then PREBUILT=1; else PREBUILT=""; BIN=target/release; fi
# A plaintext cluster (--insecure) is probed by a plaintext client.
CLIENT_FLAGS=""
case " ${REPLICA_FLAGS:-} " in *" --insecure "*) CLIENT_FLAGS="--insecure" ;; esac

die() { echo "run.sh: $*" >&2; exit 1; }

[ -f "$CONFIG" ] || die "config file $CONFIG not found"

# Replica ids listed in the config, then those added with `run.sh add` (whose data directory
# keeps their addresses), one per line (python3 parses the JSON; no jq needed).
all_ids() {
  python3 - "$CONFIG" "$DATA" <<'PY' || die "cannot read replica ids from $CONFIG"
import glob, json, os, sys
listed = [r["id"] for r in json.load(open(sys.argv[1]))["replicas"]]
added = []
for path in glob.glob(os.path.join(sys.argv[2], "replica-*", "addresses")):
    name = os.path.basename(os.path.dirname(path))[len("replica-"):]
    if name.isdigit() and int(name) not in listed:
        added.append(int(name))
for i in listed + sorted(added):
    print(i)
PY
}

# Whether replica $1 is listed in the config (not added with `run.sh add`).
listed() {
  python3 - "$CONFIG" "$1" <<'PY'
import json, sys
sys.exit(0 if int(sys.argv[2]) in [r["id"] for r in json.load(open(sys.argv[1]))["replicas"]] else 1)
PY
}

# Sets IDS to the ids given (each checked against the config), or all of them. Not a
# command substitution: an unknown id must stop the script, not just a subshell.
IDS=()
ids_or_all() {
  local known; known=$(all_ids) || exit 1
  IDS=()
  if [ $# -gt 0 ]; then
    for id in "$@"; do
      grep -qx -- "$id" <<<"$known" || die "replica $id is not in $CONFIG (it lists: $(echo $known))"
      IDS+=("$id")
    done
  else
    mapfile -t IDS <<<"$known"
  fi
}

# The PID in replica $1's pid file if that process runs our replica binary: its executable
# is checked, not its command line, so a stale pid file whose number was reused by another
# program never makes stop or kill signal that program.
pid_of() {
  local f="$DATA/replica-$1.pid"
  [ -f "$f" ] || return 1
  local pid; pid=$(cat "$f")
  [[ "$pid" =~ ^[0-9]+$ ]] || return 1
  local exe want
  exe=$(readlink "/proc/$pid/exe" 2>/dev/null) || return 1
  exe=${exe% (deleted)}   # the binary was rebuilt while the replica ran
  want=$(readlink -f "$BIN/replica") || return 1
  [ "$exe" = "$want" ] || return 1
  echo "$pid"
}

# Starts replica $1 in the background with none of this shell's file descriptors beyond
# stdin/stdout/stderr (a caller's lock or pipe must not stay open for the replica's life).
launch() {
  local id=$1
  (
    for fd in /proc/self/fd/*; do
      fd=${fd##*/}
      if [ "$fd" -gt 2 ] 2>/dev/null; then eval "exec $fd>&-" 2>/dev/null || true; fi
    done
    # shellcheck disable=SC2086
    exec nohup "$BIN/replica" --config "$CONFIG" --id "$id" --data-dir "$DATA/replica-$id" ${REPLICA_FLAGS:-} "${@:2}"
  ) >>"$DATA/replica-$id.log" 2>&1 </dev/null &
  echo $! >"$DATA/replica-$id.pid"
}

build() {
  [ -z "$PREBUILT" ] || return 0
  if [ ! -x "$BIN/replica" ] || [ ! -x "$BIN/client" ] || \
     [ -n "$(find src client proto build.rs Cargo.toml -newer "$BIN/replica" -print -quit 2>/dev/null)" ]; then
    echo "building release binaries (first time: about 3 minutes on 2 cores)..."
    cargo build --release --quiet
  fi
}

start() {
  build
  mkdir -p "$DATA"
  # The cluster CA and every replica's and the client's certificate, once (never overwritten).
  local made
  made=$("$BIN/replica" certs --config "$CONFIG") || die "cannot create the TLS certificates (see above)"
  grep -v '^certificates complete' <<<"$made" || true
  local started=()
  ids_or_all "$@"
  for id in "${IDS[@]}"; do
    if pid=$(pid_of "$id"); then
      echo "replica $id already running (pid $pid)"
      continue
    fi
    mkdir -p "$DATA/replica-$id"
    launch "$id"
    started+=("$id")
    echo "replica $id started (pid $(cat "$DATA/replica-$id.pid")), log $DATA/replica-$id.log"
  done
  [ ${#started[@]} -gt 0 ] || return 0
  # Wait (bounded, 10 s each) until each started replica answers and has joined its cluster
  # (a replica on a new data directory first waits for its peers: a majority when new, every
  # peer when it lost its data).
  local joining="" failed=() up=()
  for id in "${started[@]}"; do
    local ok="" answered=""
    if ! listed "$id"; then
      # An added replica (not in the config, which the client reads): its process stays up.
      sleep 1
      if kill -0 "$(cat "$DATA/replica-$id.pid")" 2>/dev/null; then up+=("$id"); continue; fi
      failed+=("$id")
      echo "replica $id did not come up; last log lines:" >&2
      tail -n 20 "$DATA/replica-$id.log" >&2
      rm -f "$DATA/replica-$id.pid"
      continue
    fi
    for _ in $(seq 1 100); do
      local out
      # shellcheck disable=SC2086
      if out=$("$BIN/client" --config "$CONFIG" $CLIENT_FLAGS --replica "$id" --timeout-ms 500 status --json 2>/dev/null) ||
         [ -n "$out" ]; then
        if grep -q '"joining":false' <<<"$out"; then ok=1; up+=("$id"); break; fi
        grep -q '"joining":true' <<<"$out" && answered=1
      fi
      # The launched process (it may not have exec'd the replica yet) is still alive.
      kill -0 "$(cat "$DATA/replica-$id.pid")" 2>/dev/null || break
      sleep 0.1
    done
    if [ -z "$ok" ] && [ -n "$answered" ]; then
      joining=1
      up+=("$id")
      echo "replica $id is up but still joining (it waits for its peers; see $DATA/replica-$id.log)"
    elif [ -z "$ok" ]; then
      failed+=("$id")
      echo "replica $id did not come up; last log lines:" >&2
      tail -n 20 "$DATA/replica-$id.log" >&2
      pid_of "$id" >/dev/null || rm -f "$DATA/replica-$id.pid"
    fi
  done
  if [ ${#failed[@]} -gt 0 ]; then
    if [ ${#up[@]} -gt 0 ]; then
      die "replica(s) ${failed[*]} failed to start; ${up[*]} started and still run (./run.sh stop ${up[*]} to stop them)"
    fi
    die "replica(s) ${failed[*]} failed to start"
  fi
  [ -z "$joining" ] || return 0
  echo "cluster up; try: $BIN/client put hello world && $BIN/client get hello"
}

# Stops the replicas in parallel: SIGTERM to all, then wait (5 s in all), then SIGKILL.
stop() {
  ids_or_all "$@"
  local ids=() pids=()
  for id in "${IDS[@]}"; do
    if pid=$(pid_of "$id"); then
      kill -TERM "$pid" 2>/dev/null || true
      ids+=("$id"); pids+=("$pid")
    else
      echo "replica $id not running"
      rm -f "$DATA/replica-$id.pid"
    fi
  done
  for _ in $(seq 1 50); do
    local alive=""
    for pid in "${pids[@]}"; do kill -0 "$pid" 2>/dev/null && alive=1; done
    [ -n "$alive" ] || break
    sleep 0.1
  done
  for i in "${!ids[@]}"; do
    local id=${ids[$i]} pid=${pids[$i]}
    if kill -0 "$pid" 2>/dev/null; then
      kill -KILL "$pid" 2>/dev/null || true; echo "replica $id killed (did not stop within 5 s)"
    else
      echo "replica $id stopped"
    fi
    rm -f "$DATA/replica-$id.pid"
  done
}

kill_replicas() {
  [ $# -gt 0 ] || die "usage: run.sh kill ID..."
  ids_or_all "$@"
  for id in "${IDS[@]}"; do
    if pid=$(pid_of "$id"); then
      kill -KILL "$pid"
      echo "replica $id killed (pid $pid)"
    else
      echo "replica $id not running"
    fi
    rm -f "$DATA/replica-$id.pid"
  done
}

# Exit 1 when a replica is stopped, or the client's status finds one unreachable, unhealthy
# or digests differing.
status() {
  local rc=0
  ids_or_all
  for id in "${IDS[@]}"; do
    if pid=$(pid_of "$id"); then echo "replica $id: running (pid $pid)"; else echo "replica $id: stopped"; rc=1; fi
  done
  # shellcheck disable=SC2086
  if [ -x "$BIN/client" ]; then "$BIN/client" --config "$CONFIG" $CLIENT_FLAGS status || rc=1; fi
  return $rc
}

# Adds replica $1 (not in the config) reached at peer $2 and client $3, metrics at $4.
add() {
  [ $# -eq 4 ] || die "usage: run.sh add ID PEER_ADDR CLIENT_ADDR METRICS_ADDR"
  local id=$1 peer=$2 client=$3 metrics=$4
  [[ "$id" =~ ^[0-9]+$ ]] || die "replica id $id is not a number"
  ! grep -qx -- "$id" <<<"$(all_ids)" || die "replica $id exists already (in $CONFIG or added): an added replica takes a fresh id"
  build
  mkdir -p "$DATA/replica-$id"
  case " ${REPLICA_FLAGS:-} " in
    *" --insecure "*) ;;
    *) "$BIN/replica" certs --config "$CONFIG" --id "$id" --peer-addr "$peer" --client-addr "$client" >/dev/null ||
         die "cannot create replica $id's certificate (see above)" ;;
  esac
  launch "$id" --peer-addr "$peer" --client-addr "$client" --metrics-addr "$metrics"
  echo "replica $id started (pid $(cat "$DATA/replica-$id.pid")), log $DATA/replica-$id.log"
  # The members refuse the change until the new replica's Join reached them: retry (10 s).
  local out="" added=""
  for _ in $(seq 1 50); do
    kill -0 "$(cat "$DATA/replica-$id.pid")" 2>/dev/null || { tail -n 20 "$DATA/replica-$id.log" >&2; die "replica $id stopped"; }
    # shellcheck disable=SC2086
    if out=$("$BIN/client" --config "$CONFIG" $CLIENT_FLAGS member add "$id" "$peer" "$client" 2>&1); then
      added=1; break
    fi
    grep -q "start replica $id first" <<<"$out" || break
    sleep 0.2
  done
  if [ -z "$added" ]; then
    echo "$out" >&2
    die "client member add $id failed; replica $id still runs (./run.sh stop $id)"
  fi
  echo "$out"
  # It joins from a member's snapshot (bounded: 30 s).
  for _ in $(seq 1 300); do
    if grep -q "joined the cluster as an added member" "$DATA/replica-$id.log"; then
      echo "replica $id joined: it votes and serves"
      return 0
    fi
    sleep 0.1
  done
  die "replica $id was added but has not joined within 30 s (see $DATA/replica-$id.log)"
}

logs() {
  [ $# -eq 1 ] || die "usage: run.sh logs ID"
  ids_or_all "$1"
  tail -n 100 -F "$DATA/replica-$1.log"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  start) start "$@" ;;
  stop) stop "$@" ;;
  restart) stop "$@"; start "$@" ;;
  kill) kill_replicas "$@" ;;
  status) status ;;
  logs) logs "$@" ;;
  add) add "$@" ;;
  "") sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
  *) echo "run.sh: unknown command '$cmd'" >&2; sed -n '2,22p' "$0" | sed 's/^# \{0,1\}//' >&2; exit 2 ;;
esac
