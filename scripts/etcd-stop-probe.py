#!/usr/bin/env python3
"""The etcd half of the planned-stop measurement (docs/benchmarks.md, "Graceful leader
handoff"); the same steps as examples/stop_probe.rs does for Warren: one client writes back
to back through the members that stay up (etcd's v3 JSON gateway, one kept-alive connection
per member, a 500 ms timeout per write like the kill -9 tool's etcdctl), sends SIGTERM to the
leader after 300 ms of steady writes (etcd transfers leadership on SIGTERM), keeps writing
for 1.5 s, and prints first_ack_ms, max_gap_ms and failed like stop_probe.

Usage: etcd-stop-probe.py HOST:PORT[,HOST:PORT...] LEADER_PID"""
import base64
import http.client
import json
import os
import signal
import sys
import time

WARMUP_S = 0.3
AFTER_S = 1.5
# STOP_PROBE_TRACE=1: each write acknowledged within 100 ms of the signal, on stderr.
TRACE = bool(os.environ.get("STOP_PROBE_TRACE"))
TIMEOUT_S = float(os.environ.get("PROBE_TIMEOUT_S", "0.5"))

survivors = sys.argv[1].split(",")
pid = int(sys.argv[2])
conns = {}
current = 0


def put(i):
    """One write; tries the members in turn, like a client with several endpoints."""
    global current
    body = json.dumps({
        "key": base64.b64encode(f"probe-{pid}-{i}".encode()).decode(),
        "value": base64.b64encode(b"v").decode(),
    })
    for _ in range(len(survivors)):
        ep = survivors[current]
        try:
            c = conns.get(ep) or http.client.HTTPConnection(ep, timeout=TIMEOUT_S)
            conns[ep] = c
            c.request("POST", "/v3/kv/put", body, {"Content-Type": "application/json"})
            r = c.getresponse()
            data = r.read()
            if r.status == 200 and b"header" in data:
                return True
            raise RuntimeError(f"{r.status} {data[:200]!r}")
        except Exception as e:  # noqa: BLE001 - any failure moves on to the next member
            print(f"write {i} via {ep} failed: {e}", file=sys.stderr)
            conns.pop(ep, None)
            current = (current + 1) % len(survivors)
    return False


start = time.monotonic()
stopped_at = None
last_ack = start
max_gap = 0.0
first_ack = None
failed = 0
i = 0
while True:
    now = time.monotonic()
    if stopped_at is None and now - start >= WARMUP_S:
        stopped_at = time.monotonic()
        os.kill(pid, signal.SIGTERM)
    elif stopped_at is not None and now - stopped_at >= AFTER_S:
        break
    sent = time.monotonic()
    if put(i):
        acked = time.monotonic()
        if stopped_at is not None:
            if TRACE and acked - stopped_at < 0.1:
                print(f"write {i}: sent {(sent - stopped_at) * 1000:+.1f} ms acked {(acked - stopped_at) * 1000:+.1f} ms after the signal", file=sys.stderr)
            max_gap = max(max_gap, acked - last_ack)
            if first_ack is None and sent >= stopped_at:
                first_ack = acked - stopped_at
        last_ack = acked
    else:
        failed += 1
    i += 1
# Every trial starts from the same state, as stop_probe does: this one's keys go again.
prefix = f"probe-{pid}-".encode()
end = prefix[:-1] + bytes([prefix[-1] + 1])
for ep in survivors:
    try:
        c = http.client.HTTPConnection(ep, timeout=5)
        c.request("POST", "/v3/kv/deleterange", json.dumps({
            "key": base64.b64encode(prefix).decode(),
            "range_end": base64.b64encode(end).decode(),
        }), {"Content-Type": "application/json"})
        if c.getresponse().status == 200:
            break
    except Exception as e:  # noqa: BLE001 - the next member may answer
        print(f"cleanup via {ep} failed: {e}", file=sys.stderr)
fa = "none" if first_ack is None else f"{first_ack * 1000:.1f}"
print(f"first_ack_ms={fa} max_gap_ms={max_gap * 1000:.1f} failed={failed}")
