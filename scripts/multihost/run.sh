#!/usr/bin/env bash
# The multi-host tests on real processes, one backend at a time:
#   scripts/multihost/run.sh [--backend netns|qemu|lima] [cluster] [failover] [partition]
# With no test named, all three run in that order on one cluster (failover and partition
# deploy the web service first when run alone). Figures go to stdout and, with
# RESULTS_FILE=F, are appended to F.
#   WARREN_BIN   the warren binary (default: target/debug/warren, built when missing)
#   FAILOVER_TRIALS (10), ELECTION_BUDGET_S (3)
# shellcheck source-path=SCRIPTDIR
set -euo pipefail
BACKEND=netns
tests=()
while [[ $# -gt 0 ]]; do
  case $1 in
    --backend) BACKEND=$2; shift 2 ;;
    --backend=*) BACKEND=${1#*=}; shift ;;
    cluster | failover | partition) tests+=("$1"); shift ;;
    -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ ${#tests[@]} -gt 0 ]] || tests=(cluster failover partition)
[[ $(id -u) == 0 ]] || { echo "needs root (network namespaces, containerd)" >&2; exit 1; }
here=$(cd "$(dirname "$0")" && pwd)
source "$here/lib.sh"
source "$here/test-cluster.sh"
source "$here/test-failover.sh"
source "$here/test-partition.sh"
if [[ -z ${WARREN_BIN:-} ]]; then
  WARREN_BIN=$REPO/target/debug/warren
  [[ -x $WARREN_BIN ]] || (cd "$REPO" && cargo build -q --bin warren)
fi
export BACKEND
started=$(date +%s)
harness_up "$BACKEND"
form_cluster
for t in "${tests[@]}"; do
  case $t in
    cluster) test_cluster ;;
    failover | partition)
      [[ $(running_tasks | wc -l) == "$WEB_REPLICAS" ]] || deploy_web
      "test_$t"
      ;;
  esac
done
log "multi-host ($BACKEND): ${tests[*]} passed in $(( $(date +%s) - started )) s"
