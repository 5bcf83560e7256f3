"""Pickled ``list[torch.Tensor]``, as the engine-driven (pickle) transfer carries chunk data.

Unpickling client data must not run arbitrary code: :func:`loads_tensors` only
resolves the three globals a pickled CPU tensor list needs, and loads the
storage bytes with ``torch.load(weights_only=True)`` instead of the
``weights_only=False`` load that ``torch.storage._load_from_bytes`` would do.
"""

from __future__ import annotations

import collections
import io
import pickle
from typing import Any

import torch


class UnsafePickleError(ValueError):
    """The payload names a global that a tensor list never needs, or is not a list of tensors."""


def _load_storage(data: bytes) -> Any:
    return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")


_ALLOWED = {
    ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
    ("torch.storage", "_load_from_bytes"): _load_storage,
    ("collections", "OrderedDict"): collections.OrderedDict,
}


class _TensorUnpickler(pickle.Unpickler):
    def find_class(self, module: str, name: str) -> Any:
        try:
            return _ALLOWED[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refusing to unpickle global {module}.{name}") from None


def loads_tensors(data: bytes) -> list[torch.Tensor]:
    """Decode ``pickle.dumps(list[Tensor])`` safely; raises :class:`UnsafePickleError` or ``pickle`` errors."""
    value = _TensorUnpickler(io.BytesIO(data)).load()
    if not isinstance(value, list) or not all(isinstance(t, torch.Tensor) for t in value):
        raise UnsafePickleError("payload is not a list of tensors")
    return value


def dumps_tensors(tensors: list[torch.Tensor]) -> bytes:
    """``pickle.dumps(list[Tensor])`` (what the 0.5.6 client unpickles)."""
    return pickle.dumps(tensors)
