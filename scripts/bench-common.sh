# Sourced by the real-container benchmarks (runtime-bench.sh, update-bench.sh): builds the
# release binary, starts a rig (scripts/rig.sh: containerd, registry, test image) and one
# manager, and removes all of it on exit. Sets W (the binary), tmp, API, TOKEN, SOCK, IMG,
# WARREN_TLS_DIR; start_worker NAME starts a worker on the rig's containerd (WPID).
# shellcheck shell=bash
cd "$(dirname "$0")/.." || exit 1
./scripts/deps.sh >/dev/null
cargo build --release -q --bin warren
W=${WARREN_BIN:-$PWD/target/release/warren}
tmp=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done
  ./scripts/rig.sh stop "$tmp/rig" >/dev/null 2>&1 || true
  rm -rf "$tmp"
}
trap cleanup EXIT
trap "exit 130" INT TERM # a signal runs the EXIT trap too: no process is left behind
eval "$(./scripts/rig.sh start "$tmp/rig")"
SOCK=$WARREN_RIG_CONTAINERD_SOCKET
# shellcheck disable=SC2034 # used by the scripts that source this
IMG=$WARREN_RIG_IMAGE
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

API="127.0.0.1:$(port)"
"$W" cluster init --node-id 1 --api-addr "$API" --bind-addr "127.0.0.1:$(port)" --data-dir "$tmp/m1" 2>"$tmp/m1.log" &
pids+=($!)
export WARREN_TLS_DIR=$tmp/m1/admin # the operator credential cluster init writes
for _ in $(seq 1 200); do "$W" --manager "$API" cluster info >/dev/null 2>&1 && break; sleep 0.1; done
TOKEN=$("$W" --manager "$API" cluster join-token worker -q)

start_worker() { # $1 = name (node id, namespace, data dir); sets WPID
  # shellcheck disable=SC2086 # WORKER_ENV and WORKER_WRAP are word lists
  env ${WORKER_ENV:-} ${WORKER_WRAP:-} "$W" --manager "$API" worker start --token "$TOKEN" --node-id "$1" --data-dir "$tmp/$1" \
    --containerd-socket "$SOCK" --containerd-namespace "$1" --insecure-registry "$WARREN_RIG_REGISTRY" \
    2>"$tmp/$1.log" &
  WPID=$!
  pids+=("$WPID")
  for _ in $(seq 1 200); do
    "$W" --manager "$API" node ls 2>/dev/null | grep -q "$1 .*ready" && return 0
    sleep 0.05
  done
  echo "worker $1 did not register" >&2; cat "$tmp/$1.log" >&2; exit 1
}
