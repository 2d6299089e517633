#!/usr/bin/env bash
# Scale on one machine (issue #16; docs/benchmarks.md, "Scale"): 3 managers (release build)
# on loopback and examples/nodesim running WORKERS real worker agents (simulated containers)
# in one process.
#   1. Registers WORKERS workers, then holds them for HOLD_S seconds at the default heartbeat
#      interval, sampling every 10 s: nodes ready/down (none may be marked down), each
#      process's RSS and CPU.
#   2. Scales a service from 0 to REPLICAS and times until every task is reported running.
#   3. Does it again with the leader killed (kill -9) when half are running: then checks that
#      no slot holds two tasks and that no task was replaced (rescheduled).
# Usage: scripts/scale-bench.sh [WORKERS] [HOLD_S] [REPLICAS]   (default 5000 600 50000)
# KEEP_LOGS=1 keeps the logs; NODESIM_LOG sets the load generator's RUST_LOG (default warn).
set -euo pipefail
cd "$(dirname "$0")/.."
WORKERS=${1:-5000}
HOLD_S=${2:-600}
REPLICAS=${3:-50000}
./scripts/deps.sh >/dev/null
if [ -z "${WARREN_BIN:-}" ]; then cargo build --release -q --bin warren --example nodesim; fi
W=${WARREN_BIN:-$PWD/target/release/warren}
SIM=${NODESIM_BIN:-$PWD/target/release/examples/nodesim}
T=$(mktemp -d -t warren-scale.XXXXXX)
declare -A PID API MET
cleanup() { for p in "${PID[@]}"; do kill -9 "$p" 2>/dev/null || true; wait "$p" 2>/dev/null || true; done; if [[ -n ${KEEP_LOGS:-} ]]; then echo "logs kept in $T" >&2; else rm -rf "$T"; fi; }
trap cleanup EXIT
trap "exit 130" INT TERM
port() { python3 -c 'import socket;s=socket.socket();s.bind(("127.0.0.1",0));print(s.getsockname()[1]);s.close()'; }
field() { python3 -c "import json,sys; d=json.load(sys.stdin); print(*[$1])" 2>/dev/null; }
now() { date +%s.%N; }
since() { python3 -c "print(f'{$(now)-$1:.1f}')"; }
# metric NAME_WITH_LABELS on manager n (empty if absent)
# (a gauge with no series for this label reads 0; an unanswered scrape reads empty)
metric() {
  local body
  # No such manager (leader 0: none known) or no answer prints nothing, never 0: a 0 read
  # from nowhere once ended the wait for a scale-down while 45,000 tasks still ran. A line
  # missing from an answer is 0: the task gauges leave out the states no task is in.
  [[ -n ${MET[$1]:-} ]] || return 0
  body=$(curl -s --max-time 5 "http://${MET[$1]}/metrics") || return 0
  awk -v k="$2" '$1==k {v=$2} END {print (v=="" ? 0 : v)}' <<<"$body" | cut -d. -f1
}
# histogram NAME on manager n: its count and the bucket bounds (ms) under which half, 99% and
# all of it fell
hist() {
  curl -s --max-time 5 "http://${MET[$1]}/metrics" | python3 -c '
import sys
name = sys.argv[1]
b = [(float(l.split("le=\"")[1].split("\"")[0]), float(l.split()[-1])) for l in sys.stdin if l.startswith(name + "_bucket")]
n = b[-1][1] if b else 0
at = lambda q: next((f"{le*1000:g}" for le, c in b if c >= q * n), "?")
print(f"{n:.0f}, p50 <= {at(0.5)} ms, p99 <= {at(0.99)} ms, all <= {at(1)} ms" if n else "none")' "$2"
}
rss_mb() { awk '/VmRSS/ {printf "%.0f", $2/1024}' "/proc/$1/status" 2>/dev/null || echo "?"; }
cpu_ticks() { awk '{print $14+$15}' "/proc/$1/stat" 2>/dev/null || echo 0; }
HZ=$(getconf CLK_TCK)

