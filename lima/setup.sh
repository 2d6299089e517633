#!/usr/bin/env bash
# Creates and starts the Lima VMs of the multi-host tests: warren-m1..mN (managers) and
# warren-w1..wM (workers), from lima/warren.yaml, with the given warren binary installed as
# /usr/local/bin/warren. VMs that exist are started (if stopped) and get the binary again.
#   lima/setup.sh --warren-bin PATH [--managers 3] [--workers 2]
# PATH: a Linux build of warren for the VMs' architecture (say, from
# `cargo build --release --target x86_64-unknown-linux-gnu` on a Linux host).
# Then: scripts/multihost/run.sh --backend lima; remove the VMs with lima/cleanup.sh.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
managers=3 workers=2 bin=""
while [[ $# -gt 0 ]]; do
  case $1 in
    --managers) managers=$2; shift 2 ;;
    --workers) workers=$2; shift 2 ;;
    --warren-bin) bin=$2; shift 2 ;;
    -h | --help) sed -n '2,9p' "$0"; exit 0 ;;
    *) echo "unknown argument $1 (see --help)" >&2; exit 2 ;;
  esac
done
[[ -n $bin && -f $bin ]] || { echo "--warren-bin PATH: a Linux build of warren is needed" >&2; exit 2; }
[[ $managers =~ ^[1-9]$ && $workers =~ ^[0-9]$ ]] || { echo "--managers 1-9, --workers 0-9" >&2; exit 2; }
command -v limactl >/dev/null || { echo "needs Lima (limactl): https://lima-vm.io" >&2; exit 1; }
dir=$(cd "$(dirname "$bin")" && pwd)
name=$(basename "$bin")
hosts=()
for i in $(seq 1 "$managers"); do hosts+=("m$i"); done
for i in $(seq 1 "$workers"); do hosts+=("w$i"); done
for h in "${hosts[@]}"; do
  inst=warren-$h
  if limactl list -q 2>/dev/null | grep -qx "$inst"; then
    limactl start --tty=false "$inst" >/dev/null 2>&1 || true # already running is fine
  else
    echo "creating $inst" >&2
    limactl start --tty=false --name="$inst" \
      --set ".mounts = [{\"location\": \"$dir\", \"mountPoint\": \"/opt/warren-bin\"}]" "$here/warren.yaml"
  fi
  limactl shell --workdir / "$inst" sudo install -m 0755 "/opt/warren-bin/$name" /usr/local/bin/warren
done
echo "ready: ${hosts[*]/#/warren-}" >&2
