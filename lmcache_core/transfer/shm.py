"""CPU shared-memory KV caches: map a worker's ``cpu_shm`` descriptor as a zero-copy tensor.

A CPU worker (LMCache's client, the bench, vLLM on CPU) moves each layer's
backing storage into a POSIX shared-memory segment and sends one ``cpu_shm``
descriptor per layer (LMCache 0.5.6's KV registration): the segment name, the
segment length ``nbytes`` and the view (dtype, shape, stride, storage_offset).
:class:`ShmSegmentCache` maps ``/dev/shm/<name>`` read/write and ``MAP_SHARED``,
so what the server writes is what the worker reads, and rebuilds the view with
``as_strided``.

Several layers usually share one segment (views of one storage with different
offsets), so a segment is mapped once and reference-counted; the last
:meth:`MappedTensor.release` drops the cache's references and closes the
mapping, which is unmapped as soon as no tensor derived from it is left; a
tensor still alive somewhere (an in-flight copy on another thread) keeps it
mapped, so no copy ever touches unmapped memory. The client owns the segment and unlinks it; the
server never does.

Safety: a descriptor must never make the server open anything outside
``/dev/shm``. Names are one path component (no ``/``, no ``..``, no NUL),
opened with ``O_NOFOLLOW`` and required to be regular files at least
``nbytes`` long (mapping past the end of a shorter file would SIGBUS on the
first copy). The server is not a confused deputy for other users' files: a
segment must start with one of the allowed name prefixes (``lmcache_`` by
default: LMCache names its segments ``/lmcache_kv_<pid>_<n>``) and be owned by
the server's own uid or by a uid/gid the operator allows
(``--shm-allowed-uids``/``--shm-allowed-gids``); anything else is refused with
:class:`ShmPermissionError` and a log line.

A client can still shrink its segment (``ftruncate``) after registering it.
Every copy first calls :meth:`MappedTensor.check`, which calls ``fstat`` on
the segment through a descriptor kept open for the mapping's life: a segment
shorter than what was mapped is a failed request (:class:`ShmTooSmallError`),
not a SIGBUS. (A truncation racing the copy itself, between that check and
the memcpy, can still fault; only a process the owner rule already trusts,
i.e. one that could signal the server anyway, can arrange that.)

:func:`create_shm_tensor` / :class:`SharedSegment` are the client side, for
tests, the benchmark and our own client: they create, size and unlink segments.
"""

from __future__ import annotations

import itertools
import logging
import mmap
import os
import stat
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lmcache_core.transfer.layout import (
    LayoutError,
    TransferError,
    dtype_name,
    parse_dtype,
)

__all__ = [
    "DEFAULT_NAME_PREFIXES",
    "MappedTensor",
    "SharedSegment",
    "SharedTensor",
    "ShmDescriptorError",
    "ShmError",
    "ShmMissingError",
    "ShmNameError",
    "ShmPermissionError",
    "ShmPolicy",
    "ShmSegmentCache",
    "ShmTooSmallError",
    "create_shm_tensor",
    "descriptor_fields",
    "shm_path",
    "view_span_bytes",
]

log = logging.getLogger(__name__)

SHM_DIR = "/dev/shm"
_NAME_MAX = 255  # NAME_MAX on Linux


class ShmError(TransferError):
    """A ``cpu_shm`` descriptor could not be mapped."""


class ShmNameError(ShmError, ValueError):
    """The segment name is not a single safe component under /dev/shm."""


class ShmMissingError(ShmError, FileNotFoundError):
    """No segment of that name exists (or it is not a regular file)."""


class ShmTooSmallError(ShmError, ValueError):
    """The segment is shorter than ``nbytes``, or the view does not fit in ``nbytes``."""


class ShmDescriptorError(ShmError, ValueError):
    """The descriptor's fields are malformed (dtype, rank mismatch, negative values, device)."""


class ShmPermissionError(ShmError, PermissionError):
    """The segment's name or owner is not one this server maps (see :class:`ShmPolicy`)."""


DEFAULT_NAME_PREFIXES = ("lmcache_",)


