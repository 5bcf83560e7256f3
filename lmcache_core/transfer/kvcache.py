"""A registered KV cache and the copies between its paged blocks and chunk objects.

:class:`RegisteredKVCache` holds one worker's layer tensors (mapped from its
shared memory, or rebuilt from CUDA IPC handles) and their :class:`KVLayout`.
STORE gathers blocks into chunk objects (:meth:`~RegisteredKVCache.gather_chunks`),
RETRIEVE scatters objects back into blocks (:meth:`~RegisteredKVCache.scatter_chunks`).
The object bytes are LMCache 0.5.6's (its chunk object layout), so L1 objects and
FS L2 files are interchangeable with the real server's.

Block ids (§5.3, §6.2): one list per kernel group; entry ``j`` of a list is the
block holding tokens ``start + j*BS …`` of the request range, so chunk ``i`` of
the range uses entries ``[i*bpc, (i+1)*bpc)``. A list shorter than
``num_chunks*bpc`` fails the whole request (:class:`ShortBlockIdsError`), and a
chunk whose ids are all the null block is not stored.

``skip_first_n_tokens`` (RETRIEVE): LMCache converts the token count to whole
blocks with a floor (``calculate_num_blocks``), so the first
``skip // tokens_per_block`` blocks of the range are left untouched and a block
that only partly lies below ``skip`` is still written. We do the same.

Speed: every copy is a torch kernel over whole blocks that releases the GIL; no
Python loop runs per token or per block. Per chunk and kernel group the gather
is either one ``index_select`` over a stacked view of all layers (when the
layers are equally spaced views of one storage) or one ``index_select`` per
layer and K/V plane, each from a plane ``(NB, BS, NH, HS)`` into a contiguous
slice of the object (torch's fastest path, a memcpy per block). Elements are
moved as same-width integers, so the copy is bit-exact for every dtype (fp8
included).
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from lmcache_core.transfer.cuda_ipc import cuda_available
from lmcache_core.transfer.layout import (
    KernelGroupLayout,
    KVLayout,
    TransferError,
    canonical_view,
    copy_dtype,
    resolve_kv_layout,
)
from lmcache_core.transfer.shm import MappedTensor, ShmSegmentCache

__all__ = [
    "BlockIdError",
    "BlockIdRangeError",
    "GroupCountError",
    "KVCacheClosedError",
    "ObjectBufferError",
    "RegisteredKVCache",
    "ShortBlockIdsError",
]

log = logging.getLogger(__name__)


class BlockIdError(TransferError, ValueError):
    """The block ids of a STORE/RETRIEVE do not fit the registered KV cache."""


class GroupCountError(BlockIdError):
    """``block_ids`` does not hold exactly one list per kernel group."""


class ShortBlockIdsError(BlockIdError):
    """A group's list has fewer than ``num_chunks * blocks_per_chunk`` ids."""


class BlockIdRangeError(BlockIdError):
    """A block id is negative or not below the group's number of blocks."""


class ObjectBufferError(TransferError, ValueError):
    """A chunk object buffer is too small, not contiguous, misaligned or on the wrong device."""


class KVCacheClosedError(TransferError):
    """The registration was released (``unregister_kv_cache``)."""


@dataclass(frozen=True)
class BlockPlan:
    """A transfer's block ids, validated once: per group the ``num_chunks * bpc`` ids as int64,
    and per chunk whether all its ids are the null block (:meth:`RegisteredKVCache.plan_blocks`)."""

    num_chunks: int
    ids: list[torch.Tensor]
    null: list[bool]


class _GroupPlan:
    """Per kernel group: the source planes the copies read from and write to."""

    __slots__ = ("layout", "planes", "stacked", "view_shape")

    def __init__(self, layout: KernelGroupLayout, layers: Sequence[torch.Tensor]) -> None:
        self.layout = layout
        cdt = copy_dtype(layout.dtype)
        canon = [canonical_view(layers[i], layout.fmt).view(cdt) for i in layout.layer_indices]
        # (kv, li, plane (NB, BS, NH, HS)) for the per-plane path.
        self.planes: list[tuple[int, int, torch.Tensor]] = [
            (kv, li, c[kv]) for li, c in enumerate(canon) for kv in range(layout.kv_size)
        ]
        self.stacked: torch.Tensor | None = _stack_layers(canon)
        self.view_shape = (layout.kv_size, layout.num_layers, layout.kept_blocks, layout.tokens_per_block,
                           layout.num_heads, layout.head_size)


