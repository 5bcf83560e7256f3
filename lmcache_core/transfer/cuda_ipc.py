"""CUDA IPC: rebuild a worker's ``cuda`` KV descriptor and exchange interprocess events.

GPU workers register each layer as a ``cuda`` descriptor (LMCache 0.5.6's KV
registration): ``metadata`` (dtype, shape, stride, storage_offset, device_uuid) plus
``handle``, the 8-tuple PyTorch's ``UntypedStorage._share_cuda_()`` returns::

    [device_index, cudaIpcMemHandle (64 bytes), storage_size_bytes, storage_offset_bytes,
     ref_counter_handle, ref_counter_offset, event_handle, event_sync_required]

The sender's ``device_index`` means nothing here: devices are matched by UUID
(``str(torch.cuda.get_device_properties(i).uuid)``), because the two processes
may see different ``CUDA_VISIBLE_DEVICES`` orders.

STORE and RETRIEVE carry the worker's event handle (an interprocess CUDA event
recorded after it wrote the blocks); the server waits on it before reading, and
may answer with its own event handle, or ``b""`` when the copy already finished
before the reply (what :class:`~lmcache_core.transfer.kvcache.RegisteredKVCache`
does: it synchronises).

Everything here needs a working ``torch.cuda``; on a CPU-only build every entry
point raises :class:`CudaUnavailableError` ("CUDA not available") before touching
CUDA, so importing this module is always safe.
"""

from __future__ import annotations

import collections
import threading
from collections.abc import Sequence
from typing import Any

import torch

from lmcache_core.transfer.layout import LayoutError, TransferError, parse_dtype
from lmcache_core.transfer.shm import view_span_bytes

__all__ = [
    "CPU_STUB_EVENT_HANDLE",
    "CudaIpcError",
    "CudaUnavailableError",
    "cuda_available",
    "device_ordinal_for_uuid",
    "export_ipc_event",
    "import_ipc_event",
    "rebuild_cuda_tensor",
    "require_cuda",
    "wait_ipc_event",
]

# What CPU clients send as their "event" (a no-op to wait on).
CPU_STUB_EVENT_HANDLE = b"stub_ipc_handle"
_IPC_MEM_HANDLE_BYTES = 64
# An exported handle is only usable while its event exists, and the worker imports it after
# our reply; keep the most recent events alive (a worker waits on each within one step).
_EXPORTED_KEEP = 1024
_exported: collections.deque[Any] = collections.deque(maxlen=_EXPORTED_KEEP)
_exported_lock = threading.Lock()


class CudaUnavailableError(TransferError):
    """CUDA is not available in this server process."""


class CudaIpcError(TransferError, ValueError):
    """A ``cuda`` descriptor or event handle cannot be used."""


def cuda_available() -> bool:
    """Whether ``torch.cuda`` works here (False, never an exception, on CPU-only builds)."""
    try:
        return bool(torch.cuda.is_available())
    except Exception:  # noqa: BLE001 - a broken driver must read as "no CUDA", not crash the server
        return False


def require_cuda() -> None:
    """Raise :class:`CudaUnavailableError` unless CUDA works."""
    if not cuda_available():
        raise CudaUnavailableError("CUDA not available: this server cannot map cuda KV descriptors "
                                   "or CUDA IPC events (CPU clients use cpu_shm)")


def device_ordinal_for_uuid(device_uuid: str) -> int:
    """The local ordinal of the GPU whose UUID string is ``device_uuid``.

    Accepts the UUID with or without a ``GPU-`` prefix. Raises
    :class:`CudaIpcError` when no visible device matches.
    """
    require_cuda()
    want = str(device_uuid).lower().removeprefix("gpu-")
    seen = []
    for i in range(torch.cuda.device_count()):
        uuid = str(torch.cuda.get_device_properties(i).uuid).lower().removeprefix("gpu-")
        if uuid == want:
            return i
        seen.append(uuid)
    raise CudaIpcError(f"no visible CUDA device has UUID {device_uuid!r} (visible: {seen})")