@dataclass(frozen=True)
class ShmPolicy:
    """Which ``/dev/shm`` files the server agrees to map.

    A segment's name (without the leading ``/``) must start with one of
    ``name_prefixes`` (empty: any name), and its owner must be the server's
    effective uid, one of ``allowed_uids``, or its group one of ``allowed_gids``.
    """

    name_prefixes: tuple[str, ...] = DEFAULT_NAME_PREFIXES
    allowed_uids: frozenset[int] = frozenset()
    allowed_gids: frozenset[int] = frozenset()

    def check_name(self, shm_name: str) -> None:
        name = shm_name.removeprefix("/")
        if self.name_prefixes and not name.startswith(self.name_prefixes):
            raise ShmPermissionError(f"shared-memory segment {shm_name!r} is not named like a KV segment "
                                     f"(allowed prefixes: {', '.join(self.name_prefixes)})")

    def check_owner(self, shm_name: str, st: os.stat_result) -> None:
        if st.st_uid == os.geteuid() or st.st_uid in self.allowed_uids or st.st_gid in self.allowed_gids:
            return
        raise ShmPermissionError(f"shared-memory segment {shm_name!r} belongs to uid {st.st_uid} gid {st.st_gid}, "
                                 f"which this server does not map (see --shm-allowed-uids/--shm-allowed-gids)")


def shm_path(shm_name: str) -> str:
    """The /dev/shm path of a POSIX shared-memory name (``"/x"`` or ``"x"``).

    Raises :class:`ShmNameError` unless the name (after one optional leading
    ``/``) is a single path component without ``..`` or NUL.
    """
    if not isinstance(shm_name, str):
        raise ShmNameError(f"shm_name must be a string, got {type(shm_name).__name__}")
    name = shm_name.removeprefix("/")
    if not name or len(name) > _NAME_MAX:
        raise ShmNameError(f"invalid shared-memory name {shm_name!r}: empty or longer than {_NAME_MAX}")
    if "/" in name or "\0" in name or ".." in name or name == ".":
        raise ShmNameError(f"invalid shared-memory name {shm_name!r}: must be one component under {SHM_DIR}")
    return os.path.join(SHM_DIR, name)


def view_span_bytes(itemsize: int, shape: Sequence[int], stride: Sequence[int], storage_offset: int) -> int:
    """Bytes from the start of the storage to the end of the view's last element.

    ``itemsize * (storage_offset + 1 + Σ (size-1)*stride)``; 0 for a view with no
    elements (§3.1).
    """
    if any(s == 0 for s in shape):
        return 0
    last = storage_offset + sum((size - 1) * st for size, st in zip(shape, stride, strict=True))
    return itemsize * (last + 1)


def _ints(value: Any, what: str) -> tuple[int, ...]:
    """A tuple of non-negative ints, or :class:`ShmDescriptorError`."""
    if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
        raise ShmDescriptorError(f"{what} must be a list of integers, got {value!r}")
    out = []
    for v in value:
        if not isinstance(v, int) or isinstance(v, bool) or v < 0:
            raise ShmDescriptorError(f"{what} must hold non-negative integers, got {list(value)!r}")
        out.append(int(v))
    return tuple(out)


_FIELDS = ("shm_name", "nbytes", "dtype", "shape", "stride", "storage_offset", "device_uuid")
_META_FIELDS = ("dtype", "shape", "stride", "storage_offset", "device_uuid")


def _get(obj: Any, name: str) -> Any:
    if isinstance(obj, Mapping):
        return obj.get(name, _MISSING)
    return getattr(obj, name, _MISSING)


_MISSING = object()


def descriptor_fields(descriptor: Any) -> dict[str, Any]:
    """The flat fields of a ``cpu_shm`` descriptor.

    Accepts a mapping or an object with attributes (a decoded msgspec Struct),
    either flat (``shm_name, nbytes, dtype, shape, stride, storage_offset,
    device_uuid``) or as on the wire, with the view fields inside ``metadata``.
    A ``type`` other than ``cpu_shm`` is refused.
    """
    kind = _get(descriptor, "type")
    if kind is not _MISSING and kind != "cpu_shm":
        raise ShmDescriptorError(f"descriptor type {kind!r} is not cpu_shm")
    meta = _get(descriptor, "metadata")
    out: dict[str, Any] = {}
    for name in _FIELDS:
        value = _get(descriptor, name)
        if value is _MISSING and name in _META_FIELDS and meta is not _MISSING and meta is not None:
            value = _get(meta, name)
        if value is _MISSING:
            if name == "device_uuid":
                value = "cpu"
            else:
                raise ShmDescriptorError(f"cpu_shm descriptor has no {name!r}")
        out[name] = value
    return out


@dataclass(frozen=True)
class _ViewSpec:
    dtype: torch.dtype
    shape: tuple[int, ...]
    stride: tuple[int, ...]
    storage_offset: int


