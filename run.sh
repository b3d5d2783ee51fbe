#!/usr/bin/env bash
# Starts and stops a local EPaxos cluster described by config.json (or $CONFIG).
#
#   ./run.sh start [ID...]   build release binaries if needed, start replicas (all by default)
#   ./run.sh stop [ID...]    stop replicas (SIGTERM, then SIGKILL after 5 s) by their recorded PIDs
#   ./run.sh kill ID...      SIGKILL, for failure experiments
#   ./run.sh status          which replicas run, and their Status (via the client)
#   ./run.sh logs ID         follow a replica's log
#
# Files: data/replica-<id>.pid, data/replica-<id>.log, data/replica-<id>/ (the replica's data
# directory), and the TLS certificates (config.json's tls.cert_dir, default data/certs/), which
# `start` creates when missing (`replica certs`). Extra replica flags go in $REPLICA_FLAGS (e.g.
# REPLICA_FLAGS=--thrifty; with REPLICA_FLAGS=--insecure the client runs --insecure too).
set -euo pipefail

cd "$(dirname "$0")"
CONFIG=${CONFIG:-config.json}
DATA=${DATA:-data}
BIN=target/release
# A plaintext cluster (--insecure) is probed by a plaintext client.
CLIENT_FLAGS=""
case " ${REPLICA_FLAGS:-} " in *" --insecure "*) CLIENT_FLAGS="--insecure" ;; esac

die() { echo "run.sh: $*" >&2; exit 1; }

[ -f "$CONFIG" ] || die "config file $CONFIG not found"

# Replica ids listed in the config, one per line (python3 parses the JSON; no jq needed).
all_ids() {
  python3 - "$CONFIG" <<'PY' || die "cannot read replica ids from $CONFIG"
import json, sys
for r in json.load(open(sys.argv[1]))["replicas"]:
    print(r["id"])
PY
}

ids_or_all() {
  if [ $# -gt 0 ]; then
    local known; known=$(all_ids)
    for id in "$@"; do
      grep -qx -- "$id" <<<"$known" || die "replica $id is not in $CONFIG"
      echo "$id"
    done
  else
    all_ids
  fi
}

pid_of() {
  local f="$DATA/replica-$1.pid"
  [ -f "$f" ] || return 1
  local pid; pid=$(cat "$f")
  # Only a live process running our replica binary counts (PIDs get reused).
  if kill -0 "$pid" 2>/dev/null && tr '\0' ' ' <"/proc/$pid/cmdline" 2>/dev/null | grep -q "replica"; then
    echo "$pid"
  else
    return 1
  fi
}

build() {
  if [ ! -x "$BIN/replica" ] || [ ! -x "$BIN/client" ] || \
     [ -n "$(find src client proto build.rs Cargo.toml -newer "$BIN/replica" -print -quit 2>/dev/null)" ]; then
    echo "building release binaries (first time: about a minute)..."
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
  for id in $(ids_or_all "$@"); do
    if pid=$(pid_of "$id"); then
      echo "replica $id already running (pid $pid)"
      continue
    fi
    mkdir -p "$DATA/replica-$id"
    # shellcheck disable=SC2086
    nohup "$BIN/replica" --config "$CONFIG" --id "$id" --data-dir "$DATA/replica-$id" ${REPLICA_FLAGS:-} \
      >>"$DATA/replica-$id.log" 2>&1 </dev/null &
    echo $! >"$DATA/replica-$id.pid"
    started+=("$id")
    echo "replica $id started (pid $!), log $DATA/replica-$id.log"
  done
  [ ${#started[@]} -gt 0 ] || return 0
  # Wait (bounded, 10 s each) until each started replica answers and has joined its cluster
  # (a replica on a new data directory first waits for its peers: a majority when new, every
  # peer when it lost its data).
  local joining=""
  for id in "${started[@]}"; do
    local ok="" answered=""
    for _ in $(seq 1 100); do
      local out
      # shellcheck disable=SC2086
      if out=$("$BIN/client" --config "$CONFIG" $CLIENT_FLAGS --replica "$id" --timeout-ms 500 status --json 2>/dev/null) ||
         [ -n "$out" ]; then
        if grep -q '"joining":false' <<<"$out"; then ok=1; break; fi
        grep -q '"joining":true' <<<"$out" && answered=1
      fi
      pid_of "$id" >/dev/null || break
      sleep 0.1
    done
    if [ -z "$ok" ] && [ -n "$answered" ]; then
      joining=1
      echo "replica $id is up but still joining (it waits for its peers; see $DATA/replica-$id.log)"
    elif [ -z "$ok" ]; then
      echo "replica $id did not come up; last log lines:" >&2
      tail -n 20 "$DATA/replica-$id.log" >&2
      exit 1
    fi
  done
  [ -z "$joining" ] || return 0
  echo "cluster up; try: $BIN/client put hello world && $BIN/client get hello"
}

stop() {
  for id in $(ids_or_all "$@"); do
    if pid=$(pid_of "$id"); then
      kill -TERM "$pid"
      for _ in $(seq 1 50); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
      if kill -0 "$pid" 2>/dev/null; then
        kill -KILL "$pid"; echo "replica $id killed (did not stop within 5 s)"
      else
        echo "replica $id stopped"
      fi
    else
      echo "replica $id not running"
    fi
    rm -f "$DATA/replica-$id.pid"
  done
}

kill_replicas() {
  [ $# -gt 0 ] || die "usage: run.sh kill ID..."
  for id in $(ids_or_all "$@"); do
    if pid=$(pid_of "$id"); then
      kill -KILL "$pid"
      echo "replica $id killed (pid $pid)"
    else
      echo "replica $id not running"
    fi
    rm -f "$DATA/replica-$id.pid"
  done
}

status() {
  for id in $(all_ids); do
    if pid=$(pid_of "$id"); then echo "replica $id: running (pid $pid)"; else echo "replica $id: stopped"; fi
  done
  # shellcheck disable=SC2086
  if [ -x "$BIN/client" ]; then "$BIN/client" --config "$CONFIG" $CLIENT_FLAGS status || true; fi
}

logs() {
  [ $# -eq 1 ] || die "usage: run.sh logs ID"
  ids_or_all "$1" >/dev/null
  tail -n 100 -F "$DATA/replica-$1.log"
}

cmd=${1:-}
[ $# -gt 0 ] && shift
case "$cmd" in
  start) start "$@" ;;
  stop) stop "$@" ;;
  kill) kill_replicas "$@" ;;
  status) status ;;
  logs) logs "$@" ;;
  *) sed -n '2,13p' "$0" | sed 's/^# \{0,1\}//'; exit 2 ;;
esac
