#!/usr/bin/env bash
# The anchor for the planned-stop measurement (docs/benchmarks.md, "Graceful leader
# handoff"): a 3-member etcd on loopback (Debian's etcd-server, default timers), per trial
# scripts/etcd-stop-probe.py writes through the two other members, sends SIGTERM to the
# leader (etcd transfers leadership before it exits) and reports as examples/stop_probe does;
# the member is restarted and the next trial starts after the same 1 s pause as Warren's.
# Usage: scripts/etcd-graceful.sh [TRIALS]   (needs etcd-server and etcd-client)
set -euo pipefail
cd "$(dirname "$0")/.."
trials=${1:-20}
command -v etcd >/dev/null || { echo "etcd not installed (apt-get install etcd-server etcd-client)" >&2; exit 2; }
T=$(mktemp -d -t etcd-graceful.XXXXXX)
declare -A PID CP PP
cleanup() { for p in "${PID[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; if [[ -n ${KEEP_LOGS:-} ]]; then echo "logs kept in $T" >&2; else rm -rf "$T"; fi; }
trap cleanup EXIT
trap "exit 130" INT TERM
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()'; }
for n in e1 e2 e3; do CP[$n]=$(port); PP[$n]=$(port); done
cluster="e1=http://127.0.0.1:${PP[e1]},e2=http://127.0.0.1:${PP[e2]},e3=http://127.0.0.1:${PP[e3]}"
start() { # $1 = member, $2 = new|existing
  etcd --name "$1" --data-dir "$T/$1" --listen-client-urls "http://127.0.0.1:${CP[$1]}" \
    --advertise-client-urls "http://127.0.0.1:${CP[$1]}" --listen-peer-urls "http://127.0.0.1:${PP[$1]}" \
    --initial-advertise-peer-urls "http://127.0.0.1:${PP[$1]}" --initial-cluster "$cluster" \
    --initial-cluster-state "${2:-new}" >>"$T/$1.log" 2>&1 &
  PID[$1]=$!
}
eps() { local out=() n; for n in "$@"; do out+=("127.0.0.1:${CP[$n]}"); done; (IFS=,; echo "${out[*]}"); }
export ETCDCTL_API=3
leader_of() { # prints the member every member names as leader, if all three agree
  local n ids="" lead
  for n in e1 e2 e3; do
    lead=$(etcdctl --endpoints "$(eps $n)" endpoint status -w json 2>/dev/null |
      python3 -c 'import json,sys;d=json.load(sys.stdin)[0];print(d["Status"]["leader"], d["Status"]["header"]["member_id"])') || return 1
    ids+="$n ${lead}"$'\n'
  done
  python3 -c '
import sys
rows = [l.split() for l in sys.stdin.read().splitlines() if l]
leaders = {r[1] for r in rows}
if len(leaders) != 1: sys.exit(1)
print(next(r[0] for r in rows if r[2] == r[1]))' <<<"$ids"
}
for n in e1 e2 e3; do start $n; done
for _ in $(seq 1 100); do etcdctl --endpoints "$(eps e1 e2 e3)" put warm 1 >/dev/null 2>&1 && break; sleep 0.2; done
out=()
for t in $(seq 1 "$trials"); do
  leader=""
  for _ in $(seq 1 100); do leader=$(leader_of) && break; sleep 0.1; done
  [[ -n $leader ]] || { echo "the members do not agree on a leader" >&2; exit 1; }
  surv=(); for n in e1 e2 e3; do [[ $n != "$leader" ]] && surv+=("$n"); done
  r=$(python3 scripts/etcd-stop-probe.py "$(eps "${surv[@]}")" "${PID[$leader]}" 2>>"$T/probe.log")
  wait "${PID[$leader]}" || true # etcd exits non-zero on SIGTERM
  echo "trial $t: leader $leader stopped (SIGTERM): $r"
  out+=("$r")
  start "$leader" existing
  for _ in $(seq 1 100); do etcdctl --endpoints "$(eps "$leader")" endpoint health >/dev/null 2>&1 && break; sleep 0.1; done
  sleep 1
done
printf '%s\n' "${out[@]}" | python3 scripts/stop-summary.py "etcd $(etcd --version | sed -n 's/etcd Version: //p') graceful stop (SIGTERM)"
