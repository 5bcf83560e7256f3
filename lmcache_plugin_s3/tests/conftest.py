"""Fixtures for the s3 adapter tests: one real moto S3 server (a subprocess on 127.0.0.1) per session,
a fresh bucket per test, and adapters on it closed at teardown. This folder joins ``sys.path`` so the
server-level tests import ``s3_support``."""

from __future__ import annotations

import itertools
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import pytest
from lmcache_plugin_s3.adapter import S3AdapterConfig, S3L2Adapter
from lmcache_plugin_s3.testing import MotoS3

from lmcache_core.storage.l2.base import L2AdapterContext

_buckets = itertools.count()
if str(Path(__file__).resolve().parent) not in sys.path:
    sys.path.insert(0, str(Path(__file__).resolve().parent))


@pytest.fixture(scope="session")
def moto_s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoS3]:
    with MotoS3(log=tmp_path_factory.mktemp("moto") / "moto.log") as server:
        yield server


@pytest.fixture
def bucket(moto_s3: MotoS3) -> str:
    name = f"bucket-{next(_buckets)}"
    moto_s3.create_bucket(name)
    return name


@pytest.fixture
def make_s3(moto_s3: MotoS3, bucket: str) -> Iterator[Callable[..., S3L2Adapter]]:
    """``make(start=True, workers=2, **config)``: an adapter on the test's bucket (path style), closed at teardown."""
    made: list[S3L2Adapter] = []

    def make(*, start: bool = True, workers: int = 2, **config: Any) -> S3L2Adapter:
        fields = {k: v for k, v in moto_s3.adapter_config(bucket, **config).items() if k != "type"}
        cfg = msgspec.convert(fields, S3AdapterConfig)
        adapter = S3L2Adapter(cfg, L2AdapterContext(len(made), "s3", io_workers=workers))
        made.append(adapter)
        if start:
            adapter.start()
        return adapter

    yield make
    for adapter in made:
        adapter.close()

