"""The server's Prometheus metrics, as one place to reset them (``POST /metrics/reset``).

Each component defines its metrics next to the code that updates them
(``storage/metrics.py`` for L1, ``storage/l2/metrics.py`` for L2,
``transport/zmq_server.py`` for ZMQ requests), all in prometheus_client's
default registry.
"""

from __future__ import annotations


def reset_all() -> None:
    """Zero every lmcache-server counter (gauges read live values and need nothing)."""
    from lmcache_core.http import metrics as http_metrics
    from lmcache_core.storage import metrics as l1_metrics
    from lmcache_core.storage.l2 import metrics as l2_metrics
    from lmcache_core.transport import metrics as dp_metrics
    from lmcache_core.transport.zmq_server import ZMQ_REQUESTS

    l1_metrics.reset()
    l2_metrics.reset()
    ZMQ_REQUESTS.clear()
    http_metrics.reset()
    dp_metrics.reset()
