#!/usr/bin/env bash
# Stops and deletes the Lima VMs lima/setup.sh made (warren-m<N>, warren-w<N>); nothing else.
set -euo pipefail
command -v limactl >/dev/null || exit 0
for inst in $(limactl list -q 2>/dev/null | grep -E '^warren-[mw][0-9]+$' || true); do
  echo "deleting $inst" >&2
  limactl delete --force "$inst"
done
