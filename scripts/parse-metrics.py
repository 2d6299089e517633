#!/usr/bin/env python3
"""Reads a /metrics body on stdin, parses it with Prometheus's own OpenMetrics parser (which
refuses anything malformed), and prints every sample as JSON: {"name{k=v,...}": value}."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

samples = {}
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        labels = ",".join(f"{k}={v}" for k, v in sorted(s.labels.items()))
        samples[f"{s.name}{{{labels}}}" if labels else s.name] = s.value
json.dump(samples, sys.stdout, sort_keys=True)