def _validate(nbytes: Any, dtype: Any, shape: Any, stride: Any, storage_offset: Any, device_uuid: Any) -> _ViewSpec:
    """Check every descriptor field (§3.1) before touching the file system."""
    if not isinstance(nbytes, int) or isinstance(nbytes, bool) or nbytes < 0:
        raise ShmDescriptorError(f"nbytes must be a non-negative integer, got {nbytes!r}")
    try:
        torch_dtype = parse_dtype(dtype)
    except LayoutError as exc:
        raise ShmDescriptorError(str(exc)) from None
    shape_t = _ints(shape, "shape")
    stride_t = _ints(stride, "stride")
    if len(shape_t) != len(stride_t):
        raise ShmDescriptorError(f"shape {list(shape_t)} and stride {list(stride_t)} differ in rank")
    if not isinstance(storage_offset, int) or isinstance(storage_offset, bool) or storage_offset < 0:
        raise ShmDescriptorError(f"storage_offset must be a non-negative integer, got {storage_offset!r}")
    if device_uuid not in (None, "cpu"):
        raise ShmDescriptorError(f"cpu_shm descriptor names device {device_uuid!r}, expected 'cpu'")
    span = view_span_bytes(torch_dtype.itemsize, shape_t, stride_t, storage_offset)
    if span > nbytes:
        raise ShmTooSmallError(f"view {list(shape_t)}/{list(stride_t)}+{storage_offset} of {dtype_name(torch_dtype)} "
                               f"spans {span} bytes but the segment is {nbytes} bytes")
    return _ViewSpec(torch_dtype, shape_t, stride_t, storage_offset)


class _Segment:
    """One mapping of one segment file, shared by every view that names it.

    Keeps its own descriptor of the file (closed when the object goes) so that
    :meth:`check` can ``fstat`` the very file that is mapped, whatever its name
    now points at.
    """

    __slots__ = ("base", "fd", "key", "mm", "name", "nbytes", "refs")

    def __init__(self, key: tuple[int, int, int], name: str, mm: mmap.mmap, nbytes: int, fd: int) -> None:
        self.key = key
        self.name = name
        self.mm: mmap.mmap | None = mm
        self.nbytes = nbytes
        self.fd = fd
        # The storage behind this tensor (and every view of it) holds a reference to the mmap.
        self.base: torch.Tensor | None = torch.frombuffer(mm, dtype=torch.uint8)
        self.refs = 0

    def check(self) -> None:
        """Raise :class:`ShmTooSmallError` if the file is now shorter than the mapping."""
        try:
            size = os.fstat(self.fd).st_size
        except OSError as exc:
            raise ShmMissingError(f"shared-memory segment {self.name!r} cannot be checked: {exc.strerror}") from None
        if size < self.nbytes:
            raise ShmTooSmallError(f"shared-memory segment {self.name!r} shrank to {size} bytes "
                                   f"after it was mapped with {self.nbytes}")

    def __del__(self) -> None:
        fd, self.fd = self.fd, -1
        if fd >= 0:
            try:
                os.close(fd)
            except OSError:
                pass


class MappedTensor:
    """A tensor view of a mapped segment, holding one reference on the segment.

    ``tensor`` aliases the client's pages. Call :meth:`release` once (further
    calls do nothing) when the registration that uses it goes away; drop your
    own references to ``tensor`` first so the mapping can close at once.
    """

    __slots__ = ("_cache", "_segment", "_watch", "shm_name", "tensor")

    def __init__(self, tensor: torch.Tensor, shm_name: str, cache: ShmSegmentCache | None,
                 segment: _Segment | None) -> None:
        self.tensor: torch.Tensor | None = tensor
        self.shm_name = shm_name
        self._cache = cache
        self._segment = segment
        self._watch = segment  # kept after release: a copy racing release() still checks the file

    @property
    def released(self) -> bool:
        """Whether :meth:`release` has run."""
        return self.tensor is None

    def check(self) -> None:
        """Before a copy: raise :class:`ShmTooSmallError` if the segment shrank since it was mapped
        (touching the lost pages would kill the server with SIGBUS)."""
        if self._watch is not None:
            self._watch.check()

    def release(self) -> None:
        """Drop this view's reference; the segment is closed when its last view is released."""
        if self.tensor is None:
            return
        self.tensor = None
        cache, segment = self._cache, self._segment
        self._cache = self._segment = None
        if cache is not None and segment is not None:
            cache._unref(segment)


