#!/usr/bin/env bash
# A rolling update on real containers (docs/benchmarks.md, "Rolling updates"): a manager and
# two workers on the rig's containerd (scripts/rig.sh), 10 replicas, `service update --env-add`
# with parallelism 2, delay 0, monitor 1 s, stop-first; wall time of `service update` (which
# waits until the update completed) against the lower bound the settings give:
# ceil(10 / 2) batches x 1 s monitor = 5 s. Median of TRIALS (default 5). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS=${1:-5}
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
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
now_ms() { date +%s%3N; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2) ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2}'; }

API="127.0.0.1:$(port)"
"$W" cluster init --node-id 1 --api-addr "$API" --bind-addr "127.0.0.1:$(port)" --data-dir "$tmp/m1" 2>"$tmp/m1.log" &
pids+=($!)
export WARREN_TLS_DIR=$tmp/m1/admin # the operator credential cluster init writes
for _ in $(seq 1 200); do "$W" --manager "$API" cluster info >/dev/null 2>&1 && break; sleep 0.1; done
TOKEN=$("$W" --manager "$API" cluster join-token worker -q)
for w in ub1 ub2; do
  "$W" --manager "$API" worker start --token "$TOKEN" --node-id "$w" --data-dir "$tmp/$w" \
    --containerd-socket "$WARREN_RIG_CONTAINERD_SOCKET" --containerd-namespace "$w" \
    --insecure-registry "$WARREN_RIG_REGISTRY" 2>"$tmp/$w.log" &
  pids+=($!)
done
for _ in $(seq 1 200); do [ "$("$W" --manager "$API" node ls 2>/dev/null | grep -c ready)" -ge 2 ] && break; sleep 0.05; done

CMD='trap "exit 0" TERM; sleep 100000 & wait'
"$W" --manager "$API" service create web --image "$WARREN_RIG_IMAGE" --replicas 10 --stop-timeout 2s \
  --update-parallelism 2 --update-monitor 1s -e V=0 -- sh -c "$CMD" >/dev/null 2>&1
took=()
own=()
for t in $(seq 1 "$TRIALS"); do
  t0=$(now_ms)
  "$W" --manager "$API" service update web --env-add "V=$t" >"$tmp/update.out" 2>&1 || {
    cat "$tmp/update.out" >&2; exit 1
  }
  took+=($(( $(now_ms) - t0 )))
  # The update's own time, from its replicated status (start to completed, leader's clock).
  own+=("$("$W" --manager "$API" service inspect web -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["update_status"]["took_ms"])')")
  echo "trial $t: service update (10 replicas, parallelism 2, monitor 1 s) returned after ${took[-1]} ms; the update took ${own[-1]} ms"
done
m=$(printf '%s\n' "${took[@]}" | median)
o=$(printf '%s\n' "${own[@]}" | median)
echo "rolling_update_10_replicas_ms cli_median=$m update_median=$o lower_bound=5000 ratio_cli=$(awk -v a="$m" 'BEGIN{printf "%.2f", a/5000}') ratio_update=$(awk -v a="$o" 'BEGIN{printf "%.2f", a/5000}')"
