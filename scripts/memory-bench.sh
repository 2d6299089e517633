#!/usr/bin/env bash
# Manager memory under the loads that once grew it without bound (docs/benchmarks.md,
# "Memory"): 100 big updates (and 100 refused 3.5 MB ones), 200 unread assignment streams,
# three rounds of 10,000 creates and deletes. Prints RSS before / peak / after per phase,
# and the RSS of a manager restarted on the data dir the update phase left. Run as root
# (the peak is reset through /proc/PID/clear_refs).
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo build --release -q --bin warren
cargo build --release -q --example memory_probe
W=target/release/warren
PROBE=target/release/examples/memory_probe
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_mib() { awk '/VmRSS/ {printf "%.1f", $2/1024}' /proc/$1/status; }
tmp=$(mktemp -d)
pids=()
stop() { kill -9 "$1" 2>/dev/null || true; wait "$1" 2>/dev/null || true; }
cleanup() { for p in "${pids[@]}"; do stop "$p"; done; rm -rf "$tmp"; }
trap cleanup EXIT
trap "exit 130" INT TERM # a signal runs the EXIT trap too: no process is left behind

start_manager() { # $1 = data dir; sets API and PID
  API="127.0.0.1:$(port)"
  "$W" cluster init --node-id 1 --api-addr "$API" --bind-addr "127.0.0.1:$(port)" --data-dir "$1" 2>"$1.log" &
  PID=$!
  export WARREN_TLS_DIR=$1/admin # the operator credential cluster init writes
  pids+=("$PID")
  for _ in $(seq 1 200); do
    "$W" --manager "$API" cluster info -o json 2>/dev/null | grep -q '"leader_id": 1' && return 0
    sleep 0.1
  done
  echo "manager did not start" >&2; cat "$1.log" >&2; exit 1
}

for phase in ${PHASES:-updates streams churn}; do
  start_manager "$tmp/$phase"
  echo "phase_start=$phase idle_rss_mib=$(rss_mib "$PID")"
  "$PROBE" "$API" "$PID" "$phase"
  if [ "$phase" = updates ]; then
    "$W" --manager "$API" service rm big >/dev/null
    kill -TERM "$PID"; wait "$PID" || true
    "$W" manager start --data-dir "$tmp/$phase" 2>>"$tmp/$phase.log" &
    PID=$!; pids+=("$PID")
    for _ in $(seq 1 200); do
      "$W" --manager "$API" cluster info -o json 2>/dev/null | grep -q '"leader_id": 1' && break
      sleep 0.1
    done
    echo "updates_restarted_with_no_service rss_mib=$(rss_mib "$PID")"
  fi
  stop "$PID"
done
