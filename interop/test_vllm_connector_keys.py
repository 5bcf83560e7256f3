"""The ``lmcache.mp.*`` keys docs/vllm.md names are ones LMCache 0.5.6's vLLM connector reads.

Read from the peer's installed source (``lmcache/integration/vllm/``): a key is either written
out (``"lmcache.mp.server_urls"``) or is the adapter's ``"lmcache.mp."`` prefix plus a member of
its ``ExtraConfigDefault`` table (``mq_timeout = 300.0``).
"""

from __future__ import annotations

import re
from pathlib import Path

from test_vllm_docs import KNOWN_MP_KEYS


def _connector_source(peer_python: Path) -> str:
    site = peer_python.parent.parent / "lib"
    files = sorted(site.glob("python3*/site-packages/lmcache/integration/vllm/*.py"))
    assert any(f.name == "lmcache_mp_connector.py" for f in files)
    return "\n".join(f.read_text() for f in files)


def test_every_documented_key_is_read_by_the_0_5_6_connector(peer_python):
    source = _connector_source(peer_python)
    assert '_EXTRA_CONFIG_KEY_PREFIX = "lmcache.mp."' in source
    table = set(re.findall(r"^    ([a-z_]+) = ", source, re.M))
    for key in KNOWN_MP_KEYS:
        suffix = key.removeprefix("lmcache.mp.")
        assert f'"{key}"' in source or suffix in table, key
