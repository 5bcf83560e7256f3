"""Core's engine components contribute their ``/status`` sections through the status hook,
as a built-in plugin, like any other contributor.

Sections (the ``GET /status`` example of the HTTP API this server implements, LMCache 0.5.6's):

* ``active_sessions`` — the session manager's count;
* the data path's section: ``registered_gpu_ids``, ``cache_context_meta`` (one entry per
  registered worker, keyed by its instance id as a string, each with the worker's
  ``kv_cache_layout``), ``active_prefetch_jobs`` and our extra counters;
* ``storage_manager`` — L1, L2 and controller sections, with ``is_healthy``.

Each part is assembled on its own: a component that fails to report is shown as
unhealthy (``storage_manager: {"is_healthy": false, "error": ...}``) or named under
``status_errors`` instead of taking the whole core contribution down. Components are read
through local references, so a server stopping concurrently yields a snapshot of
whatever is still there, never an ``AttributeError`` on ``None``.

``kv_cache_layout`` follows the seed's field names. Where a field has no counterpart here
the value says so rather than being invented: ``attention_backend`` is ``null`` (the
registration frames do not carry it; the resolved ``kv_layout`` hint is reported beside it),
``slots_per_block`` equals ``tokens_per_block`` (compressed blocks are refused at
registration) and ``object_group_idx`` equals the kernel group index (each kernel group is
one contiguous block of the stored chunk object). Shapes are lists of ints, not strings:
``engine_kv_concrete_shape`` is the registered tensor's shape as the worker sent it,
``engine_kv_shape`` its canonical ``[kv, num_blocks, tokens_per_block, num_heads, head_size]``
reading, ``engine_kv_format`` the detected format (e.g. ``"2,NB,BS,NH,HS"``).
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING, Any

from lmcache_core import hookimpl

if TYPE_CHECKING:
    from lmcache_core.server import CacheServer
    from lmcache_core.transfer.kvcache import RegisteredKVCache

logger = logging.getLogger(__name__)


def _error(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def kv_cache_layout(kv: RegisteredKVCache) -> dict[str, Any]:
    """The seed's ``kv_cache_layout`` of one registered KV cache (see the module docstring)."""
    from lmcache_core.transfer.layout import KVFormat

    layout = kv.layout
    try:
        raw_shapes: list[list[int]] | None = [[int(s) for s in t.shape] for t in kv.layers]
    except Exception:  # unregistered (closed) between the lookup and here: report what is immutable
        raw_shapes = None
    groups = []
    for g in layout.groups:
        first = g.layer_indices[0]
        groups.append({
            "kernel_group_idx": g.index,
            "engine_group_idx": g.engine_group_id,
            "object_group_idx": g.index,
            "num_layers": g.num_layers,
            "layer_indices": list(g.layer_indices),
            "tokens_per_block": g.tokens_per_block,
            "slots_per_block": g.tokens_per_block,
            "dtype": str(g.dtype),
            "engine_kv_concrete_shape": raw_shapes[first] if raw_shapes is not None else None,
            "is_mla": g.fmt is KVFormat.MLA,
            "engine_kv_format": g.fmt.value,
            "engine_kv_shape": [g.kv_size, g.num_blocks, g.tokens_per_block, g.num_heads, g.head_size],
            "attention_backend": None,
            "num_blocks": g.num_blocks,
            "num_heads": g.num_heads,
            "head_size": g.head_size,
            "sw_size_tokens": g.sw_size_tokens,
        })
    per_token = sum(g.kv_size * g.num_layers * g.hidden * g.dtype.itemsize for g in layout.groups)
    return {
        "num_layers": layout.num_layers,
        "num_blocks": layout.groups[0].num_blocks,
        "cache_size_per_token": per_token,
        "kv_layout": layout.kv_layout,
        "chunk_tokens": layout.chunk_tokens,
        "object_nbytes": layout.object_nbytes,
        "device": str(kv.device),
        "kernel_groups": groups,
    }


def _datapath_section(datapath: Any) -> dict[str, Any]:
    section: dict[str, Any] = datapath.report_status()
    for iid, meta in section.get("cache_context_meta", {}).items():
        kv = datapath.registered_kv(int(iid))
        if kv is not None:  # None: unregistered since report_status read it
            meta["kv_cache_layout"] = kv_cache_layout(kv)
    return section


@hookimpl
def lmcache_status(server: CacheServer) -> dict[str, Any]:
    doc: dict[str, Any] = {}
    errors: dict[str, str] = {}
    sessions, datapath, storage = server.sessions, server.datapath, server.storage
    if sessions is not None:
        try:
            doc["active_sessions"] = sessions.count()
        except Exception as exc:
            logger.exception("status: session manager failed to report")
            errors["sessions"] = _error(exc)
    if datapath is not None:
        try:
            doc.update(_datapath_section(datapath))
        except Exception as exc:
            logger.exception("status: data path failed to report")
            errors["datapath"] = _error(exc)
    if storage is not None:
        try:
            doc["storage_manager"] = storage.report_status()
        except Exception as exc:
            logger.exception("status: storage manager failed to report")
            doc["storage_manager"] = {"is_healthy": False, "error": _error(exc)}
    if errors:
        doc["status_errors"] = errors
    return doc
