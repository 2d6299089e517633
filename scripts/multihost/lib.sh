# shellcheck shell=bash
# The multi-host harness: what every test script needs, written once against a host
# abstraction that each backend (backend-netns.sh, backend-qemu.sh, lima/backend-lima.sh)
# implements:
#   on HOST CMD...          run CMD on HOST (its network, its files)
#   on_client CMD...        run CMD where the operator sits (reaches every host)
#   hostdir HOST            a directory on HOST for this run's data and logs
#   host_addr HOST          HOST's address as the other hosts see it
#   copy_to HOST SRC DST    copy a local file to HOST (DST relative to hostdir)
#   copy_from HOST SRC DST  and back
#   cut_off HOST / heal HOST  cut HOST off the network, and restore it
#   power_off HOST          hard power-off (VM backends), 1 when the backend has none
#   containerd_socket HOST  the worker host's containerd
#   client_tls_dir          where the client finds the operator credential
#   backend_up / backend_down
# Hosts: managers m1..m3, workers w1..w2. Everything a run makes is removed on exit, also
# on failure or Ctrl-C.

REPO=$(cd "$(dirname "${BASH_SOURCE[0]}")/../.." && pwd)
MANAGERS=(m1 m2 m3)
WORKERS=(w1 w2)
HOSTS=("${MANAGERS[@]}" "${WORKERS[@]}")
API_PORT=8080
RAFT_PORT=7946
# shellcheck disable=SC2034 # filled and emptied by the backends
CREATED_NS=() RIG_STARTED=()
DAEMONS=()
RUN_DIR=""

log() { printf '[%s] %s\n' "$(date +%H:%M:%S.%N | cut -c1-12)" "$*" >&2; }
need_cmds() {
  local c
  for c in "$@"; do command -v "$c" >/dev/null || { echo "needs $c" >&2; exit 1; }; done
}
now() { date +%s.%N; }
elapsed() { python3 -c "print(f'{$2-$1:.3f}')"; }

# Ends the run with the tail of every daemon's log, so a failure can be read from CI output.
fail() {
  log "FAIL: $*"
  local d
  for d in "${DAEMONS[@]}"; do
    echo "---- ${d%%:*} ${d#*:} (last 15 lines)" >&2
    on "${d%%:*}" tail -n 15 "$(hostdir "${d%%:*}")/${d#*:}.log" >&2 2>/dev/null || true
  done
  exit 1
}

# wait_until SECONDS WHAT CMD...: polls CMD every 50 ms until it succeeds, or fails the run.
wait_until() {
  local secs=$1 what=$2; shift 2
  local deadline; deadline=$(python3 -c "import time; print(time.time() + $secs)")
  until "$@" >/dev/null 2>&1; do
    python3 -c "import time,sys; sys.exit(time.time() < $deadline)" && fail "timed out after ${secs}s waiting for: $what"
    sleep 0.05
  done
}

# start_daemon HOST NAME CMD...: runs CMD on HOST in its own session, pid in NAME.pid,
# output in NAME.log (both in hostdir).
start_daemon() {
  local h=$1 name=$2; shift 2
  local dir; dir=$(hostdir "$h")
  # shellcheck disable=SC2016 # expanded by the host's shell
  on "$h" sh -c 'cd "$1"; name=$2; shift 2; setsid "$@" >>"$name.log" 2>&1 </dev/null & echo $! >"$name.pid"' \
    sh "$dir" "$name" "$@"
  [[ " ${DAEMONS[*]} " == *" $h:$name "* ]] || DAEMONS+=("$h:$name")
}
# signal_daemon HOST NAME SIGNAL
signal_daemon() {
  # shellcheck disable=SC2016
  on "$1" sh -c 'kill -s "$2" "$(cat "$1")"' sh "$(hostdir "$1")/$2.pid" "$3"
}
daemon_alive() {
  # shellcheck disable=SC2016
  on "$1" sh -c 'kill -0 "$(cat "$1")" 2>/dev/null' sh "$(hostdir "$1")/$2.pid"
}
stop_daemons() {
  local d h name
  for d in "${DAEMONS[@]}"; do
    h=${d%%:*} name=${d#*:}
    signal_daemon "$h" "$name" KILL 2>/dev/null || true
  done
  for d in "${DAEMONS[@]}"; do
    h=${d%%:*} name=${d#*:}
    for _ in $(seq 1 100); do daemon_alive "$h" "$name" || break; sleep 0.05; done
  done
  DAEMONS=()
}

harness_cleanup() {
  local rc=$?
  trap - EXIT INT TERM HUP PIPE
  set +e
  stop_daemons
  backend_down
  [[ -n $RUN_DIR && -d $RUN_DIR ]] && rm -rf "$RUN_DIR"
  exit "$rc"
}

# harness_up BACKEND: creates the hosts and a temp dir; removes both on exit.
harness_up() {
  local backend=$1
  local file
  case $backend in
    netns | qemu) file=$REPO/scripts/multihost/backend-$backend.sh ;;
    lima) file=$REPO/lima/backend-lima.sh ;;
    *) echo "unknown backend $backend (netns, qemu or lima)" >&2; exit 2 ;;
  esac
  # shellcheck source=/dev/null
  source "$file"
  RUN_DIR=$(mktemp -d -t warren-multihost.XXXXXX)
  trap harness_cleanup EXIT
  trap 'exit 130' INT TERM HUP PIPE # runs the EXIT trap: nothing is left behind
  log "bringing up hosts (${backend}): ${HOSTS[*]}"
  backend_up
}

