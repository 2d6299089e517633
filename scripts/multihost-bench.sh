#!/usr/bin/env bash
# Failover on separate hosts, side by side with etcd in the same run (docs/benchmarks.md):
# the multi-host tests on BACKEND (netns or qemu) with the release build, then the same
# leader kill on a 3-member etcd on loopback (../shared/tools/etcd-failover), then the ratio.
#   scripts/multihost-bench.sh [netns|qemu] [TRIALS]
set -euo pipefail
cd "$(dirname "$0")/.."
backend=${1:-netns} trials=${2:-10}
cargo build --release -q --bin warren
out=$(mktemp)
trap 'rm -f "$out"' EXIT
WARREN_BIN=$PWD/target/release/warren FAILOVER_TRIALS=$trials RESULTS_FILE=$out \
  ./scripts/multihost/run.sh --backend "$backend" >&2
cat "$out"
command -v etcd >/dev/null || apt-get install -y -q etcd-server etcd-client >&2
etcd_line=$(../shared/tools/etcd-failover "$trials" | tail -1)
echo "$etcd_line"
python3 - "$out" "$etcd_line" <<'PY'
import re, sys
warren = open(sys.argv[1]).read()
w = re.search(r"kill->first acked write \(\w+\): median ([\d.]+)s max ([\d.]+)s", warren)
e = re.search(r"median ([\d.]+)s max ([\d.]+)s", sys.argv[2])
print(f"ratio warren/etcd (kill->first acked write): median {float(w[1]) / float(e[1]):.2f}, max {float(w[2]) / float(e[2]):.2f}")
PY