def _stack_layers(canon: list[torch.Tensor]) -> torch.Tensor | None:
    """One ``(num_layers, kv, NB, BS, NH, HS)`` view when the layers are equally spaced in one storage."""
    if len(canon) < 2:
        return None
    first = canon[0]
    ptr = first.untyped_storage().data_ptr()
    for c in canon[1:]:
        if c.untyped_storage().data_ptr() != ptr or c.shape != first.shape or c.stride() != first.stride():
            return None
    offsets = [c.storage_offset() for c in canon]
    step = offsets[1] - offsets[0]
    if step <= 0 or any(offsets[k] - offsets[0] != k * step for k in range(len(offsets))):
        return None
    return torch.as_strided(first, (len(canon), *first.shape), (step, *first.stride()), offsets[0])


def _planes_of(view: torch.Tensor) -> list[torch.Tensor]:
    """The ``(kv, layer)`` planes of a ``(kv, nl, …)`` object view, in the order of ``_GroupPlan.planes``."""
    return [plane for per_kv in view.unbind(1) for plane in per_kv.unbind(0)]


class RegisteredKVCache:
    """One worker's registered KV cache: layer tensors, layout, and block ↔ object copies.

    Thread-safe for concurrent copies (they only read shared state); :meth:`close`
    may race with a copy in flight, which then finishes on memory that stays
    mapped until it is done.
    """

    def __init__(
        self,
        instance_id: int,
        model_name: str,
        world_size: int,
        layers: Sequence[torch.Tensor],
        layout: KVLayout,
        *,
        mappings: Sequence[MappedTensor] = (),
        null_block_id: int = 0,
        stack_layers: bool = True,
    ) -> None:
        """Wrap ``layers`` (raw registered tensors, in registration order) with their ``layout``.

        ``mappings`` are released by :meth:`close`. ``stack_layers=False`` forces the
        per-plane copy path (tests and the benchmark compare both).
        """
        self.instance_id = instance_id
        self.model_name = model_name
        self.world_size = world_size
        self.layout = layout
        self.null_block_id = null_block_id
        self._layers: tuple[torch.Tensor, ...] = tuple(layers)
        self._mappings = list(mappings)
        self._lock = threading.Lock()
        self._closed = False
        devices = {t.device for t in self._layers}
        if len(devices) != 1:
            raise TransferError(f"KV layers live on several devices: {sorted(map(str, devices))}")
        self.device: torch.device = next(iter(devices))
        self._plans = [_GroupPlan(g, self._layers) for g in layout.groups]
        if not stack_layers:
            for plan in self._plans:
                plan.stacked = None

    @classmethod
    def from_cpu_shm(
        cls,
        segments: ShmSegmentCache,
        instance_id: int,
        model_name: str,
        world_size: int,
        descriptors: Sequence[Any],
        layout_hints: Mapping[str, Any] | None,
        engine_group_infos: Sequence[Any] | None,
        chunk_size: int,
        *,
        default_kv_layout: str | None = None,
        null_block_id: int = 0,
    ) -> RegisteredKVCache:
        """Map every ``cpu_shm`` descriptor and resolve the layout.

        ``descriptors``: one per layer, as dicts or Structs, flat or with the wire's
        ``metadata`` map (:func:`~lmcache_core.transfer.shm.descriptor_fields`).
        Nothing stays mapped if any descriptor or the layout is refused; the
        :class:`~lmcache_core.transfer.shm.ShmError` or
        :class:`~lmcache_core.transfer.layout.LayoutError` propagates.
        """
        mapped: list[MappedTensor] = []
        try:
            for desc in descriptors:
                mapped.append(segments.map_descriptor(desc))
            layers = [m.tensor for m in mapped]
            return cls.from_tensors(instance_id, model_name, world_size, layers,  # type: ignore[arg-type]
                                    layout_hints, engine_group_infos, chunk_size, mappings=mapped,
                                    default_kv_layout=default_kv_layout, null_block_id=null_block_id)
        except BaseException:
            layers = []  # our references go first, so the segments can unmap at once
            for m in mapped:
                m.release()
            raise

    @classmethod
    def from_tensors(
        cls,
        instance_id: int,
        model_name: str,
        world_size: int,
        layers: Sequence[torch.Tensor],
        layout_hints: Mapping[str, Any] | None,
        engine_group_infos: Sequence[Any] | None,
        chunk_size: int,
        *,
        mappings: Sequence[MappedTensor] = (),
        default_kv_layout: str | None = None,
        null_block_id: int = 0,
    ) -> RegisteredKVCache:
        """Resolve the layout of already-built layer tensors (e.g. from
        :func:`~lmcache_core.transfer.cuda_ipc.rebuild_cuda_tensor`) and wrap them.

        ``default_kv_layout=None`` applies LMCache's rule for a missing hint:
        ``HND`` when this server's torch has no CUDA, ``NHD`` when it has.
        """
        if default_kv_layout is None:
            default_kv_layout = "NHD" if cuda_available() else "HND"
        layout = resolve_kv_layout(layers, layout_hints, engine_group_infos, chunk_size,
                                   default_kv_layout=default_kv_layout)
        return cls(instance_id, model_name, world_size, layers, layout, mappings=mappings,
                   null_block_id=null_block_id)

    # -- introspection ----------------------------------------------------------------------

    @property
    def layers(self) -> tuple[torch.Tensor, ...]:
        """The registered tensors, in registration order (raw shapes, as the client sent them)."""
        self._check_open()
        return self._layers

    @property
    def object_nbytes(self) -> int:
        """Bytes of one chunk object."""
        return self.layout.object_nbytes

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` has run."""
        return self._closed

    def stacked_groups(self) -> list[bool]:
        """Per kernel group: whether copies use the single stacked-layers view."""
        return [p.stacked is not None for p in self._plans]

    # -- block ids ------------------------------------------------------------------------

    def validate_block_ids(self, block_ids: Sequence[Sequence[int]], num_chunks: int) -> list[torch.Tensor]:
        """Check ``block_ids`` for ``num_chunks`` chunks; return per group the ids used, as int64.

        Raises :class:`GroupCountError`, :class:`ShortBlockIdsError` or
        :class:`BlockIdRangeError`; ids past ``num_chunks * bpc`` are ignored, as LMCache does.
        """
        groups = self.layout.groups
        if isinstance(block_ids, (str, bytes)) or len(block_ids) != len(groups):
            raise GroupCountError(f"expected {len(groups)} block id list(s), one per KV group, "
                                  f"got {len(block_ids) if not isinstance(block_ids, (str, bytes)) else block_ids!r}")
        out: list[torch.Tensor] = []
        for g, ids in zip(groups, block_ids, strict=True):
            need = num_chunks * g.blocks_per_chunk
            if len(ids) < need:
                raise ShortBlockIdsError(f"group {g.index}: {len(ids)} block ids for {num_chunks} chunk(s) "
                                         f"of {g.blocks_per_chunk} blocks (need {need})")
            try:
                t = torch.tensor(list(ids[:need]), dtype=torch.int64)
            except (TypeError, ValueError, OverflowError, RuntimeError):
                raise BlockIdError(f"group {g.index}: block ids must be integers") from None
            if need and (int(t.min()) < 0 or int(t.max()) >= g.num_blocks):
                bad = [int(b) for b in t.tolist() if not 0 <= b < g.num_blocks][:5]
                raise BlockIdRangeError(f"group {g.index}: block ids {bad} outside [0, {g.num_blocks})")
            out.append(t)
        return out

    def null_chunk_mask(self, block_ids: Sequence[Sequence[int]], num_chunks: int) -> list[bool]:
        """Per chunk: whether every block id of every group is the null block (such chunks are not stored)."""
        return self.plan_blocks(block_ids, num_chunks).null

    def plan_blocks(self, block_ids: Sequence[Sequence[int]], num_chunks: int) -> BlockPlan:
        """Validate ``block_ids`` for ``num_chunks`` chunks once, with the null-chunk mask (see :class:`BlockPlan`)."""
        ids = self.validate_block_ids(block_ids, num_chunks)
        mask: torch.Tensor | None = None
        for g, t in zip(self.layout.groups, ids, strict=True):
            is_null = (t.view(num_chunks, g.blocks_per_chunk) == self.null_block_id).all(dim=1)
            mask = is_null if mask is None else mask & is_null
        null = mask.tolist() if mask is not None else [True] * num_chunks
        return BlockPlan(num_chunks, ids, null)

    # -- copies ---------------------------------------------------------------------------

    def gather(self, block_ids: Sequence[Sequence[int]], out: torch.Tensor) -> bool:
        """Copy one chunk (``block_ids``: per group, the chunk's ``bpc`` ids) into ``out``.

        Returns False (and writes nothing) for an all-null-block chunk.
        """
        return self.gather_chunks(block_ids, [out])[0]

    def scatter(self, obj: torch.Tensor, block_ids: Sequence[Sequence[int]], skip_first_n_tokens: int = 0) -> None:
        """Copy one chunk object into the chunk's blocks, leaving blocks below ``skip_first_n_tokens`` alone."""
        self.scatter_chunks(block_ids, [obj], skip_first_n_tokens)

    def gather_chunks(self, block_ids: Sequence[Sequence[int]], outs: Sequence[torch.Tensor | None]) -> list[bool]:
        """STORE direction: chunk ``i`` of the range → ``outs[i]`` (a uint8 L1 view of ``object_nbytes``).

        ``block_ids`` are the request's per-group lists (entry 0 = the range start);
        ``len(outs)`` is the number of chunks. ``None`` entries (already stored)
        and all-null-block chunks are skipped. Returns per chunk whether it was
        written. Validates everything before copying anything.
        """
        self._check_open()
        return self.gather_planned(self.plan_blocks(block_ids, len(outs)), outs)

    def gather_planned(self, plan: BlockPlan, outs: Sequence[torch.Tensor | None]) -> list[bool]:
        """:meth:`gather_chunks` with block ids already validated by :meth:`plan_blocks`."""
        plans = self._open_plans()
        n = plan.num_chunks
        if len(outs) != n:
            raise ObjectBufferError(f"{len(outs)} object buffers for a plan of {n} chunk(s)")
        todo = [i for i in range(n) if outs[i] is not None and not plan.null[i]]
        views = {i: self._object_views(plans, outs[i]) for i in todo}  # type: ignore[arg-type]
        if todo:
            if self.device.type == "cpu":
                self._gather_cpu(plans, plan.ids, todo, views)
            else:
                self._gather_device(plans, plan.ids, todo, outs)  # type: ignore[arg-type]
        written = [False] * n
        for i in todo:
            written[i] = True
        return written

    def scatter_chunks(self, block_ids: Sequence[Sequence[int]], objs: Sequence[torch.Tensor | None],
                       skip_first_n_tokens: int = 0) -> None:
        """RETRIEVE direction: ``objs[i]`` → the blocks of chunk ``i`` of the range.

        Blocks ``j < skip_first_n_tokens // tokens_per_block`` (counted from the
        range start) are not written. ``None`` entries are skipped. Validates
        everything before copying anything.
        """
        self._check_open()
        self.scatter_planned(self.plan_blocks(block_ids, len(objs)), objs, skip_first_n_tokens)

    def scatter_planned(self, plan: BlockPlan, objs: Sequence[torch.Tensor | None],
                        skip_first_n_tokens: int = 0) -> None:
        """:meth:`scatter_chunks` with block ids already validated by :meth:`plan_blocks`."""
        plans = self._open_plans()
        if skip_first_n_tokens < 0:
            raise BlockIdError(f"skip_first_n_tokens must be non-negative, got {skip_first_n_tokens}")
        n = plan.num_chunks
        if len(objs) != n:
            raise ObjectBufferError(f"{len(objs)} objects for a plan of {n} chunk(s)")
        todo = [i for i in range(n) if objs[i] is not None]
        views = {i: self._object_views(plans, objs[i]) for i in todo}  # type: ignore[arg-type]
        if not todo:
            return
        if self.device.type == "cpu":
            self._scatter_cpu(plans, plan.ids, todo, views, skip_first_n_tokens)
        else:
            self._scatter_device(plans, plan.ids, todo, objs, skip_first_n_tokens)  # type: ignore[arg-type]

    def close(self) -> None:
        """Release the mappings (idempotent). Later copies raise :class:`KVCacheClosedError`."""
        with self._lock:
            if self._closed:
                return
            self._closed = True
            mappings, self._mappings = self._mappings, []
            # Drop our own views first so each segment can be unmapped right away.
            self._plans = []
            self._layers = ()
        for m in mappings:
            m.release()

    # -- internals ------------------------------------------------------------------------

    def _check_open(self) -> None:
        if self._closed:
            raise KVCacheClosedError(f"KV cache of instance {self.instance_id} is unregistered")

    def _open_plans(self) -> list[_GroupPlan]:
        """The copy plans, captured once per call: a concurrent :meth:`close` cannot empty them mid-copy,
        and the captured tensors keep the memory mapped until the copy ends."""
        plans = self._plans
        if self._closed or not plans:
            raise KVCacheClosedError(f"KV cache of instance {self.instance_id} is unregistered")
        for mapping in self._mappings:  # a segment the client shrank fails the copy instead of SIGBUS
            mapping.check()
        return plans

    def _object_views(self, plans: list[_GroupPlan], buf: torch.Tensor,
                      device: torch.device | None = None) -> list[torch.Tensor]:
        """Per kernel group, a ``(kv, nl, bpc, BS, NH, HS)`` view of the group's part of ``buf``."""
        want = device or torch.device("cpu")
        if buf.device.type != want.type or (want.index is not None and buf.device.index != want.index):
            raise ObjectBufferError(f"chunk object buffer is on {buf.device}, expected {want}")
        if not buf.is_contiguous():
            raise ObjectBufferError("chunk object buffer must be contiguous")
        flat = buf.reshape(-1)
        if flat.dtype != torch.uint8:
            flat = flat.view(torch.uint8)
        if flat.numel() < self.layout.object_nbytes:
            raise ObjectBufferError(f"chunk object buffer has {flat.numel()} bytes, "
                                    f"the layout needs {self.layout.object_nbytes}")
        views = []
        for plan in plans:
            g = plan.layout
            part = flat[g.object_offset:g.object_offset + g.object_nbytes]
            try:
                views.append(part.view(copy_dtype(g.dtype)).view(plan.view_shape))
            except RuntimeError as exc:
                raise ObjectBufferError(f"chunk object buffer cannot be viewed as {g.dtype}: {exc}") from None
        return views

    @staticmethod
    def _chunk_ids(ids: torch.Tensor, g: KernelGroupLayout, i: int) -> torch.Tensor:
        """The ids of chunk ``i`` that its object holds (the trailing window for a sub-chunk window)."""
        return ids[(i + 1) * g.blocks_per_chunk - g.kept_blocks:(i + 1) * g.blocks_per_chunk]

    @staticmethod
    def _first_written(g: KernelGroupLayout, skip_tokens: int, i: int) -> int:
        """Index, within chunk ``i``'s kept blocks, of the first block RETRIEVE may write.

        ``skip // BS`` blocks of the range are skipped (floor, as LMCache's
        ``calculate_num_blocks``); a sub-chunk window drops its leading blocks
        from that count (LMCache's ``recalculate_blocks_to_skip``). Returns
        ``kept_blocks`` when nothing of the chunk is written.
        """
        in_chunk = skip_tokens // g.tokens_per_block - i * g.blocks_per_chunk
        if in_chunk >= g.blocks_per_chunk:
            return g.kept_blocks
        return max(0, in_chunk - (g.blocks_per_chunk - g.kept_blocks))

    @staticmethod
    def _split_chunks(ids: torch.Tensor, g: KernelGroupLayout) -> list[torch.Tensor]:
        """Per chunk, the ids its object holds (views of ``ids``)."""
        chunks = ids.split(g.blocks_per_chunk)
        if g.kept_blocks == g.blocks_per_chunk:
            return list(chunks)
        return [c[g.blocks_per_chunk - g.kept_blocks:] for c in chunks]

    @staticmethod
    def _gather_cpu(plans: list[_GroupPlan], ids: list[torch.Tensor], todo: list[int],
                    views: dict[int, list[torch.Tensor]]) -> None:
        for gi, plan in enumerate(plans):
            g = plan.layout
            chunk_ids = RegisteredKVCache._split_chunks(ids[gi], g)
            if plan.stacked is not None:
                for i in todo:
                    # (nl, kv, bpc, …) gathered straight into the object's (kv, nl, bpc, …) order.
                    torch.index_select(plan.stacked, 2, chunk_ids[i], out=views[i][gi].transpose(0, 1))
                continue
            # Destination planes of each chunk in (kv, layer) order, made by two C++ unbinds
            # rather than kv*nl Python indexings: the per-copy overhead is what this loop costs.
            dests = [_planes_of(views[i][gi]) for i in todo]
            index_select = torch.index_select
            # Plane-outer order: each source plane is read in one sweep across the chunks.
            for p, (_kv, _li, plane) in enumerate(plan.planes):
                for i, dest in zip(todo, dests, strict=True):
                    index_select(plane, 0, chunk_ids[i], out=dest[p])

    @staticmethod
    def _scatter_cpu(plans: list[_GroupPlan], ids: list[torch.Tensor], todo: list[int],
                     views: dict[int, list[torch.Tensor]], skip_tokens: int) -> None:
        for gi, plan in enumerate(plans):
            g = plan.layout
            chunk_ids = RegisteredKVCache._split_chunks(ids[gi], g)
            work = []  # (ids of the blocks to write, the matching part of the object)
            for i in todo:
                first = RegisteredKVCache._first_written(g, skip_tokens, i)
                if first < g.kept_blocks:
                    src = views[i][gi] if first == 0 else views[i][gi][:, :, first:]
                    work.append((chunk_ids[i][first:], src))
            if plan.stacked is not None:
                for cids, src in work:
                    plan.stacked.index_copy_(2, cids, src.transpose(0, 1))
                continue
            srcs = [((cids,), _planes_of(src)) for cids, src in work]
            # index_put_ along the block axis: ~10% faster than index_copy_ for whole-block rows on CPU.
            for p, (_kv, _li, plane) in enumerate(plan.planes):
                put = plane.index_put_
                for index, planes in srcs:
                    put(index, planes[p])

    def _gather_device(self, plans: list[_GroupPlan], ids: list[torch.Tensor], todo: list[int],
                       outs: Sequence[torch.Tensor]) -> None:
        """Accelerator layers: gather each chunk into one device staging object, then copy it to host.

        One staging buffer is enough: every step runs in order on the current stream.
        """
        dev = self.device
        dev_ids = [t.to(dev) for t in ids]
        stage = torch.empty(self.layout.object_nbytes, dtype=torch.uint8, device=dev)
        stage_views = self._object_views(plans, stage, dev)
        for i in todo:
            for gi, plan in enumerate(plans):
                cids = self._chunk_ids(dev_ids[gi], plan.layout, i)
                for kv, li, plane in plan.planes:
                    torch.index_select(plane, 0, cids, out=stage_views[gi][kv, li])
            outs[i].reshape(-1).view(torch.uint8)[: stage.numel()].copy_(stage, non_blocking=True)
        torch.cuda.current_stream(dev).synchronize()

    def _scatter_device(self, plans: list[_GroupPlan], ids: list[torch.Tensor], todo: list[int],
                        objs: Sequence[torch.Tensor], skip_tokens: int) -> None:
        """Accelerator layers: host object → device staging object → blocks, in stream order."""
        dev = self.device
        dev_ids = [t.to(dev) for t in ids]
        stage = torch.empty(self.layout.object_nbytes, dtype=torch.uint8, device=dev)
        stage_views = self._object_views(plans, stage, dev)
        for i in todo:
            stage.copy_(objs[i].reshape(-1).view(torch.uint8)[: stage.numel()], non_blocking=True)
            for gi, plan in enumerate(plans):
                g = plan.layout
                first = self._first_written(g, skip_tokens, i)
                if first >= g.kept_blocks:
                    continue
                cids = self._chunk_ids(dev_ids[gi], g, i)[first:]
                for kv, li, plane in plan.planes:
                    plane.index_copy_(0, cids, stage_views[gi][kv, li, first:])
        torch.cuda.current_stream(dev).synchronize()