start_manager() { # n [join]
  local n=$1
  if [[ $n == 1 && -z ${2:-} ]]; then
    $W cluster init --node-id 1 --api-addr ${API[1]} --bind-addr "127.0.0.1:$(port)" --data-dir $T/m1 \
      --metrics-addr ${MET[1]} >>$T/m1.log 2>&1 &
  elif [[ ${2:-} == join ]]; then
    $W manager join --token "$MTOKEN" --leader ${API[1]} --node-id $n --api-addr ${API[$n]} \
      --bind-addr "127.0.0.$n:$(port)" --data-dir $T/m$n --metrics-addr ${MET[$n]} >>$T/m$n.log 2>&1 &
  else
    $W manager start --data-dir $T/m$n --metrics-addr ${MET[$n]} >>$T/m$n.log 2>&1 &
  fi
  PID[m$n]=$!
}
for n in 1 2 3; do API[$n]="127.0.0.$n:$(port)"; MET[$n]="127.0.0.$n:$(port)"; done
ALL="${API[1]},${API[2]},${API[3]}"
start_manager 1
export WARREN_TLS_DIR=$T/m1/admin
until $W --manager ${API[1]} cluster info >/dev/null 2>&1; do sleep 0.1; done
MTOKEN=$($W --manager ${API[1]} cluster join-token manager -q)
for n in 2 3; do start_manager $n join; done
voters() { $W --manager $ALL cluster info -o json 2>/dev/null | field 'd["leader_id"], sum(m["voter"] and m["reachable"] for m in d["managers"])'; }
for _ in $(seq 1 300); do [[ $(voters) == *" 3" ]] && break; sleep 0.2; done
leader() { # the leader's id; waits for one (an election, or a manager too busy to answer;
  # cluster info says 0 while it knows no leader)
  local l=""
  for _ in $(seq 1 300); do l=$(voters | cut -d' ' -f1) || true; [[ $l =~ ^[1-9][0-9]*$ ]] && break; sleep 0.2; done
  [[ $l =~ ^[1-9][0-9]*$ ]] || { echo "no leader for 60 s" >&2; exit 1; }
  echo "$l"
}
WTOKEN=$($W --manager ${API[1]} cluster join-token worker -q)
echo "3 managers up (leader $(leader)); $(nproc) cores; starting $WORKERS workers"

t0=$(now)
RUST_LOG=${NODESIM_LOG:-warn} $SIM --manager $ALL --token "$WTOKEN" --workers "$WORKERS" --data-dir $T/nodes --start-per-s "${START_PER_S:-50}" \
  --report-s 30 >$T/nodesim.log 2>&1 &
PID[sim]=$!
ready() { metric "$(leader)" 'warren_nodes{status="ready"}'; }
down() { metric "$(leader)" 'warren_nodes{status="down"}'; }
deadline=$(( $(date +%s) + 600 ))
until [[ $(ready) == "$WORKERS" ]]; do
  [[ $(date +%s) -lt $deadline ]] || { echo "only $(ready) of $WORKERS workers ready after 600 s" >&2; tail -5 $T/nodesim.log >&2; exit 1; }
  sleep 1
done
echo "all $WORKERS workers registered and ready after $(since "$t0") s"

# 1. Hold.
max_down=0; declare -A MAXRSS
l=$(leader); s0=$(now)
declare -A C0; for p in m1 m2 m3 sim; do C0[$p]=$(cpu_ticks "${PID[$p]}"); done
end=$(( $(date +%s) + HOLD_S ))
while [[ $(date +%s) -lt $end ]]; do
  sleep 10
  d=$(down); r=$(ready); [[ -n $d && $d -gt $max_down ]] && max_down=$d
  line="t=$(since "$s0")s ready=${r:-unknown} down=${d:-unknown}"
  for p in m1 m2 m3 sim; do
    m=$(rss_mb "${PID[$p]}"); line+=" rss_$p=${m}MB"
    [[ $m != "?" && $m -gt ${MAXRSS[$p]:-0} ]] && MAXRSS[$p]=$m
  done
  echo "$line"
done
el=$(python3 -c "print($(now)-$s0)")
cpu() { python3 -c "print(f'{100*($(cpu_ticks "${PID[$1]}")-${C0[$1]})/$HZ/$el:.0f}')"; }
echo "hold: ${HOLD_S}s with $WORKERS workers: nodes marked down at most $max_down;" \
  "CPU (% of one core): leader m$l $(cpu m$l), m1 $(cpu m1) m2 $(cpu m2) m3 $(cpu m3), nodesim $(cpu sim);" \
  "max RSS MB: m1 ${MAXRSS[m1]} m2 ${MAXRSS[m2]} m3 ${MAXRSS[m3]} nodesim ${MAXRSS[sim]}"
[[ $max_down == 0 ]] || echo "FAIL: $max_down nodes were marked down while they heartbeat"

