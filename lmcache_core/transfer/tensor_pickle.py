"""Pickled ``list[torch.Tensor]``, as the engine-driven (pickle) transfer carries chunk data.

Unpickling client data must not run arbitrary code: :func:`loads_tensors` only
resolves the three globals a pickled CPU tensor list needs, and loads the
storage bytes with ``torch.load(weights_only=True)`` instead of the
``weights_only=False`` load that ``torch.storage._load_from_bytes`` would do.

Nor may it inflate: ``torch.load`` also accepts a zip archive whose entries
are DEFLATE-compressed, so 4 MB on the wire could become gigabytes in memory.
:func:`loads_tensors` takes the most bytes the tensors may hold (``max_bytes``:
the chunk objects the request names) and refuses a payload longer than that
(plus pickle overhead), a zip entry that is compressed, and declared sizes
over the budget, before anything is inflated.
"""

from __future__ import annotations

import collections
import io
import pickle
import zipfile
from typing import Any

import torch


class UnsafePickleError(ValueError):
    """The payload names a global that a tensor list never needs, or is not a list of tensors."""


PICKLE_OVERHEAD_BYTES = 1 << 20
"""Slack over ``max_bytes`` for the pickle framing (tensor metadata, storage headers)."""

_ZIP_MAGIC = b"PK\x03\x04"


class _Budget:
    """Bytes the storages of one payload may still hold."""

    def __init__(self, max_bytes: int | None) -> None:
        self.left = max_bytes

    def take(self, n: int, what: str) -> None:
        if self.left is None:
            return
        if n > self.left:
            raise UnsafePickleError(f"{what} of {n} bytes exceeds what the request may carry")
        self.left -= n


def _checked_zip(data: bytes, budget: _Budget) -> None:
    """A zip-format storage: every entry stored (not compressed), declared sizes within the budget."""
    try:
        with zipfile.ZipFile(io.BytesIO(data)) as archive:
            entries = archive.infolist()
    except (zipfile.BadZipFile, ValueError, OSError) as exc:
        raise UnsafePickleError(f"storage archive is not a valid zip: {exc}") from None
    for entry in entries:
        if entry.compress_type != zipfile.ZIP_STORED:
            raise UnsafePickleError(f"storage entry {entry.filename!r} is compressed; refusing to inflate it")
    budget.take(sum(e.file_size for e in entries), "storage archive")


def _storage_loader(budget: _Budget) -> Any:
    def load(data: bytes) -> Any:
        if not isinstance(data, (bytes, bytearray)):
            raise UnsafePickleError("storage payload is not bytes")
        if bytes(data[:4]) == _ZIP_MAGIC:
            _checked_zip(bytes(data), budget)
        else:  # the legacy format torch pickles storages in: raw bytes, nothing compressed
            budget.take(len(data), "storage")
        return torch.load(io.BytesIO(data), weights_only=True, map_location="cpu")

    return load


def _allowed(budget: _Budget) -> dict[tuple[str, str], Any]:
    return {
        ("torch._utils", "_rebuild_tensor_v2"): torch._utils._rebuild_tensor_v2,
        ("torch.storage", "_load_from_bytes"): _storage_loader(budget),
        ("collections", "OrderedDict"): collections.OrderedDict,
    }


class _TensorUnpickler(pickle.Unpickler):
    def __init__(self, file: Any, budget: _Budget) -> None:
        super().__init__(file)
        self._allowed = _allowed(budget)

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self._allowed[(module, name)]
        except KeyError:
            raise UnsafePickleError(f"refusing to unpickle global {module}.{name}") from None


def loads_tensors(data: bytes, max_bytes: int | None = None) -> list[torch.Tensor]:
    """Decode ``pickle.dumps(list[Tensor])`` safely; raises :class:`UnsafePickleError` or ``pickle`` errors.

    ``max_bytes``: the most bytes all storages together may hold (None: no bound, for trusted data).
    """
    if max_bytes is not None and len(data) > max_bytes + PICKLE_OVERHEAD_BYTES:
        raise UnsafePickleError(f"payload of {len(data)} bytes for at most {max_bytes} bytes of tensors")
    budget = _Budget(None if max_bytes is None else max_bytes + PICKLE_OVERHEAD_BYTES)
    value = _TensorUnpickler(io.BytesIO(data), budget).load()
    if not isinstance(value, list) or not all(isinstance(t, torch.Tensor) for t in value):
        raise UnsafePickleError("payload is not a list of tensors")
    return value


def dumps_tensors(tensors: list[torch.Tensor]) -> bytes:
    """``pickle.dumps(list[Tensor])`` (what the 0.5.6 client unpickles)."""
    return pickle.dumps(tensors)
