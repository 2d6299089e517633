# shellcheck shell=bash disable=SC2034 # sets what lib.sh and the tests read
# netns backend: every host is a network namespace with its own address on a bridge; the
# bridge, the registry and the test client live in one more namespace (the "lab"), so
# nothing outside the namespaces this run creates is touched. Processes run on the shared
# filesystem, each host with its own directory under $RUN_DIR.
#
#   lab        10.77.0.1   bridge br0, the registry, the client (CLI)
#   m1..m3     10.77.0.11-13
#   w1..w2     10.77.0.21-22  each with its own containerd (scripts/rig.sh, containerd only)

NETNS_PREFIX=${NETNS_PREFIX:-wmh$$}
LAB_NS=$NETNS_PREFIX-lab
LAB_ADDR=10.77.0.1

host_ns() { echo "$NETNS_PREFIX-$1"; }

# Runs a command on a host: only the network namespace changes (not the mount namespace,
# so containerd and runc see the host's cgroups and /run).
on() { local h=$1; shift; nsenter --net="/run/netns/$(host_ns "$h")" -- "$@"; }
on_client() { nsenter --net="/run/netns/$LAB_NS" -- "$@"; }
hostdir() { echo "$RUN_DIR/$1"; }
host_addr() {
  case $1 in
    m*) echo "10.77.0.$((10 + ${1#m}))" ;;
    w*) echo "10.77.0.$((20 + ${1#w}))" ;;
  esac
}
copy_to() { cp -a "$2" "$(hostdir "$1")/$3"; }
copy_from() { cp -a "$(hostdir "$1")/$2" "$3"; }
# A cut is the host's bridge port going down: its packets go nowhere, as with a pulled cable.
cut_off() { on_client ip link set "p-$1" down; }
heal() { on_client ip link set "p-$1" up; }
# The host's containerd socket (workers).
containerd_socket() { echo "$(hostdir "$1")/rig/containerd/containerd.sock"; }
client_tls_dir() { echo "$RUN_DIR/admin"; }
# A hard power-off is not something a namespace has.
power_off() { return 1; }
power_on() { return 1; }

backend_up() {
  need_cmds ip nsenter
  lab_up "$LAB_ADDR"
  local h
  for h in "${HOSTS[@]}"; do
    ip netns add "$(host_ns "$h")"
    CREATED_NS+=("$(host_ns "$h")")
    mkdir -p "$(hostdir "$h")"
    ip link add eth0 netns "$(host_ns "$h")" type veth peer name "p-$h" netns "$LAB_NS"
    on_client ip link set "p-$h" master br0 up
    on "$h" ip link set lo up
    on "$h" ip addr add "$(host_addr "$h")/24" dev eth0
    on "$h" ip link set eth0 up
  done
  # The registry (and the test image) in the lab, reachable from every host.
  lab_registry_up
  for h in "${WORKERS[@]}"; do
    on "$h" env RIG_CONTAINERD_ONLY=1 "$REPO/scripts/rig.sh" start "$(hostdir "$h")/rig" >/dev/null
    RIG_STARTED+=("$h:$(hostdir "$h")/rig")
  done
  WBIN=$WARREN_BIN
  CLIENT_BIN=$WARREN_BIN
}

backend_down() {
  local r h dir
  for r in "${RIG_STARTED[@]}"; do
    h=${r%%:*} dir=${r#*:}
    if [[ $h == lab ]]; then on_client "$REPO/scripts/rig.sh" stop "$dir" || true
    else on "$h" "$REPO/scripts/rig.sh" stop "$dir" || true; fi
  done
  RIG_STARTED=()
  for r in "${CREATED_NS[@]}"; do ip netns del "$r" 2>/dev/null || true; done
  CREATED_NS=()
}