running() { metric "$(leader)" 'warren_tasks{state="running"}'; }
# until_running N [at-least]: polls until N tasks run (or at least N), printing progress every
# 10 s (running, down nodes, leader, its term); fails after SCALE_DEADLINE_S (default 900).
until_running() {
  local want=$1 cmp=${2:-} t next=10 r; t=$(now)
  while :; do
    r=$(running)
    if [[ $cmp == at-least ]]; then [[ -n $r && $r -ge $want ]] && return 0; else [[ $r == "$want" ]] && return 0; fi
    if python3 -c "import sys; sys.exit(0 if $(now)-$t >= ${SCALE_DEADLINE_S:-900} else 1)"; then
      echo "FAIL: $r of $want running after ${SCALE_DEADLINE_S:-900} s" >&2; exit 1
    fi
    if python3 -c "import sys; sys.exit(0 if $(now)-$t >= $next else 1)"; then
      local l; l=$(leader)
      local d term; d=$(down); term=$(metric "$l" warren_raft_term)
      echo "  t=$(since "$t")s running=${r:-unknown} down=${d:-unknown} leader=m$l term=${term:-unknown}"
      next=$((next + 10))
    fi
    sleep 0.5
  done
}
scale_to() { # service replicas: sets ts, the time the scale was sent, and each process's CPU ticks then
  ts=$(now)
  for p in m1 m2 m3 sim; do C0[$p]=$(cpu_ticks "${PID[$p]}"); done
  $W --manager $ALL service scale "$1=$2" >/dev/null
}
# 2. Scale 0 -> REPLICAS.
$W --manager $ALL service create -d big --image busybox --replicas 0 >/dev/null
scale_to big "$REPLICAS"
until_running "$REPLICAS"
el=$(python3 -c "print($(now)-$ts)")
echo "scale 0 -> $REPLICAS: all running after $(since "$ts") s; RSS MB m1 $(rss_mb ${PID[m1]}) m2 $(rss_mb ${PID[m2]}) m3 $(rss_mb ${PID[m3]});" \
  "CPU over the scale (% of one core): m1 $(cpu m1) m2 $(cpu m2) m3 $(cpu m3) nodesim $(cpu sim)"
l=$(leader)
echo "leader m$l since it started: its own appends (in place, synced behind) $(hist "$l" warren_raft_leader_append_seconds);" \
  "snapshots built $(hist "$l" warren_raft_snapshot_build_seconds)"

# 3. The same with the leader killed half way.
$W --manager $ALL service scale big=0 >/dev/null
until_running 0
$W --manager $ALL service create -d big2 --image busybox --replicas 0 >/dev/null
scale_to big2 "$REPLICAS"
until_running $(( REPLICAS / 2 )) at-least
l=$(leader); kill -9 "${PID[m$l]}"; wait "${PID[m$l]}" 2>/dev/null || true
echo "leader m$l killed at $(since "$ts") s with $(( REPLICAS / 2 ))+ running"
until [[ -n $(leader) && $(leader) != "$l" && $(running) == "$REPLICAS" ]]; do
  if python3 -c "import sys; sys.exit(0 if $(since "$ts") > ${SCALE_DEADLINE_S:-900} else 1)"; then
    r=$(running)
    echo "scale 0 -> $REPLICAS with a leader kill: not all running after ${SCALE_DEADLINE_S:-900} s (${r:-unknown} running)" >&2
    exit 1
  fi
  sleep 0.5
done
echo "scale 0 -> $REPLICAS with a leader kill: all running after $(since "$ts") s (new leader m$(leader))"
start_manager "$l"
$W --manager $ALL service ps big2 -o json >$T/big2.json
python3 - "$T/big2.json" "$REPLICAS" <<'EOF'
import json, sys, collections
tasks = json.load(open(sys.argv[1])); want = int(sys.argv[2])
live = [t for t in tasks if t["state"] not in ("complete", "failed", "shutdown", "rejected")]
slots = collections.Counter(t["slot"] for t in live)
twice = sum(1 for c in slots.values() if c > 1)
replaced = sum(1 for t in tasks if t.get("attempt", 0) > 0)
# A task moved off a node taken for down keeps its attempt number: count the slots that got
# a second task, whatever became of it.
placed_twice = sum(1 for c in collections.Counter(t["slot"] for t in tasks).values() if c > 1)
print(f"after the kill: {len(tasks)} tasks for {want} replicas, {len(live)} live, slots held twice {twice}, "
      f"slots given a second task {placed_twice}, restarts {replaced}")
sys.exit(0 if len(tasks) == want and twice == 0 and replaced == 0 else 1)
EOF
