#!/usr/bin/env bash
# Failover on real processes on loopback, as in docs/benchmarks.md:
#   3 managers (127.0.0.1-3, release build); per trial: kill -9 the leader, then time until a
#   `warren service create` through the survivors is acknowledged; restart the killed manager
#   from its data dir and wait until all three agree again. Then the same measurement on a
#   3-member etcd (../shared/tools/etcd-failover) in the same run, and forwarded-write throughput.
# Then one CLI command per new process (`cluster info`, 30 times): each is a new connection
# and, with TLS, a new handshake.
# Then the planned stop (issue #15): per trial, `examples/stop_probe` writes back to back
# through the two other managers, sends SIGTERM to the leader (which hands leadership over
# before it exits) and reports the time to the first write acknowledged after the signal
# and the longest time without an acknowledgement; the leader is restarted after each.
# etcd, stopped the same way (it transfers leadership on SIGTERM), by scripts/etcd-graceful.sh.
# Usage: scripts/failover-bench.sh [TRIALS] [kill|term|both]   (default 20 both)
#   WARREN_BIN=... LOAD_BIN=... PROBE_BIN=... compare another build in the same way;
#   SKIP_ETCD=1 leaves out the etcd halves.
set -euo pipefail
cd "$(dirname "$0")/.."
TRIALS=${1:-20}
WHAT=${2:-both}
case $WHAT in kill | term | both) ;; *) echo "usage: $0 [TRIALS] [kill|term|both]" >&2; exit 2 ;; esac
./scripts/deps.sh
if [ -z "${WARREN_BIN:-}" ]; then cargo build --release -q --bin warren --example create_load --example stop_probe; fi
W=${WARREN_BIN:-$PWD/target/release/warren}
LOAD=${LOAD_BIN:-$PWD/target/release/examples/create_load}
PROBE=${PROBE_BIN:-$PWD/target/release/examples/stop_probe}
T=$(mktemp -d -t warren-failover.XXXXXX)
declare -A PID API
# `|| true`: under `set -e` the first `wait` (a killed process's status) would end the trap
# before the other managers are killed.
cleanup() { for p in "${PID[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; if [[ -n ${KEEP_LOGS:-} ]]; then echo "logs kept in $T" >&2; else rm -rf "$T"; fi; }
trap cleanup EXIT
trap "exit 130" INT TERM # a signal runs the EXIT trap too: no process is left behind
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()'; }
now() { date +%s.%N; }
info() { $W --manager "$1" cluster info -o json 2>/dev/null; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(*[$1])" 2>/dev/null; }

for n in 1 2 3; do API[$n]="127.0.0.$n:$(port)"; done
$W cluster init --node-id 1 --api-addr ${API[1]} --bind-addr "127.0.0.1:$(port)" --data-dir $T/m1 >>$T/m1.log 2>&1 &
export WARREN_TLS_DIR=$T/m1/admin # the operator credential cluster init writes
PID[1]=$!
until info ${API[1]} >/dev/null; do sleep 0.05; done
TOKEN=$($W --manager ${API[1]} cluster join-token manager -q)
for n in 2 3; do
  $W manager join --token "$TOKEN" --leader ${API[1]} --node-id $n --api-addr ${API[$n]} \
    --bind-addr "127.0.0.$n:$(port)" --data-dir $T/m$n >>$T/m$n.log 2>&1 &
  PID[$n]=$!
done
all_agree() { # every manager answers, same leader, 3 voters, all reachable from the leader
  local l="" x
  for n in 1 2 3; do
    x=$(info ${API[$n]} | field 'd["leader_id"], sum(m["voter"] and m["reachable"] for m in d["managers"])') || return 1
    [[ ${x#* } == 3 ]] || return 1
    [[ -z $l || $l == "${x% *}" ]] || return 1
    l=${x% *}
  done
  echo "$l"
}
until all_agree >/dev/null; do sleep 0.1; done
restart() { # $1 = the manager that stopped: start it again from its data dir, wait for agreement
  $W manager start --data-dir $T/m$1 >>$T/m$1.log 2>&1 &
  PID[$1]=$!
  until all_agree >/dev/null; do sleep 0.1; done
  sleep 1 # same settling pause as the etcd tool, so both start each trial alike
}
if [[ $WHAT != term ]]; then
res=()
for t in $(seq 1 "$TRIALS"); do
  leader=$(all_agree)
  surv=(); for n in 1 2 3; do [[ $n != "$leader" ]] && surv+=("${API[$n]}"); done
  kill -9 "${PID[$leader]}"; t0=$(now); wait "${PID[$leader]}" 2>/dev/null || true
  until $W --manager "$(IFS=,; echo "${surv[*]}")" service create -d "t$t" --image busybox >/dev/null 2>&1; do sleep 0.02; done
  t1=$(now)
  d=$(python3 -c "print(f'{$t1-$t0:.3f}')"); res+=("$d")
  echo "trial $t: leader $leader killed, first acked create after ${d}s"
  restart "$leader"
done
python3 -c "import statistics as s; r=[float(x) for x in '${res[*]}'.split()]; print(f'warren failover kill->first acked create: median {s.median(r):.3f}s max {max(r):.3f}s over {len(r)} trials')"
fi

if [[ $WHAT != kill ]]; then
  out=()
  for t in $(seq 1 "$TRIALS"); do
    leader=$(all_agree)
    surv=(); for n in 1 2 3; do [[ $n != "$leader" ]] && surv+=("${API[$n]}"); done
    r=$($PROBE "$(IFS=,; echo "${surv[*]}")" "${PID[$leader]}" 2>>$T/probe.log); [[ -n ${STOP_PROBE_TRACE:-} ]] && tail -4 $T/probe.log
    # A graceful stop exits 0; anything else is a failed trial.
    wait "${PID[$leader]}" || { echo "manager $leader exited with $? after SIGTERM" >&2; exit 1; }
    echo "trial $t: leader $leader stopped (SIGTERM): $r"
    out+=("$r")
    restart "$leader"
  done
  printf '%s\n' "${out[@]}" | python3 scripts/stop-summary.py "warren graceful stop (SIGTERM, handoff)"
  if [[ ${SKIP_ETCD:-} != 1 ]] && command -v etcd >/dev/null; then
    ./scripts/etcd-graceful.sh "$TRIALS" | tail -1
  fi
fi
[[ $WHAT == term ]] && exit 0

leader=$(all_agree); follower=$(( leader % 3 + 1 ))
for clients in 1 16; do
  for role in leader follower; do
    n=$leader; [[ $role == follower ]] && n=$follower
    rates=()
    for k in 1 2 3; do
      rates+=("$($LOAD ${API[$n]} $clients 500 "$role-$clients-$k" | sed 's/.*creates_per_s=//')")
    done
    echo "writes through the $role ($clients clients, 500 creates x3): creates/s ${rates[*]} median $(printf '%s\n' "${rates[@]}" | sort -n | sed -n 2p)"
  done
done

cli=()
for k in $(seq 1 30); do
  t0=$(now); $W --manager ${API[$leader]} cluster info >/dev/null; t1=$(now)
  cli+=("$(python3 -c "print(f'{($t1-$t0)*1000:.1f}')")")
done
echo "one CLI command (cluster info, new process and connection each): median $(printf '%s\n' "${cli[@]}" | sort -n | sed -n 15p) ms over 30"

if [ "${SKIP_ETCD:-}" = 1 ]; then
  :
elif command -v etcd >/dev/null; then
  ../shared/tools/etcd-failover "$TRIALS" | tail -1
else
  echo "etcd not installed (apt-get install etcd-server etcd-client) - skipped"
fi
