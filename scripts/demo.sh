#!/usr/bin/env bash
# Warren's main job for now: one local manager (data in ./warren-data, API on 127.0.0.1:8080)
# with a demo service. Ctrl-C stops the manager; running this again resumes the same cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo build --release -q
W=target/release/warren
API=${WARREN_API:-127.0.0.1:8080}
RAFT=${WARREN_RAFT:-127.0.0.1:7946}
$W cluster init --node-id 1 --api-addr "$API" --bind-addr "$RAFT" --data-dir ./warren-data &
pid=$!
trap 'kill -TERM $pid 2>/dev/null; wait $pid' INT TERM EXIT
for _ in $(seq 1 100); do
  $W --manager "$API" cluster info >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { echo "the manager exited; see its log above" >&2; exit 1; }
  sleep 0.1
done
$W --manager "$API" service inspect hello >/dev/null 2>&1 ||
  $W --manager "$API" service create hello --image busybox:latest --replicas 2 -e GREETING=hi -- httpd -f -p 8000
$W --manager "$API" cluster info
$W --manager "$API" service ls
echo
echo "Manager running (pid $pid). Try: $W --manager $API service scale hello=3 ; Ctrl-C to stop."
wait $pid
