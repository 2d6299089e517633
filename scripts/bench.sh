#!/usr/bin/env bash
# Reproduces the figures in docs/benchmarks.md. Usage: scripts/bench.sh [TRIALS] [--clean-build]
#   - release build time (clean, own target dir, only with --clean-build) and binary size
#   - manager RSS idle and after 1,000 services
#   - service creates/s through the API against one manager: 1 client and 16 clients
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
TRIALS=${1:-3}
if [ "${2:-}" = "--clean-build" ]; then
  rm -rf target/bench-build
  s=$(date +%s.%N)
  cargo build --release -q --target-dir target/bench-build
  e=$(date +%s.%N)
  echo "release_build_clean_s=$(echo "$e - $s" | bc)"
fi
# The binary alone first: building the example with it would unify dev-dependency features
# into the measured binary.
cargo build --release -q --bin warren
W=target/release/warren
echo "binary_bytes=$(stat -c %s $W) ($(file -b $W | grep -o 'not stripped\|stripped'))"
cargo build --release -q --example create_load
LOAD=target/release/examples/create_load

port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
rss_kib() { awk '/VmRSS/ {print $2}' /proc/$1/status; }
median() { sort -n | awk '{a[NR]=$1} END {print (NR%2 ? a[(NR+1)/2] : (a[NR/2]+a[NR/2+1])/2)}'; }

run_trial() { # $1 = clients, $2 = creates; prints "creates_per_s idle_rss_kib loaded_rss_kib"
  local dir api pid out idle loaded
  dir=$(mktemp -d); api="127.0.0.1:$(port)"
  $W cluster init --node-id 1 --api-addr $api --bind-addr "127.0.0.1:$(port)" --data-dir $dir/m >$dir/log 2>&1 &
  pid=$!
  export WARREN_TLS_DIR=$dir/m/admin # the operator credential cluster init writes
  for _ in $(seq 1 200); do $W --manager $api cluster info >/dev/null 2>&1 && break; sleep 0.05; done
  sleep 2 # let start-up allocations settle before reading idle RSS
  idle=$(rss_kib $pid)
  out=$($LOAD $api "$1" "$2" svc)
  loaded=$(rss_kib $pid)
  kill -TERM $pid; wait $pid || true
  rm -rf "$dir"
  echo "$(echo "$out" | sed 's/.*creates_per_s=//') $idle $loaded"
}

for clients in 1 16; do
  rates=(); idles=(); loadeds=()
  for t in $(seq 1 "$TRIALS"); do
    read -r rate idle loaded < <(run_trial $clients 1000)
    echo "trial $t: clients=$clients creates=1000 creates_per_s=$rate rss_idle_kib=$idle rss_1000_services_kib=$loaded"
    rates+=("$rate"); idles+=("$idle"); loadeds+=("$loaded")
  done
  echo "MEDIAN clients=$clients creates_per_s=$(printf '%s\n' "${rates[@]}" | median) rss_idle_kib=$(printf '%s\n' "${idles[@]}" | median) rss_1000_services_kib=$(printf '%s\n' "${loadeds[@]}" | median)"
done
