# shellcheck shell=bash disable=SC2034 # sets what lib.sh and the tests read
# lima backend: every host is a Lima VM (lima/setup.sh makes them from lima/warren.yaml) on
# Lima's user-v2 network. The operator's machine only drives them: the client (the CLI)
# and the test image's registry run on the first worker VM, so every address the tests use
# is one the VMs see. A cut is an nftables table in the VM that drops everything but the
# ssh that limactl itself uses. WARREN_LIMA_KEEP=1 keeps the VMs after the run (creating
# them takes minutes); otherwise lima/cleanup.sh deletes them at the end.

GUEST_DIR=/var/lib/warren-test
LIMA_CLIENT=w1
declare -A LIMA_ADDR

inst() { echo "warren-$1"; }
on() {
  local h=$1; shift
  limactl shell --workdir / "$(inst "$h")" sudo bash -c "$(printf '%q ' "$@")"
}
on_client() { on "$LIMA_CLIENT" "$@"; }
hostdir() { echo "$GUEST_DIR"; }
host_addr() { echo "${LIMA_ADDR[$1]}"; }
copy_to() {
  # shellcheck disable=SC2016 # expanded in the VM
  limactl shell --workdir / "$(inst "$1")" sudo sh -c 'cat >"$1" && sync "$1"' sh "$GUEST_DIR/$3" <"$2"
}
copy_from() { limactl shell --workdir / "$(inst "$1")" sudo cat "$GUEST_DIR/$2" >"$3"; }
cut_off() {
  on "$1" nft -f - <<'NFT'
table inet warren_cut {
  chain in { type filter hook input priority -10; policy drop; iif lo accept; tcp dport 22 accept; }
  chain out { type filter hook output priority -10; policy drop; oif lo accept; tcp sport 22 accept; }
}
NFT
}
heal() { on "$1" nft delete table inet warren_cut; }
containerd_socket() { echo /run/containerd/containerd.sock; }
client_tls_dir() { echo "$GUEST_DIR/admin"; }
power_off() {
  [[ ${2:-} == check ]] && return 0
  limactl stop --force "$(inst "$1")"
}
power_on() {
  limactl start --tty=false "$(inst "$1")"
  wait_until 300 "$1 to boot again" on "$1" ctr version
}

backend_up() {
  need_cmds limactl
  "$REPO/lima/setup.sh" --warren-bin "$WARREN_BIN" --managers "${#MANAGERS[@]}" --workers "${#WORKERS[@]}"
  local h
  for h in "${HOSTS[@]}"; do
    # The address the other VMs reach this one at: its source address toward them.
    LIMA_ADDR[$h]=$(on "$h" sh -c "ip -4 route get 192.168.104.1 | sed -n 's/.* src \([0-9.]*\).*/\1/p'")
    [[ -n ${LIMA_ADDR[$h]} ]] || { echo "no user-v2 address on $h" >&2; exit 1; }
    on "$h" mkdir -p "$GUEST_DIR/scripts"
    on "$h" nft delete table inet warren_cut 2>/dev/null || true
  done
  copy_to "$LIMA_CLIENT" "$REPO/scripts/rig.sh" scripts/rig.sh
  copy_to "$LIMA_CLIENT" "$REPO/scripts/deps.sh" scripts/deps.sh
  on "$LIMA_CLIENT" chmod 755 "$GUEST_DIR/scripts/rig.sh" "$GUEST_DIR/scripts/deps.sh"
  eval "$(on_client env RIG_REGISTRY_HOST="$(host_addr "$LIMA_CLIENT")" RIG_NO_CONTAINERD=1 \
    "$GUEST_DIR/scripts/rig.sh" start "$GUEST_DIR/lab-rig")"
  RIG_STARTED+=("$LIMA_CLIENT:$GUEST_DIR/lab-rig")
  REGISTRY=$WARREN_RIG_REGISTRY
  IMAGE=$WARREN_RIG_IMAGE
  WBIN=/usr/local/bin/warren
  CLIENT_BIN=/usr/local/bin/warren
}

backend_down() {
  local r h
  for r in "${RIG_STARTED[@]}"; do on "${r%%:*}" "$GUEST_DIR/scripts/rig.sh" stop "${r#*:}" || true; done
  RIG_STARTED=()
  for h in "${HOSTS[@]}"; do
    on "$h" sh -c "nft delete table inet warren_cut 2>/dev/null; rm -rf $GUEST_DIR/data $GUEST_DIR/worker" || true
  done
  # The workers' containers, when the VMs are kept.
  for h in "${WORKERS[@]}"; do
    # shellcheck disable=SC2016 # expanded in the VM
    on "$h" sh -c 'for t in $(ctr -n "$1" tasks ls -q); do ctr -n "$1" tasks rm -f "$t"; done
      for c in $(ctr -n "$1" containers ls -q); do ctr -n "$1" containers rm "$c"; done' sh "warren-$h" || true
  done
  [[ ${WARREN_LIMA_KEEP:-} == 1 ]] || "$REPO/lima/cleanup.sh"
}