def _check_handle(handle: Sequence[Any]) -> tuple[Any, ...]:
    """Validate the 8-tuple's types (§3.3) before handing it to CUDA."""
    if isinstance(handle, (str, bytes)) or not isinstance(handle, Sequence) or len(handle) != 8:
        raise CudaIpcError(f"cuda handle must be an 8-element list, got {handle!r:.80}")
    (dev, mem, size, offset, ref_handle, ref_offset, event, sync) = handle
    if not isinstance(mem, (bytes, bytearray)) or len(mem) != _IPC_MEM_HANDLE_BYTES:
        raise CudaIpcError("cuda handle[1] must be a 64-byte cudaIpcMemHandle")
    for name, v in (("storage_size_bytes", size), ("storage_offset_bytes", offset), ("ref_counter_offset", ref_offset)):
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise CudaIpcError(f"cuda handle {name} must be a non-negative integer, got {v!r}")
    for name, v in (("ref_counter_handle", ref_handle), ("event_handle", event)):
        if v is not None and not isinstance(v, (bytes, bytearray)):
            raise CudaIpcError(f"cuda handle {name} must be bytes or nil")
    return (dev, bytes(mem), size, offset, None if ref_handle is None else bytes(ref_handle), ref_offset,
            None if event is None else bytes(event), bool(sync))


def rebuild_cuda_tensor(
    handle: Sequence[Any],
    dtype: str,
    shape: Sequence[int],
    stride: Sequence[int],
    storage_offset: int,
    device_uuid: str,
) -> torch.Tensor:
    """Open the worker's CUDA allocation and return the registered view (zero copy).

    Raises :class:`CudaUnavailableError` without CUDA, :class:`CudaIpcError` for a
    bad handle, unknown device or a view that does not fit the shared storage.
    """
    require_cuda()
    parts = _check_handle(handle)
    try:
        torch_dtype = parse_dtype(dtype)
    except LayoutError as exc:
        raise CudaIpcError(str(exc)) from None
    shape_t, stride_t = tuple(int(s) for s in shape), tuple(int(s) for s in stride)
    if len(shape_t) != len(stride_t) or min((*shape_t, *stride_t, storage_offset), default=0) < 0:
        raise CudaIpcError(f"bad view: shape {list(shape_t)} stride {list(stride_t)} offset {storage_offset}")
    span = view_span_bytes(torch_dtype.itemsize, shape_t, stride_t, storage_offset)
    if span > parts[2]:
        raise CudaIpcError(f"view spans {span} bytes but the shared storage has {parts[2]}")
    ordinal = device_ordinal_for_uuid(device_uuid)
    try:
        storage = torch.UntypedStorage._new_shared_cuda(ordinal, *parts[1:])
    except RuntimeError as exc:
        raise CudaIpcError(f"cannot open the CUDA IPC handle: {exc}") from None
    tensor = torch.empty(0, dtype=torch_dtype, device=torch.device("cuda", ordinal))
    tensor.set_(storage, storage_offset, shape_t, stride_t)
    return tensor


def import_ipc_event(handle: bytes, device: int | torch.device) -> torch.cuda.Event | None:
    """The worker's interprocess event, or None for ``b""`` / the CPU stub handle (nothing to wait on)."""
    if not handle or handle == CPU_STUB_EVENT_HANDLE:
        return None
    require_cuda()
    try:
        return torch.cuda.Event.from_ipc_handle(device, bytes(handle))
    except RuntimeError as exc:
        raise CudaIpcError(f"cannot import the CUDA IPC event handle: {exc}") from None


def wait_ipc_event(handle: bytes, device: int | torch.device, stream: torch.cuda.Stream | None = None) -> None:
    """Make ``stream`` (default: the current one) wait for the worker's event before later copies."""
    event = import_ipc_event(handle, device)
    if event is None:
        return
    (stream or torch.cuda.current_stream(device)).wait_event(event)


def export_ipc_event(device: int | torch.device, stream: torch.cuda.Stream | None = None) -> bytes:
    """Record an interprocess event on ``stream`` and return its handle (what a STORE/RETRIEVE reply carries)."""
    require_cuda()
    with torch.cuda.device(device):
        event = torch.cuda.Event(interprocess=True)
        event.record(stream or torch.cuda.current_stream(device))
        handle = bytes(event.ipc_handle())
    with _exported_lock:
        _exported.append(event)
    return handle
