#!/usr/bin/env bash
# A mixed-version check between two builds: managers 1 and 3 on build OLD, manager 2 on build
# NEW, leadership moved (SIGTERM handoffs, restarts on the same build) until manager 2 leads,
# then 30 creates through it, listed back through the OLD managers with a linearizable read.
# Used for the AppendEntries stream (docs/architecture.md): a NEW leader must fall back to unary
# calls to OLD followers, which answer Unimplemented, and keep replicating.
# Usage: scripts/mixed-version.sh OLD_WARREN NEW_WARREN   (manual: CI builds one version)
set -euo pipefail
O=$(realpath "${1:?usage: $0 OLD_WARREN NEW_WARREN}"); N=$(realpath "${2:?usage: $0 OLD_WARREN NEW_WARREN}")
D=$(mktemp -d /tmp/warren-mixed.XXXXXX)
echo "data dirs and logs in $D"
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1])'; }
declare -A API RAFT BIN PID
for i in 1 2 3; do API[$i]=127.0.0.$i:$(port); RAFT[$i]=127.0.0.$i:$(port); done
BIN[1]=$O; BIN[2]=$N; BIN[3]=$O
export WARREN_TLS_DIR=$D/m1/admin
cli() { local m=$1; shift; "$O" --manager "${API[$m]}" "$@"; }
wait_for() { local what=$1; shift; for _ in $(seq 300); do if "$@" >/dev/null 2>&1; then return 0; fi; sleep 0.1; done; echo "timed out: $what" >&2; exit 1; }
"${BIN[1]}" cluster init --node-id 1 --api-addr "${API[1]}" --bind-addr "${RAFT[1]}" --data-dir $D/m1 2>>$D/m1.log & PID[1]=$!
wait_for "m1 up" cli 1 cluster info
token=$(cli 1 cluster join-token manager -q)
for i in 2 3; do
  "${BIN[$i]}" manager join --token "$token" --leader "${API[1]}" --node-id $i --api-addr "${API[$i]}" --bind-addr "${RAFT[$i]}" --data-dir $D/m$i 2>>$D/m$i.log & PID[$i]=$!
  wait_for "m$i up" cli $i cluster info
done
voters() { cli 1 cluster info -o json | python3 -c 'import json,sys; d=json.load(sys.stdin); print(d)' | grep -q "'leader_id': [123]"; }
wait_for "leader" voters
leader() { cli "$1" cluster info -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)["leader_id"])'; }
for round in 1 2 3 4 5 6; do
  l=$(leader 2)
  echo "round $round: leader $l"
  [[ $l == 2 ]] && break
  kill -TERM "${PID[$l]}"; wait "${PID[$l]}" || true
  "${BIN[$l]}" manager start --data-dir $D/m$l 2>>$D/m$l.log & PID[$l]=$!
  wait_for "m$l back" cli $l cluster info
  wait_for "a leader" bash -c "[[ \$('$O' --manager '${API[2]}' cluster info -o json | python3 -c 'import json,sys; print(json.load(sys.stdin)[\"leader_id\"])') =~ ^[123]\$ ]]"
done
[[ $(leader 2) == 2 ]] || { echo "manager 2 never led" >&2; exit 1; }
ok=0; bad=0
for n in $(seq 1 30); do
  if cli 2 service create -d mix$n --image busybox --replicas 0 >/dev/null 2>>$D/cli.err; then ok=$((ok+1)); fi
done
echo "creates acknowledged by the new-build leader: $ok / 30"
for i in 1 3; do
  c=$(cli $i service ls --consistent -o json 2>/dev/null | python3 -c 'import json,sys; d=json.load(sys.stdin); d=d.get("services",d) if isinstance(d,dict) else d; print(sum(1 for s in d if str(s.get("name","")).startswith("mix")))')
  echo "manager $i (old build) lists $c of them"
  [[ $c == "$ok" ]] || { echo "FAILED: manager $i lists $c of the $ok acknowledged creates" >&2; bad=1; }
done
echo "leader's fallback lines:"; grep -c "peer has no AppendStream" $D/m2.log || true
grep "peer has no AppendStream" $D/m2.log | sed 's/\x1b\[[0-9;]*m//g' | cut -c1-200
for i in 1 2 3; do kill -TERM "${PID[$i]}" 2>/dev/null || true; done
wait
[[ $ok == 30 && $bad == 0 ]] || { echo "FAILED: $ok of 30 creates acknowledged" >&2; exit 1; }
rm -rf "$D"
