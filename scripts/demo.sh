#!/usr/bin/env bash
# Warren's main job: one local manager (data in ./warren-data, API on 127.0.0.1:8080), one
# worker (./warren-worker) running real containers through a private containerd, and a demo
# service of two busybox httpd replicas answering on 127.0.0.1:8001 and :8002. No internet
# needed: the image is built from Debian's busybox-static and served by a registry on
# 127.0.0.1:5000 (scripts/rig.sh, in ./warren-rig). Ctrl-C stops everything and removes the
# containers; running this again resumes the same cluster.
#   ./scripts/demo.sh down   stops a running demo and removes all it made (data dirs, rig)
#
# On a real host, point the worker at the system containerd instead
# (`--containerd-socket /run/containerd/containerd.sock`, the default).
set -euo pipefail
cd "$(dirname "$0")/.."
if [ "${1:-}" = down ]; then
  # A demo running in another terminal: its processes, by the PIDs it recorded.
  if [ -f ./warren-demo.pids ]; then
    for p in $(cat ./warren-demo.pids); do kill -TERM "$p" 2>/dev/null || true; done
    for p in $(cat ./warren-demo.pids); do
      for _ in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.1; done
    done
  fi
  ./scripts/rig.sh stop ./warren-rig
  rm -rf ./warren-data ./warren-worker ./warren-demo.pids
  echo "demo removed (./warren-data, ./warren-worker, ./warren-rig)"
  exit 0
fi
./scripts/deps.sh
cargo build --release -q
W=target/release/warren
API=${WARREN_API:-127.0.0.1:8080}
RAFT=${WARREN_RAFT:-127.0.0.1:7946}
pid="" wpid=""
stop_all() {
  kill -TERM $pid $wpid 2>/dev/null || true
  wait $pid $wpid 2>/dev/null || true
  ./scripts/rig.sh stop ./warren-rig
  rm -f ./warren-demo.pids
}
trap stop_all INT TERM EXIT
./scripts/rig.sh stop ./warren-rig
eval "$(RIG_REGISTRY_PORT=${WARREN_REGISTRY_PORT:-5000} ./scripts/rig.sh start ./warren-rig)"
$W cluster init --node-id 1 --api-addr "$API" --bind-addr "$RAFT" --data-dir ./warren-data &
export WARREN_TLS_DIR=$PWD/warren-data/admin # the operator credential cluster init writes
pid=$!
for _ in $(seq 1 100); do
  $W --manager "$API" cluster info >/dev/null 2>&1 && break
  kill -0 $pid 2>/dev/null || { echo "the manager exited; see its log above" >&2; exit 1; }
  sleep 0.1
done
# The worker joins with a token the first time; later runs resume from its data dir.
if [ -e ./warren-worker/worker.json ]; then TOKEN=(); else TOKEN=(--token "$($W --manager "$API" cluster join-token worker -q)"); fi
$W --manager "$API" worker start "${TOKEN[@]}" --node-id demo-worker --data-dir ./warren-worker --label zone=local \
  --containerd-socket "$WARREN_RIG_CONTAINERD_SOCKET" --containerd-namespace warren-demo \
  --insecure-registry "$WARREN_RIG_REGISTRY" &
wpid=$!
echo "$pid $wpid" >./warren-demo.pids
# Host networking: each replica serves on 8000 + its slot.
$W --manager "$API" service inspect hello >/dev/null 2>&1 ||
  $W --manager "$API" service create hello --image "$WARREN_RIG_IMAGE" --replicas 2 -e GREETING=hi \
    -- sh -c 'echo "replica $WARREN_TASK_SLOT serving on port $((8000 + WARREN_TASK_SLOT))"; exec httpd -f -p $((8000 + WARREN_TASK_SLOT)) -h /www'
for _ in $(seq 1 300); do
  curl -sf http://127.0.0.1:8001/ >/dev/null 2>&1 && curl -sf http://127.0.0.1:8002/ >/dev/null 2>&1 &&
    [ "$($W --manager "$API" service ps hello -o json | grep -c '"state": "running"')" -ge 2 ] && break
  sleep 0.1
done
$W --manager "$API" cluster info
$W --manager "$API" node ls
$W --manager "$API" service ps hello
echo "curl http://127.0.0.1:8001/ -> $(curl -s http://127.0.0.1:8001/)"
$W --manager "$API" service logs hello --tail 5
echo
echo "Try: curl http://127.0.0.1:8001/   (replica 1; replica 2 on :8002)"
echo "Manager (pid $pid) and worker (pid $wpid) running real containers. Try: $W --manager $API service logs hello -f ; $W --manager $API service scale hello=3 ; Ctrl-C to stop; ./scripts/demo.sh down to remove everything."
wait $pid
