"""Prometheus metrics of the S3 adapter, labelled by ``l2_name`` (``s3:<index>``) like the core L2 metrics.

The core's (``lmcache_mp_l2_*``: objects stored/loaded, failures by op, GB/s) come
from the base class; these add what is S3's own: request latency by operation,
failures by reason, the circuit breaker's state and what it short-circuited.
"""

from __future__ import annotations

from prometheus_client import Counter, Gauge, Histogram

S3_LATENCY = Histogram("lmcache_mp_l2_s3_request_seconds", "Latency of one S3 request (put, get, head, delete, "
                       "list, head_bucket; get_body: reading a GET body)", ["l2_name", "op"],
                       buckets=(0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30))
S3_FAILURES = Counter("lmcache_mp_l2_s3_failures", "Failed S3 requests by reason: connect, connect_timeout, "
                      "read_timeout, connection_closed, connection, http_<status>, ...", ["l2_name", "op", "reason"])
BREAKER_STATE = Gauge("lmcache_mp_l2_s3_breaker_state", "Circuit breaker: 0 closed, 1 half-open, 2 open",
                      ["l2_name"])
BREAKER_SKIPPED = Counter("lmcache_mp_l2_s3_breaker_skipped_objects",
                          "Objects not sent to S3 because the breaker was open (store, lookup, load)",
                          ["l2_name", "op"])
