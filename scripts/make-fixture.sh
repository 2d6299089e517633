#!/usr/bin/env bash
# Writes tests/fixtures/format-XX/: a manager's database, a worker's state and a backup, as
# the current build writes them. Run once per state format (when codec::SEALED_FORMAT
# changes); the fixtures of earlier formats stay, and tests/fixture.rs opens every one with
# every later build.
#   scripts/make-fixture.sh [WARREN_BIN]
set -euo pipefail
cd "$(dirname "$0")/.."
bin=${1:-target/debug/warren}
format=$(sed -n 's/^pub const SEALED_FORMAT: u8 = 0x\([0-9A-Fa-f]*\);/\1/p' src/raft/codec.rs | tr 'A-F' 'a-f')
out=tests/fixtures/format-$format
[ -e "$out" ] && { echo "$out exists; a fixture is never rewritten" >&2; exit 1; }
tmp=$(mktemp -d)
pids=()
cleanup() { for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done; rm -rf "$tmp"; }
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
api=127.0.0.1:$(port); raft=127.0.0.1:$(port); metrics=127.0.0.1:$(port)
"$bin" cluster init --node-id 1 --api-addr "$api" --bind-addr "$raft" --metrics-addr "$metrics" --data-dir "$tmp/m1" 2>"$tmp/m1.log" &
pids+=($!)
export WARREN_MANAGER=$api WARREN_TLS_DIR=$tmp/m1/admin
for _ in $(seq 100); do "$bin" cluster info >/dev/null 2>&1 && break; sleep 0.1; done
token=$("$bin" cluster join-token worker -q)
"$bin" worker start --token "$token" --node-id fw1 --data-dir "$tmp/w1" --runtime sim --cpus 4 --memory 4GiB --label zone=a 2>"$tmp/w1.log" &
pids+=($!)
"$bin" service create -d fixture-web --image busybox:1.36 --replicas 2 -e MODE=fixture --label tier=web -- sh -c 'httpd -f'
"$bin" service create -d fixture-batch --image busybox --replicas 1 --restart-condition on-failure
"$bin" service update -d fixture-web --image busybox:1.37
# Creates at once, so that some go together as one entry (`Command::Batch`, format 0xA5 on):
# the log then holds a batch, which tests/fixture.rs looks for from that format on.
batched() { curl -s "http://$metrics/metrics" | sed -n 's/^warren_raft_batch_writes_count \([0-9]*\).*/\1/p'; }
for round in $(seq 20); do
  creates=()
  for i in $(seq 16); do "$bin" service create -d "fixture-many-$round-$i" --image busybox --replicas 0 >/dev/null & creates+=($!); done
  for p in "${creates[@]}"; do wait "$p"; done
  [ "$(batched)" -gt 0 ] && break
done
[ "$(batched)" -gt 0 ] || { echo "no creates went together as one entry" >&2; exit 1; }
for _ in $(seq 200); do
  [ "$("$bin" service ps fixture-web -o json | grep -c '"state": "running"')" -ge 2 ] && break; sleep 0.1
done
"$bin" cluster backup --out "$tmp/cluster.wbk" 2>/dev/null
kill -TERM "${pids[1]}"; wait "${pids[1]}" || true
kill -TERM "${pids[0]}"; wait "${pids[0]}" || true
mkdir -p "$out"
cp "$tmp/m1/warren.redb" "$out/warren.redb"
cp "$tmp/w1/worker.json" "$out/worker.json"
cp "$tmp/cluster.wbk" "$out/cluster.wbk"
echo "wrote $out:"; ls -la "$out"
