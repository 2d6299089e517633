#!/usr/bin/env bash
# A rolling update on real containers (docs/benchmarks.md, "Rolling updates"): a manager and
# two workers on the rig's containerd (scripts/rig.sh), 10 replicas, `service update --env-add`
# with parallelism 2, delay 0, monitor 1 s, stop-first; wall time of `service update` (which
# waits until the update completed) against the lower bound the settings give:
# ceil(10 / 2) batches x 1 s monitor = 5 s. Median of TRIALS (default 5). Needs root.
set -euo pipefail
TRIALS=${1:-5}
# shellcheck source=scripts/bench-common.sh
. "$(dirname "$0")/bench-common.sh"
start_worker ub1
start_worker ub2

CMD='trap "exit 0" TERM; sleep 100000 & wait'
"$W" --manager "$API" service create web --image "$IMG" --replicas 10 --stop-timeout 2s \
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
