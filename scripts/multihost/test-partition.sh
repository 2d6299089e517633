# shellcheck shell=bash
# test-partition:
#  1. Cut the leader's host off: the other two elect a leader within ELECTION_BUDGET_S and
#     take writes; the old leader refuses a write with an error that says why; heal: one
#     leader, every acknowledged write on every manager, the refused one nowhere.
#  2. Cut a worker's host off: its containers keep running, and one killed inside the cut
#     host is restarted there by the worker alone; the managers start replacements on the
#     other worker; heal: exactly the desired count runs, one per slot, no duplicates.

ELECTION_BUDGET_S=${ELECTION_BUDGET_S:-3}

# leaders_agree_among HOST...: every given manager names the same leader, one of them.
leaders_agree_among() {
  local l="" h x
  for h in "$@"; do
    x=$(leader_seen_by "$h") || return 1
    [[ -n $x && $x != 0 && ( -z $l || $x == "$l" ) ]] || return 1
    l=$x
  done
  [[ " $* " == *" $(manager_host "$l") "* ]]
}

test_partition_leader() {
  local leader surv=() h t0 t1 err
  leader=$(agreed_leader)
  for h in "${MANAGERS[@]}"; do [[ $h != "$leader" ]] && surv+=("$h"); done
  cli service create -d part-before --image "$IMAGE" --replicas 0 >/dev/null
  log "test-partition: cutting off the leader's host $leader"
  cut_off "$leader"
  t0=$(now)
  wait_until 30 "the majority (${surv[*]}) to elect a leader" leaders_agree_among "${surv[@]}"
  t1=$(now)
  local took; took=$(elapsed "$t0" "$t1")
  log "majority elected $(leader_seen_by "${surv[0]}") after ${took}s"
  python3 -c "import sys; sys.exit($took > $ELECTION_BUDGET_S)" ||
    fail "the majority took ${took}s to elect a leader (budget ${ELECTION_BUDGET_S}s)"
  echo "partition leader cut->majority leader ($BACKEND): ${took}s" | tee -a "${RESULTS_FILE:-/dev/null}"
  CLI_MANAGERS=$(apis "${surv[@]}") cli service create -d part-during --image "$IMAGE" --replicas 0 >/dev/null ||
    fail "the majority refused a write while the old leader was cut off"
  # The old leader, asked on its own host, must refuse and say why; not hang, not accept.
  if err=$(cli_on "$leader" service create -d part-stale --image "$IMAGE" --replicas 0 2>&1); then
    fail "the cut-off old leader acknowledged a write: $err"
  fi
  grep -qiE "quorum|leader" <<<"$err" || fail "the old leader's refusal does not say why: $err"
  log "old leader refused: $(head -c 300 <<<"$err")"
  heal "$leader"
  wait_until 60 "one leader and three reachable voters after the heal" all_agree "${MANAGERS[@]}"
  for h in "${MANAGERS[@]}"; do
    wait_until 30 "$h to hold part-before and part-during" has_services "$h" part-before part-during
    [[ " $(services_on "$h") " != *" part-stale "* ]] || fail "$h holds part-stale, a write its old leader refused"
  done
  log "test-partition (leader): passed"
}

has_services() {
  local h=$1 s names; shift
  names=" $(services_on "$h") "
  for s in "$@"; do [[ $names == *" $s "* ]] || return 1; done
}

# The web tasks the managers consider running on a node.
tasks_on() { running_tasks | awk -v n="$1" '$2 == n' | wc -l; }
# The container process of slot SLOT on a host (its pid), by the task id of the API.
slot_pid() { host_containers "$1" | awk -v t="$2" '$1 == t { print $2 }'; }
all_tasks_on() { [[ $(tasks_on "$1") == "$WEB_REPLICAS" ]]; }
# A local HTTP check from the host itself: works while the host is cut off.
answers_locally() { on "$1" curl -sf --max-time 2 "http://$(host_addr "$1"):$((8000 + $2))/" >/dev/null; }
# Exactly one running container per slot across the workers, and the managers agree.
exactly_desired() {
  [[ $(running_tasks | wc -l) == "$WEB_REPLICAS" ]] || return 1
  [[ $(running_tasks | awk '{print $1}' | sort -u | wc -l) == "$WEB_REPLICAS" ]] || return 1
  local h n=0
  for h in "${WORKERS[@]}"; do n=$((n + $(host_containers "$h" | wc -l))); done
  [[ $n == "$WEB_REPLICAS" ]]
}

test_partition_worker() {
  local w=${WORKERS[-1]} other=${WORKERS[0]} slot task pid newpid
  [[ $(tasks_on "$w") -ge 1 ]] || fail "$w runs no web task to cut off"
  read -r slot _ _ task < <(running_tasks | awk -v n="$w" '$2 == n' | head -1)
  pid=$(slot_pid "$w" "$task")
  [[ -n $pid ]] || fail "$w's containerd does not run task $task"
  log "test-partition: cutting off worker $w (web.$slot is task $task, pid $pid)"
  cut_off "$w"
  local before; before=$(host_containers "$w" | wc -l)
  # A container that dies on the cut-off host is restarted there, by the worker alone.
  on "$w" kill -9 "$pid"
  wait_until 60 "$w to restart web.$slot locally while cut off" restarted_locally "$w" "$task" "$pid" "$slot"
  newpid=$(slot_pid "$w" "$task")
  log "$w restarted web.$slot on its own (pid $pid -> $newpid)"
  wait_until 60 "replacements for $w's tasks on $other" all_tasks_on "$other"
  # The replacements run and the cut-off host still runs its own: the worker does not stop
  # containers because it lost its managers.
  [[ $(host_containers "$w" | wc -l) == "$before" ]] || fail "$w stopped its containers while cut off"
  heal "$w"
  wait_until 60 "exactly $WEB_REPLICAS web containers, one per slot, after the heal" exactly_desired
  wait_until 30 "every web task to answer HTTP on its host's address" web_answers
  log "test-partition (worker): passed; running now: $(running_tasks | awk '{print "web." $1 "@" $2}' | paste -sd' ')"
}

restarted_locally() {
  local w=$1 task=$2 old=$3 slot=$4 p
  p=$(slot_pid "$w" "$task")
  if [[ -n $p && $p != "$old" ]]; then answers_locally "$w" "$slot"; return; fi
  # A restart may also be a new task (a new container) for the same slot.
  [[ $(host_containers "$w" | wc -l) -ge 2 ]] && answers_locally "$w" "$slot" &&
    ! host_containers "$w" | awk '{print $2}' | grep -qx "$old"
}

test_partition() {
  test_partition_leader
  test_partition_worker
}
