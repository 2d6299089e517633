#!/usr/bin/env python3
"""Summary of stop-probe lines ("first_ack_ms=X max_gap_ms=Y failed=N", one per trial, on
stdin): median and max of each figure, and the failed writes in all. Used by
scripts/failover-bench.sh and scripts/etcd-graceful.sh so both systems are summed up alike."""
import statistics
import sys

label = sys.argv[1]
rows = [dict(kv.split("=") for kv in line.split()) for line in sys.stdin if line.strip()]
first = [float(r["first_ack_ms"]) for r in rows if r["first_ack_ms"] != "none"]
gaps = [float(r["max_gap_ms"]) for r in rows]
failed = sum(int(r["failed"]) for r in rows)
no_ack = sum(1 for r in rows if r["first_ack_ms"] == "none")
print(
    f"{label}: stop->first acked write median {statistics.median(first):.1f} ms max {max(first):.1f} ms; "
    f"longest write stall median {statistics.median(gaps):.1f} ms max {max(gaps):.1f} ms; "
    f"failed writes {failed}; trials without an ack {no_ack}; over {len(rows)} trials"
)
