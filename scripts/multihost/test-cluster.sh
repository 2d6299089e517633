# shellcheck shell=bash
# test-cluster: the cluster forms over mTLS with join tokens (3 voters, 2 workers ready), and
# a service of 4 replicas of the test image runs as 4 real containers, 2 on each worker,
# each answering HTTP on its host's address (host network, port 8000 + slot).

WEB_REPLICAS=4

# The web service's running tasks as "slot node container_id task_id" lines, sorted.
running_tasks() {
  cli service ps web -o json | json '
for t in sorted(d, key=lambda t: t["slot"]):
    if t["desired_state"] == "running" and t["state"] == "running":
        print(t["slot"], t["node"], t["container_id"], t["id"])'
}
# The containers a worker host really runs, as "task-id pid" lines (from its containerd).
host_containers() {
  on "$1" ctr --address "$(containerd_socket "$1")" -n "warren-$1" tasks ls 2>/dev/null |
    awk 'NR > 1 && $3 == "RUNNING" { print $1, $2 }' | sort
}
# Every running web task answers on its host's address.
web_answers() {
  local slot node _c _t
  while read -r slot node _c _t; do
    [[ $(on_client curl -sf --max-time 2 "http://$(host_addr "$node"):$((8000 + slot))/") == "hello from warren" ]] || return 1
  done < <(running_tasks)
}
web_running() { [[ $(running_tasks | wc -l) == "$1" ]]; }

deploy_web() {
  # shellcheck disable=SC2016 # expanded inside the container
  cli service create web --image "$IMAGE" --replicas "$WEB_REPLICAS" \
    -- sh -c 'exec httpd -f -p $((8000 + WARREN_TASK_SLOT)) -h /www' >/dev/null
  wait_until 120 "$WEB_REPLICAS web tasks running" web_running "$WEB_REPLICAS"
  wait_until 30 "every web task to answer HTTP on its host's address" web_answers
}

test_cluster() {
  log "test-cluster: deploy web, $WEB_REPLICAS replicas"
  deploy_web
  local spread
  spread=$(running_tasks | awk '{print $2}' | sort | uniq -c | awk '{print $2 "=" $1}' | paste -sd' ')
  [[ $spread == "w1=2 w2=2" ]] || fail "web's replicas are spread '$spread', want w1=2 w2=2"
  local h
  for h in "${WORKERS[@]}"; do
    [[ $(host_containers "$h" | wc -l) == 2 ]] || fail "$h's containerd runs $(host_containers "$h" | wc -l) containers, want 2"
  done
  log "test-cluster: passed (spread $spread, each replica answers on its host's address)"
}
