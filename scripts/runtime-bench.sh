#!/usr/bin/env bash
# The containerd runtime against `ctr` on the same containerd, side by side in one run
# (docs/benchmarks.md, "Real containers"):
#   - service create --replicas 3 -> all 3 containers RUNNING (as `ctr tasks ls` shows),
#     image cached and uncached (a fresh containerd namespace per uncached trial), against
#     `ctr image pull` (uncached only) + 3 x `ctr run -d` of the same image;
#   - the worker's RSS with 50 running containers.
# Medians of TRIALS (default 5). Needs root; starts and removes its own rig (scripts/rig.sh).
set -euo pipefail
TRIALS=${1:-5}
# shellcheck source=scripts/bench-common.sh
. "$(dirname "$0")/bench-common.sh"
CMD='trap "exit 0" TERM; sleep 100000 & wait'
running() { ctr --address "$SOCK" -n "$1" tasks ls 2>/dev/null | grep -c RUNNING || true; }

# Warren: create -> N running in namespace $1; prints ms.
warren_create() { # $1 ns, $2 service name, $3 replicas
  local t0; t0=$(now_ms)
  "$W" --manager "$API" service create -d "$2" --image "$IMG" --replicas "$3" --constraint "node.id==$1" -- sh -c "$CMD" >/dev/null
  until [ "$(running "$1")" -ge "$3" ]; do sleep 0.02; done
  echo $(( $(now_ms) - t0 ))
}
warren_rm() { # $1 ns, $2 service
  "$W" --manager "$API" service rm "$2" >/dev/null
  until [ -z "$(ctr --address "$SOCK" -n "$1" containers ls -q)" ]; do sleep 0.05; done
}
ctr_run3() { # $1 ns, $2 pull first (1/0); prints ms
  local t0; t0=$(now_ms)
  [ "$2" = 1 ] && ctr --address "$SOCK" -n "$1" image pull --plain-http "$IMG" >/dev/null
  for i in 1 2 3; do ctr --address "$SOCK" -n "$1" run -d "$IMG" "$1-$i" sh -c "$CMD" >/dev/null; done
  echo $(( $(now_ms) - t0 ))
}
ctr_rm3() {
  for i in 1 2 3; do
    ctr --address "$SOCK" -n "$1" tasks kill -s SIGKILL "$1-$i" >/dev/null 2>&1 || true
    for _ in $(seq 1 100); do ctr --address "$SOCK" -n "$1" tasks delete "$1-$i" >/dev/null 2>&1 && break; sleep 0.05; done
    ctr --address "$SOCK" -n "$1" containers delete "$1-$i" >/dev/null 2>&1 || true
  done
}

w_unc=(); c_unc=(); w_cached=(); c_cached=()
for t in $(seq 1 "$TRIALS"); do
  [ "${SKIP_LATENCY:-}" = 1 ] && break
  # Uncached: fresh namespaces on both sides.
  start_worker "wu$t"
  w_unc+=("$(warren_create "wu$t" "u$t" 3)")
  c_unc+=("$(ctr_run3 "cu$t" 1)")
  ctr_rm3 "cu$t"
  # Cached: the same namespaces again, image present.
  warren_rm "wu$t" "u$t"
  w_cached+=("$(warren_create "wu$t" "c$t" 3)")
  c_cached+=("$(ctr_run3 "cu$t" 0)")
  ctr_rm3 "cu$t"
  warren_rm "wu$t" "c$t"
  kill "$WPID"; wait "$WPID" 2>/dev/null || true
  echo "trial $t: uncached warren ${w_unc[-1]} ms ctr ${c_unc[-1]} ms; cached warren ${w_cached[-1]} ms ctr ${c_cached[-1]} ms"
done
[ "${SKIP_LATENCY:-}" = 1 ] || {
wu=$(printf '%s\n' "${w_unc[@]}" | median); cu=$(printf '%s\n' "${c_unc[@]}" | median)
wc=$(printf '%s\n' "${w_cached[@]}" | median); cc=$(printf '%s\n' "${c_cached[@]}" | median)
echo "create_to_3_running_uncached_ms warren=$wu ctr=$cu ratio=$(awk -v a="$wu" -v b="$cu" 'BEGIN{printf "%.2f", a/b}')"
echo "create_to_3_running_cached_ms warren=$wc ctr=$cc ratio=$(awk -v a="$wc" -v b="$cc" 'BEGIN{printf "%.2f", a/b}')"
}

# Worker RSS idle, then with 50 running containers.
start_worker rss
sleep 2 # settle before reading RSS (a measurement pause, not synchronisation)
echo "worker_rss_idle_mib=$(awk '/VmRSS/ {printf "%.1f", $2/1024}' /proc/$WPID/status) anon_mib=$(awk '/RssAnon/ {printf "%.1f", $2/1024}' /proc/$WPID/status)"
warren_create rss fifty 50 >/dev/null
sleep 2 # let the agent settle into its steady state before reading RSS (a measurement pause, not synchronisation)
kib() { awk -v k="$1:" '$1 == k {printf "%.1f", $2/1024}' /proc/$WPID/status; }
echo "worker_rss_50_containers_mib=$(kib VmRSS) anon_mib=$(kib RssAnon) file_mib=$(kib RssFile) hwm_mib=$(kib VmHWM)"
# Each container's log writer (run by its shim): median RSS and its own (anonymous) part.
lw=$(pgrep -f "log-writer $tmp/rss/logs/" || true)
if [ -n "$lw" ]; then
  lw_rss=$(for p in $lw; do awk '/^VmRSS/ {print $2}' /proc/$p/status; done | median)
  lw_anon=$(for p in $lw; do awk '/^RssAnon/ {print $2}' /proc/$p/status; done | median)
  echo "log_writers=$(echo "$lw" | wc -w) log_writer_rss_kib_median=$lw_rss anon_kib=$lw_anon"
fi
[ -n "${SMAPS_OUT:-}" ] && cp /proc/$WPID/smaps "$SMAPS_OUT"
warren_rm rss fifty
if [ -n "${WORKER_WRAP:-}" ]; then pkill -TERM -f "node-id rss" || true; sleep 3; fi
