"""Transfer lanes share the cores: torch's per-copy thread count with ``--max-gpu-workers N``."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from lmcache_core.transfer.threads import threads_per_lane, usable_cpus


@pytest.mark.parametrize(("lanes", "cpus", "want"), [
    (1, 2, None),    # the default single lane keeps torch's default
    (0, 2, None),
    (2, 2, 1),
    (4, 2, 1),       # more lanes than cores: one thread each, never zero
    (2, 16, 8),
    (3, 16, 5),
])
def test_threads_per_lane_divides_the_cores(lanes: int, cpus: int, want: int | None) -> None:
    assert threads_per_lane(lanes, cpus, {}) == want


@pytest.mark.parametrize("variable", ["OMP_NUM_THREADS", "MKL_NUM_THREADS"])
def test_an_operator_setting_wins(variable: str) -> None:
    assert threads_per_lane(4, 2, {variable: "2"}) is None
    assert threads_per_lane(4, 2, {variable: ""}) == 1  # an empty variable is not a setting


def _threads_after_fit(lanes: int, env: dict[str, str]) -> tuple[int, int]:
    """(torch threads before, after) ``fit_intraop_threads(lanes)`` in a fresh interpreter."""
    code = ("import torch; from lmcache_core.transfer.threads import fit_intraop_threads as f; "
            "b = torch.get_num_threads(); f(%d); print(b, torch.get_num_threads())" % lanes)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, check=True,
                         env=env).stdout.split()
    return int(out[0]), int(out[1])


def test_fit_sets_torch_threads_in_the_process() -> None:
    env = {k: v for k, v in os.environ.items() if k not in ("OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    cpus = usable_cpus()
    before, after = _threads_after_fit(2 * cpus, env)
    assert after == 1 and before >= 1
    before, after = _threads_after_fit(1, env)
    assert after == before  # one lane: untouched


def test_fit_leaves_an_operator_choice_alone() -> None:
    env = {**os.environ, "OMP_NUM_THREADS": "2"}
    before, after = _threads_after_fit(8, env)
    assert before == after == 2
