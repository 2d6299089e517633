#!/usr/bin/env bash
# Warren's main job for now: one local manager (data in ./warren-data, API on 127.0.0.1:8080),
# one worker (./warren-worker, simulated container runtime until containerd support lands)
# and a demo service whose tasks the worker runs. Ctrl-C stops both; running this again
# resumes the same cluster.
set -euo pipefail
cd "$(dirname "$0")/.."
./scripts/deps.sh
cargo build --release -q
W=target/release/warren
API=${WARREN_API:-127.0.0.1:8080}
RAFT=${WARREN_RAFT:-127.0.0.1:7946}
$W cluster init --node-id 1 --api-addr "$API" --bind-addr "$RAFT" --data-dir ./warren-data &
pid=$!
wpid=
trap 'kill -TERM $pid $wpid 2>/dev/null; wait $pid $wpid' INT TERM EXIT
for _ in $(seq 1 100); do
  $W --manager "$API" cluster info >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { echo "the manager exited; see its log above" >&2; exit 1; }
  sleep 0.1
done
# The worker joins with a token the first time; later runs resume from its data dir.
if [ -e ./warren-worker/worker.json ]; then TOKEN=(); else TOKEN=(--token "$($W --manager "$API" cluster join-token worker -q)"); fi
$W --manager "$API" worker start "${TOKEN[@]}" --node-id demo-worker --data-dir ./warren-worker --label zone=local &
wpid=$!
$W --manager "$API" service inspect hello >/dev/null 2>&1 ||
  $W --manager "$API" service create hello --image busybox:latest --replicas 2 -e GREETING=hi -- httpd -f -p 8000
for _ in $(seq 1 100); do
  $W --manager "$API" service ps hello -o json 2>/dev/null | grep -q '"state": "running"' && break
  sleep 0.1
done
$W --manager "$API" cluster info
$W --manager "$API" node ls
$W --manager "$API" service ps hello
echo
echo "Manager (pid $pid) and worker (pid $wpid) running. Try: $W --manager $API service scale hello=3 ; $W --manager $API service ps hello ; Ctrl-C to stop."
wait $pid
