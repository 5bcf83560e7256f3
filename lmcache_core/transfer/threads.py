"""How many CPU threads each transfer copy may use.

A STORE or RETRIEVE on the CPU path is a series of torch copies (``index_select`` /
``index_put_``), each split by torch over its intra-op thread pool (OpenMP). Those
pools are per calling thread: with ``--max-gpu-workers N`` the server runs N
transfer lanes, and each lane's copies would use torch's default, one thread per
core. N lanes copying at once then run N x cores spinning threads on the cores;
on a 2-core machine, with 4 real-client workers storing and retrieving at once
through 4 lanes, one run reached 0.51x / 0.57x of a raw parallel copy (STORE /
RETRIEVE) with 2 threads per copy, and 0.71x / 0.86x with 1.

So the server divides the cores among the lanes: ``max(1, cores // lanes)``
threads per copy, set once at engine start (torch's count is process-wide). One
lane (the default) keeps torch's default. An operator who sets
``OMP_NUM_THREADS`` (or ``MKL_NUM_THREADS``) has decided already; then nothing
changes.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping

import torch

logger = logging.getLogger(__name__)

OPERATOR_VARIABLES = ("OMP_NUM_THREADS", "MKL_NUM_THREADS")


def usable_cpus() -> int:
    """CPUs this process may run on (its affinity mask, so a cpuset-limited container counts right)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):  # not Linux
        return os.cpu_count() or 1


def threads_per_lane(lanes: int, cpus: int, env: Mapping[str, str]) -> int | None:
    """Torch threads for each of ``lanes`` concurrent copies on ``cpus`` cores; ``None``: leave torch's default."""
    if lanes <= 1 or any(env.get(name) for name in OPERATOR_VARIABLES):
        return None
    return max(1, cpus // lanes)


def fit_intraop_threads(lanes: int) -> int | None:
    """Apply :func:`threads_per_lane` to this process; returns the count set, or ``None`` if left alone."""
    n = threads_per_lane(lanes, usable_cpus(), os.environ)
    if n is not None and n < torch.get_num_threads():
        torch.set_num_threads(n)
        logger.info("%d transfer lanes on %d CPUs: %d torch thread(s) per copy", lanes, usable_cpus(), n)
        return n
    return None
