"""Helpers for the attack tests (tests/test_security_*.py): RSS from /proc, bounded polling, raw clients."""

from __future__ import annotations

import os
import time
from collections.abc import Callable
from typing import Any

import zmq

from lmcache_core.client import LMCacheClient


def rss_bytes(pid: int | None = None) -> int:
    """Resident set size of process ``pid`` (default: this one), from ``/proc/<pid>/status``."""
    with open(f"/proc/{pid or os.getpid()}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) * 1024
    raise RuntimeError("no VmRSS line")


def wait_for(condition: Callable[[], Any], timeout_s: float = 20.0, interval_s: float = 0.02) -> Any:
    """Poll ``condition`` until it returns something truthy; fail after ``timeout_s``."""
    deadline = time.monotonic() + timeout_s
    while True:
        value = condition()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"condition not met within {timeout_s} s")
        time.sleep(interval_s)


def healthy_client(url: str, timeout_s: float = 5.0) -> bool:
    """A fresh well-behaved client gets NOOP answered within ``timeout_s``."""
    with LMCacheClient(url, timeout_s=timeout_s) as client:
        return client.noop() == "OK"


def raw_dealer(url: str, **options: int) -> zmq.Socket:
    """A DEALER connected to ``url`` with the given socket options (``RCVHWM=1`` ...)."""
    sock = zmq.Context.instance().socket(zmq.DEALER)
    sock.setsockopt(zmq.LINGER, 0)
    for name, value in options.items():
        sock.setsockopt(getattr(zmq, name), value)
    sock.connect(url)
    return sock