# The lab (netns and qemu backends): a network namespace ($LAB_NS) where the client and the
# registry live, with one bridge per network: lab_up ADDR... gives br0 the first address
# (/24), br1 the second.
lab_up() {
  ip netns add "$LAB_NS"
  CREATED_NS+=("$LAB_NS")
  on_client ip link set lo up
  local i=0 a
  for a in "$@"; do
    on_client ip link add "br$i" type bridge
    on_client ip addr add "$a/24" dev "br$i"
    on_client ip link set "br$i" up
    i=$((i + 1))
  done
}
# The rig's registry with the test image, in the lab on br0's address.
lab_registry_up() {
  eval "$(on_client env RIG_REGISTRY_HOST="$LAB_ADDR" RIG_NO_CONTAINERD=1 "$REPO/scripts/rig.sh" start "$RUN_DIR/lab-rig")"
  RIG_STARTED+=("lab:$RUN_DIR/lab-rig")
  REGISTRY=$WARREN_RIG_REGISTRY
  # shellcheck disable=SC2034 # the tests deploy it
  IMAGE=$WARREN_RIG_IMAGE
}

api() { echo "$(host_addr "$1"):$API_PORT"; }
apis() { local out=() h; for h in "$@"; do out+=("$(api "$h")"); done; (IFS=,; echo "${out[*]}"); }
# The CLI as the operator runs it, against the given managers (default: all of them).
cli() { on_client "$CLIENT_BIN" --tls-dir "$CLIENT_TLS" --manager "${CLI_MANAGERS:-$(apis "${MANAGERS[@]}")}" "$@"; }
# The CLI run on a host itself, against that host's own manager.
cli_on() { local h=$1; shift; on "$h" "$WBIN" --tls-dir "$(hostdir "$h")/admin" --manager "$(api "$h")" "$@"; }
json() { python3 -c "import json,sys; d=json.load(sys.stdin); $1"; }

manager_node_id() { echo "${1#m}"; }
manager_host() { echo "m$1"; }
# The leader a manager reports (empty when it knows none).
leader_seen_by() { CLI_MANAGERS=$(api "$1") cli cluster info -o json 2>/dev/null | json 'print(d.get("leader_id") or "")'; }
# Prints the leader's host when every given manager answers, names the same leader and
# sees all three voters reachable; fails otherwise.
all_agree() {
  local l="" h x
  for h in "$@"; do
    x=$(CLI_MANAGERS=$(api "$h") cli cluster info -o json 2>/dev/null |
      json 'print(d["leader_id"], sum(m["voter"] and m["reachable"] for m in d["managers"]))') || return 1
    [[ ${x#* } == 3 && ${x% *} != 0 ]] || return 1
    [[ -z $l || $l == "${x% *}" ]] || return 1
    l=${x% *}
  done
  manager_host "$l"
}

# The leader's host once all three managers agree (polled: a CLI call can fail on a busy host).
agreed_leader() {
  wait_until 60 "three voters agreeing on a leader" all_agree "${MANAGERS[@]}"
  local l
  for _ in 1 2 3 4 5; do l=$(all_agree "${MANAGERS[@]}") && { echo "$l"; return; }; done
  fail "the managers agreed on a leader, then not five times in a row"
}

manager_args() {
  echo --api-addr "$(api "$1")" --bind-addr "$(host_addr "$1"):$RAFT_PORT" --data-dir "$(hostdir "$1")/data"
}

# Forms the cluster over mTLS with join tokens: m1 initialises, m2 and m3 join as voters,
# w1 and w2 join as workers with their own containerd.
form_cluster() {
  local h token
  # shellcheck disable=SC2046
  start_daemon m1 manager "$WBIN" cluster init --node-id 1 $(manager_args m1)
  wait_until 30 "m1 to answer" on m1 test -f "$(hostdir m1)/data/admin/admin.crt"
  # The operator credential cluster init wrote: to the client and to every host.
  local f local_tls=$RUN_DIR/admin
  mkdir -p "$local_tls"
  for f in admin.crt admin.key ca.crt; do
    wait_until 10 "m1's $f" on m1 test -s "$(hostdir m1)/data/admin/$f"
    copy_from m1 "data/admin/$f" "$local_tls/$f"
  done
  for h in "${HOSTS[@]}"; do
    on "$h" mkdir -p "$(hostdir "$h")/admin"
    for f in admin.crt admin.key ca.crt; do copy_to "$h" "$local_tls/$f" "admin/$f"; done
  done
  CLIENT_TLS=$(client_tls_dir)
  wait_until 30 "m1 to serve the API" cli_on m1 cluster info
  token=$(cli_on m1 cluster join-token manager -q)
  for h in m2 m3; do
    # shellcheck disable=SC2046
    start_daemon "$h" manager "$WBIN" manager join --token "$token" --leader "$(api m1)" \
      --node-id "$(manager_node_id "$h")" $(manager_args "$h")
  done
  wait_until 60 "three voters agreeing on a leader" all_agree "${MANAGERS[@]}"
  token=$(cli cluster join-token worker -q)
  for h in "${WORKERS[@]}"; do
    start_daemon "$h" worker "$WBIN" worker start --token "$token" --manager "$(apis "${MANAGERS[@]}")" \
      --node-id "$h" --data-dir "$(hostdir "$h")/worker" --address "$(host_addr "$h")" \
      --containerd-socket "$(containerd_socket "$h")" --containerd-namespace "warren-$h" \
      --insecure-registry "$REGISTRY"
  done
  wait_until 60 "both workers ready" workers_ready 2
  log "cluster formed: 3 voters (leader $(all_agree "${MANAGERS[@]}")), ${#WORKERS[@]} workers ready"
}

workers_ready() {
  [[ $(cli node ls -o json | json 'print(sum(1 for n in d if n.get("role") == "worker" and n.get("status") == "ready"))') == "$1" ]]
}
