# The set-up bench/membership.sh and bench/retention.sh share: sourced after they set NAME (the
# script's name, for messages), BIN and KEEP. It gives
#   die MESSAGE               the message on stderr as "NAME: MESSAGE", exit 2;
#   whole_numbers VAR...      dies unless each named variable holds a whole number;
#   need_binaries             dies unless $BIN holds replica and client;
#   make_work                 WORK, a new temporary directory; on exit, however the script
#                             exits, the bench ($bench_pid) and every replica in PID (by id)
#                             are killed and WORK is removed (kept with KEEP=1);
#   free_ports N              P: N free loopback ports (three per replica: client, peer,
#                             metrics), and addr ID, peer ID, metrics ID: replica ID's addresses;
#   write_config              $WORK/config.json: replicas 0, 1, 2, TLS certificates in
#                             $WORK/certs (made by the caller: `replica certs`);
#   start_replica ID [FLAG...]  replica ID in the background on $WORK/rID, log $WORK/rID.log;
#   wait_converged SECONDS    waits (bounded) until `${CLIENT[@]} status` exits 0 (every
#                             replica serving, one digest; its output in $WORK/status.txt).

die() { echo "$NAME: $*" >&2; exit 2; }

whole_numbers() {
  local v
  for v in "$@"; do
    [[ ${!v} =~ ^[0-9]+$ ]] || die "$v must be a whole number, not '${!v}'"
  done
}

need_binaries() {
  [ -x "$BIN/replica" ] && [ -x "$BIN/client" ] || die "$BIN lacks replica or client (cargo build --release)"
}

make_work() {
  WORK=$(mktemp -d "/tmp/epaxos-${NAME%.sh}.XXXXXX")
  declare -gA PID=()
  bench_pid=""
  trap cleanup EXIT
  trap 'echo "$NAME: interrupted" >&2; exit 130' INT TERM
}

cleanup() {
  local rc=$?
  [ -n "$bench_pid" ] && kill "$bench_pid" 2>/dev/null || true
  for id in "${!PID[@]}"; do kill -9 "${PID[$id]}" 2>/dev/null || true; done
  wait 2>/dev/null || true
  if [ "$KEEP" = 1 ]; then echo "$NAME: kept $WORK" >&2; else rm -rf "$WORK"; fi
  exit "$rc"
}

# python3 binds port 0 N times and reports what the kernel chose.
free_ports() {
  read -r -a P <<<"$(python3 - "$1" <<'PY'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket(); s.bind(("127.0.0.1", 0)); socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
PY
)"
}
addr() { echo "127.0.0.1:${P[$((3 * $1))]}"; }
peer() { echo "127.0.0.1:${P[$((3 * $1 + 1))]}"; }
metrics() { echo "127.0.0.1:${P[$((3 * $1 + 2))]}"; }

write_config() {
  cat >"$WORK/config.json" <<JSON
{ "replicas": [
  { "id": 0, "addr": "$(addr 0)", "peer_addr": "$(peer 0)", "metrics_addr": "$(metrics 0)" },
  { "id": 1, "addr": "$(addr 1)", "peer_addr": "$(peer 1)", "metrics_addr": "$(metrics 1)" },
  { "id": 2, "addr": "$(addr 2)", "peer_addr": "$(peer 2)", "metrics_addr": "$(metrics 2)" } ],
  "tls": { "cert_dir": "certs" } }
JSON
}

start_replica() {
  "$BIN/replica" --config "$WORK/config.json" --id "$1" --data-dir "$WORK/r$1" "${@:2}" \
    >>"$WORK/r$1.log" 2>&1 &
  PID[$1]=$!
}

wait_converged() {
  local deadline=$((SECONDS + $1))
  while [ $SECONDS -lt "$deadline" ]; do
    if "${CLIENT[@]}" status >"$WORK/status.txt" 2>&1; then return 0; fi
    sleep 1
  done
  return 1
}