class ShmSegmentCache:
    """Maps ``cpu_shm`` descriptors, one mapping per segment, reference-counted; thread-safe.

    One instance per server. Segments are identified by the file they resolve to
    (device, inode) and the mapped length, so a name the client unlinked and
    reused for a new segment is never confused with the old one.
    """

    def __init__(self, policy: ShmPolicy | None = None) -> None:
        """An empty cache mapping what ``policy`` allows (default: ``lmcache_*`` names owned by our uid)."""
        self.policy = policy or ShmPolicy()
        self._lock = threading.Lock()
        self._segments: dict[tuple[int, int, int], _Segment] = {}

    def map_tensor(
        self,
        shm_name: str,
        nbytes: int,
        dtype: str,
        shape: Sequence[int],
        stride: Sequence[int],
        storage_offset: int,
        device_uuid: str | None = "cpu",
    ) -> MappedTensor:
        """Map one descriptor and return its view (zero copy).

        Raises :class:`ShmNameError`, :class:`ShmMissingError`,
        :class:`ShmTooSmallError` or :class:`ShmDescriptorError`.
        """
        spec = _validate(nbytes, dtype, shape, stride, storage_offset, device_uuid)
        if nbytes == 0:
            # No segment: the view is empty (LMCache sends "" as the name then).
            empty = torch.empty_strided(spec.shape, spec.stride, dtype=spec.dtype)
            return MappedTensor(empty, shm_name, None, None)
        path = shm_path(shm_name)
        self.policy.check_name(shm_name)
        segment = self._acquire(path, shm_name, nbytes)
        try:
            assert segment.base is not None
            # Truncate to whole elements: a whole-storage segment need not divide by this dtype.
            usable = nbytes - nbytes % spec.dtype.itemsize
            typed = segment.base[:usable].view(spec.dtype)
            tensor = torch.as_strided(typed, spec.shape, spec.stride, spec.storage_offset)
        except Exception:
            self._unref(segment)
            raise
        return MappedTensor(tensor, shm_name, self, segment)

    def map_descriptor(self, descriptor: Any) -> MappedTensor:
        """:meth:`map_tensor` from a descriptor in any shape :func:`descriptor_fields` accepts."""
        f = descriptor_fields(descriptor)
        return self.map_tensor(f["shm_name"], f["nbytes"], f["dtype"], f["shape"], f["stride"],
                               f["storage_offset"], f["device_uuid"])

    def segments(self) -> list[dict[str, Any]]:
        """The live mappings: ``{shm_name, nbytes, refs}`` each (for status and tests)."""
        with self._lock:
            return [{"shm_name": s.name, "nbytes": s.nbytes, "refs": s.refs} for s in self._segments.values()]

    def close(self) -> None:
        """Forget every mapping (server shutdown); views still alive keep their memory until collected."""
        with self._lock:
            segments = list(self._segments.values())
            self._segments.clear()
        for segment in segments:
            segment.refs = 0
            _close_segment(segment)

    # -- internals ------------------------------------------------------------------------

    def _acquire(self, path: str, shm_name: str, nbytes: int) -> _Segment:
        flags = os.O_RDWR | getattr(os, "O_NOFOLLOW", 0) | getattr(os, "O_CLOEXEC", 0)
        try:
            fd = os.open(path, flags)
        except FileNotFoundError:
            raise ShmMissingError(f"shared-memory segment {shm_name!r} does not exist") from None
        except OSError as exc:  # ELOOP for a symlink, EACCES for another user's segment
            raise ShmMissingError(f"cannot open shared-memory segment {shm_name!r}: {exc.strerror}") from None
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise ShmMissingError(f"shared-memory segment {shm_name!r} is not a regular file")
            try:
                self.policy.check_owner(shm_name, st)
            except ShmPermissionError as exc:
                log.warning("refused to map: %s", exc)
                raise
            if st.st_size < nbytes:
                raise ShmTooSmallError(f"shared-memory segment {shm_name!r} has {st.st_size} bytes, "
                                       f"descriptor says {nbytes}")
            key = (st.st_dev, st.st_ino, nbytes)
            with self._lock:
                segment = self._segments.get(key)
                if segment is None:
                    mm = mmap.mmap(fd, nbytes, flags=mmap.MAP_SHARED, prot=mmap.PROT_READ | mmap.PROT_WRITE)
                    segment = _Segment(key, shm_name, mm, nbytes, fd)
                    fd = -1  # the segment owns it now
                    self._segments[key] = segment
                    log.debug("mapped shared-memory segment %s (%d bytes)", shm_name, nbytes)
                segment.refs += 1
                return segment
        finally:
            if fd >= 0:
                os.close(fd)

    def _unref(self, segment: _Segment) -> None:
        with self._lock:
            segment.refs -= 1
            if segment.refs > 0:
                return
            if self._segments.get(segment.key) is segment:
                del self._segments[segment.key]
        _close_segment(segment)


