# shellcheck shell=bash
# test-failover: FAILOVER_TRIALS times, kill -9 the leader's process (VM backends: power the
# leader's VM off hard on every other trial); measure kill -> a new leader named by the
# survivors and kill -> the first write acknowledged through them; bring the manager back
# and wait until it is a voter again with the same state. No container may be restarted by
# any of it. Prints one summary line per measure (median, max).

FAILOVER_TRIALS=${FAILOVER_TRIALS:-10}

# Every container of the cluster: task ids and container ids from the API, and the process
# id of each container from the workers' containerd.
container_snapshot() {
  running_tasks
  local h
  for h in "${WORKERS[@]}"; do host_containers "$h" | sed "s/^/$h /"; done
}

# new_leader_seen OLD HOST...: a survivor names a leader that is not OLD.
new_leader_seen() {
  local old=$1 h l; shift
  for h in "$@"; do
    l=$(leader_seen_by "$h") || continue
    [[ -n $l && $l != 0 && $l != "$old" ]] && return 0
  done
  return 1
}

# The service names a manager knows, by a read on that manager alone.
services_on() { CLI_MANAGERS=$(api "$1") cli service ls -o json | json 'print(" ".join(sorted(s["name"] for s in d)))'; }
same_services() { [[ $(services_on "$1") == "$(services_on "$2")" ]]; }

test_failover() {
  log "test-failover: $FAILOVER_TRIALS leader kills"
  local before after t leader lid surv=() h t0 t1 tl res_leader=() res_write=() how
  before=$(container_snapshot)
  for t in $(seq 1 "$FAILOVER_TRIALS"); do
    leader=$(agreed_leader)
    lid=$(manager_node_id "$leader")
    surv=(); for h in "${MANAGERS[@]}"; do [[ $h != "$leader" ]] && surv+=("$h"); done
    how="kill -9"
    if (( t % 2 == 0 )) && power_off "$leader" check; then how="power-off"; fi
    rm -f "$RUN_DIR/leader-seen"
    if [[ $how == power-off ]]; then power_off "$leader"; else signal_daemon "$leader" manager KILL; fi
    t0=$(now)
    # The two measures run side by side: one loop asks the survivors who leads, the other
    # writes through them until a write is acknowledged.
    (until new_leader_seen "$lid" "${surv[@]}"; do sleep 0.01; done; now >"$RUN_DIR/leader-seen") &
    local poller=$!
    until CLI_MANAGERS=$(apis "${surv[@]}") cli service create -d "failover-$t" --image "$IMAGE" --replicas 0 >/dev/null 2>&1; do
      python3 -c "import sys; sys.exit($(now) - $t0 < 30)" && fail "no write acknowledged 30 s after the leader was killed (trial $t)"
      sleep 0.01
    done
    t1=$(now)
    wait "$poller" || true
    tl=$(cat "$RUN_DIR/leader-seen")
    res_leader+=("$(elapsed "$t0" "$tl")"); res_write+=("$(elapsed "$t0" "$t1")")
    log "trial $t: $how leader $leader; new leader after ${res_leader[-1]}s, first acked write after ${res_write[-1]}s"
    if [[ $how == power-off ]]; then power_on "$leader"; fi
    # shellcheck disable=SC2046
    start_daemon "$leader" manager "$WBIN" manager start --data-dir "$(hostdir "$leader")/data"
    wait_until 60 "$leader back as a voter, all three agreeing" all_agree "${MANAGERS[@]}"
    wait_until 30 "$leader to hold the same services as ${surv[0]}" same_services "$leader" "${surv[0]}"
    [[ " $(services_on "$leader") " == *" failover-$t "* ]] || fail "$leader came back without failover-$t"
  done
  after=$(container_snapshot)
  if [[ $before != "$after" ]]; then
    diff <(echo "$before") <(echo "$after") >&2 || true
    fail "containers changed across the failovers (task, container id or process id)"
  fi
  summary "failover kill->new leader" "${res_leader[@]}"
  summary "failover kill->first acked write" "${res_write[@]}"
  log "test-failover: passed ($FAILOVER_TRIALS trials, no container restarted)"
}

# summary WHAT SECONDS...: one line with median and max, for CI logs and docs/benchmarks.md.
summary() {
  local what=$1; shift
  python3 -c "import statistics as s,sys; r=[float(x) for x in sys.argv[2:]]; print(f'{sys.argv[1]} ($BACKEND): median {s.median(r):.3f}s max {max(r):.3f}s over {len(r)} trials')" "$what" "$@" |
    tee -a "${RESULTS_FILE:-/dev/null}"
}
