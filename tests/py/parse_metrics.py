"""Parses a /metrics page (OpenMetrics text, read on stdin) with the Python prometheus_client
parser, the one Prometheus' own client ships, and prints its samples as JSON:
[{"family": ..., "type": ..., "name": ..., "labels": {...}, "value": ...}]. A page the parser
refuses makes this exit non-zero with the parser's error."""
import json
import sys

from prometheus_client.openmetrics.parser import text_string_to_metric_families

out = []
for family in text_string_to_metric_families(sys.stdin.read()):
    for s in family.samples:
        out.append({"family": family.name, "type": family.type, "name": s.name,
                    "labels": s.labels, "value": s.value})
print(json.dumps(out))