def _close_segment(segment: _Segment) -> None:
    """Drop the cache's references to the mapping.

    Never ``mmap.close()`` here: ``torch.frombuffer`` keeps a reference to the
    mmap object but not a buffer export, so closing would unmap pages that a
    tensor still alive elsewhere (a copy in flight on another thread) points
    at. The mmap object unmaps itself when its last reference goes, which is at
    once when no such tensor exists.
    """
    segment.base = None
    segment.mm = None
    log.debug("released shared-memory segment %s", segment.name)


# -- client side: creating segments ------------------------------------------------------

_COUNTER = itertools.count()


class SharedSegment:
    """A shared-memory segment this process created (client side); unlinked by :meth:`close`."""

    def __init__(self, nbytes: int, name: str | None = None) -> None:
        """Create ``/dev/shm/<name>`` exclusively (mode 0600), ``nbytes`` long, and map it."""
        if nbytes <= 0:
            raise ShmDescriptorError(f"segment size must be positive, got {nbytes}")
        self.name = name or f"/lmcache_srv_{os.getpid()}_{next(_COUNTER)}"
        self.path = shm_path(self.name)
        self.nbytes = int(nbytes)
        fd = os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o600)
        try:
            os.ftruncate(fd, self.nbytes)
            self._mm: mmap.mmap | None = mmap.mmap(fd, self.nbytes, flags=mmap.MAP_SHARED,
                                                   prot=mmap.PROT_READ | mmap.PROT_WRITE)
        except Exception:
            os.close(fd)
            os.unlink(self.path)
            raise
        os.close(fd)
        self._base: torch.Tensor | None = torch.frombuffer(self._mm, dtype=torch.uint8)

    def tensor(self, shape: Sequence[int], dtype: torch.dtype, storage_offset: int = 0,
               stride: Sequence[int] | None = None) -> tuple[torch.Tensor, dict[str, Any]]:
        """A view of the segment and the descriptor fields that describe it.

        ``storage_offset`` is in elements of ``dtype``; ``stride`` defaults to C-contiguous.
        """
        if self._base is None:
            raise ShmError(f"segment {self.name} is closed")
        shape_t = tuple(int(s) for s in shape)
        if stride is None:
            stride_l, acc = [], 1
            for size in reversed(shape_t):
                stride_l.append(acc)
                acc *= size
            stride_t = tuple(reversed(stride_l))
        else:
            stride_t = tuple(int(s) for s in stride)
        span = view_span_bytes(dtype.itemsize, shape_t, stride_t, storage_offset)
        if span > self.nbytes:
            raise ShmTooSmallError(f"view needs {span} bytes, segment {self.name} has {self.nbytes}")
        typed = self._base[: self.nbytes - self.nbytes % dtype.itemsize].view(dtype)
        view = torch.as_strided(typed, shape_t, stride_t, storage_offset)
        fields = {
            "shm_name": self.name,
            "nbytes": self.nbytes,
            "dtype": dtype_name(dtype),
            "shape": list(shape_t),
            "stride": list(stride_t),
            "storage_offset": int(storage_offset),
            "device_uuid": "cpu",
        }
        return view, fields

    def close(self) -> None:
        """Unlink the segment and drop this object's mapping (unmapped once no view is left). Idempotent."""
        if self._base is None:
            return
        self._base = None
        try:
            os.unlink(self.path)
        except FileNotFoundError:
            pass
        # Like the server side, never close the mmap under live views: it unmaps with its last reference.
        self._mm = None

    def __enter__(self) -> SharedSegment:  # noqa: PYI034 - typing.Self needs 3.11
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


@dataclass
class SharedTensor:
    """A tensor in its own new shared-memory segment, with its descriptor fields."""

    tensor: torch.Tensor
    fields: dict[str, Any]
    segment: SharedSegment

    def close(self) -> None:
        """Unlink the segment (see :meth:`SharedSegment.close`)."""
        self.segment.close()

    def __enter__(self) -> SharedTensor:  # noqa: PYI034
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def create_shm_tensor(shape: Sequence[int], dtype: torch.dtype, *, name: str | None = None) -> SharedTensor:
    """Create a zero-filled C-contiguous tensor in a fresh segment (client side, tests, bench).

    ``result.fields`` is what a ``cpu_shm`` descriptor carries; ``result.close()``
    unlinks the segment.
    """
    numel = 1
    for s in shape:
        numel *= int(s)
    segment = SharedSegment(max(numel * dtype.itemsize, 1), name)
    tensor, fields = segment.tensor(shape, dtype)
    return SharedTensor(tensor, fields, segment)
