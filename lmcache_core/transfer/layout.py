"""KV-cache layouts: what a worker registered, and the byte layout of one stored chunk object.

A worker registers one tensor per layer (``register_kv_cache``). This module
recognises the per-layer formats LMCache 0.5.6 stores with block-level
semantics, partitions the layers into *kernel groups* the way LMCache does, and
fixes the shape of the object that holds one chunk (LMCache 0.5.6's layout):

    object = concat over kernel groups g, in group order, of a dense C-contiguous
             [kv_size_g, num_layers_g, tokens_g, hidden_g] block of the KV dtype
             (tokens_g = chunk_tokens, or the window for a sub-chunk sliding window)
    object[kv, l, t, h*HS + d] = layer_l[kv, block_of(t), slot_of(t), h, d]   (token-major)

Supported per-layer formats (``KVFormat``):

==================  ==========================  ==============================
format              shape                       selected by
==================  ==========================  ==============================
``TWO_NB_BS_NH_HS`` ``(2, NB, BS, NH, HS)``     rank 5, ``shape[0]==2``, NHD / BLNHC
``TWO_NB_NH_BS_HS`` ``(2, NB, NH, BS, HS)``     rank 5, ``shape[0]==2``, HND / BLHNC
``NB_TWO_BS_NH_HS`` ``(NB, 2, BS, NH, HS)``     rank 5, ``shape[1]==2``, NHD / BLNHC
``NB_TWO_NH_BS_HS`` ``(NB, 2, NH, BS, HS)``     rank 5, ``shape[1]==2``, HND / BLHNC
``MLA``             ``(NB, BS, HS)``            rank 3 (kv_size 1, one "head")
==================  ==========================  ==============================

Everything else (fused K/V rank-4 tensors, the DSA indexer plane ``(NB, BS, 132)
uint8``, fused page buffers, cross-layer tensors) is refused with
:class:`LayoutError` at registration, so a STORE never writes wrong bytes.

**The missing ``kv_layout`` hint.** The rank-5 shapes cannot tell NHD from HND
(``BS`` and ``NH`` are both small integers). LMCache 0.5.6 resolves a missing
hint to ``HND`` when the server runs on CPU torch and ``NHD`` otherwise, so an
NHD tensor registered without a hint is silently stored with the wrong byte
layout there. We keep LMCache's rule as the default (``default_kv_layout``,
``"HND"`` for a CPU server) so objects stay byte-identical with what the real
server would write for the same registration, but we cross-check it: when an
``engine_group_infos`` entry states ``tokens_per_block`` and the resolved layout
puts a different number in the block-size position, registration fails with a
message that names the missing hint, instead of storing garbage. The bench,
``cpu_client.py`` and vLLM always send the hint, so this only affects hand-made
clients.

Other decisions, all mirroring LMCache's ``KVLayerGroupsManager``: layers are
grouped by ``(format, kv_size, NH, HS, BS, dtype, engine group)`` in order of
their first layer; ``engine_group_infos`` (when given) must match those groups
one to one; layers that no engine group lists are excluded from the object;
all kernel groups share one object group (``--separate-object-groups`` is not
supported); a group whose sliding window is shorter than a chunk keeps only
each chunk's trailing ``sw/BS`` blocks in the object (``[kv, nl, sw, hidden]``),
unless ``full_sw_kv``; compressed blocks (``tokens_per_block`` != slots per
block) are refused.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import torch

__all__ = [
    "KV_LAYOUT_NAMES",
    "KVFormat",
    "KVLayout",
    "KernelGroupLayout",
    "LayoutError",
    "TransferError",
    "block_axis_of",
    "copy_dtype",
    "detect_format",
    "dtype_name",
    "parse_dtype",
    "resolve_kv_layout",
]

KV_LAYOUT_NAMES: tuple[str, ...] = ("NHD", "HND", "BLHNC", "BLNHC")
# Heads before block slots. BLHNC/BLNHC are blocks-outermost packings whose per-layer
# views have the same shapes as HND/NHD and differ only in strides, which we honour.
_HEADS_FIRST = frozenset({"HND", "BLHNC"})
# The DSA indexer plane: 128 fp8 values plus one fp32 scale per row.
_INDEXER_ROW_BYTES = 132


class TransferError(Exception):
    """Base class of every error raised by ``lmcache_core.transfer``."""


class LayoutError(TransferError, ValueError):
    """The registered tensors, hints or group infos do not form a supported KV layout."""


def parse_dtype(name: str) -> torch.dtype:
    """The torch dtype named ``name`` (``"float16"``; a ``"torch."`` prefix is accepted).

    Raises :class:`LayoutError` for anything that is not a torch dtype.
    """
    if not isinstance(name, str) or not name:
        raise LayoutError(f"dtype must be a non-empty string, got {name!r}")
    attr = name.removeprefix("torch.")
    # getattr on the torch module also finds functions and classes; only dtypes count.
    value = getattr(torch, attr, None) if attr.isidentifier() and not attr.startswith("_") else None
    if not isinstance(value, torch.dtype):
        raise LayoutError(f"unknown dtype {name!r}")
    return value


def dtype_name(dtype: torch.dtype) -> str:
    """The wire spelling of a dtype: ``str(dtype)`` without ``torch.`` (``"float16"``)."""
    return str(dtype).removeprefix("torch.")


_COPY_DTYPES = {1: torch.uint8, 2: torch.int16, 4: torch.int32, 8: torch.int64}


def copy_dtype(dtype: torch.dtype) -> torch.dtype:
    """The integer dtype of the same width, used to move ``dtype`` elements as raw bits.

    Copies must be byte-exact and must work for dtypes whose kernels CPU torch
    lacks (fp8), so gather/scatter reinterpret every element as an integer.
    """
    width = dtype.itemsize
    if dtype.is_complex or width not in _COPY_DTYPES:
        raise LayoutError(f"dtype {dtype_name(dtype)} ({width} bytes per element) is not a KV dtype")
    return _COPY_DTYPES[width]


class KVFormat(enum.Enum):
    """A per-layer tensor format with block-level semantics (see the module docstring)."""

    TWO_NB_BS_NH_HS = "2,NB,BS,NH,HS"
    TWO_NB_NH_BS_HS = "2,NB,NH,BS,HS"
    NB_TWO_BS_NH_HS = "NB,2,BS,NH,HS"
    NB_TWO_NH_BS_HS = "NB,2,NH,BS,HS"
    MLA = "NB,BS,HS"


# Per format: the permutation that turns the raw tensor into (kv, NB, BS, NH, HS).
_CANONICAL_PERM: dict[KVFormat, tuple[int, ...]] = {
    KVFormat.TWO_NB_BS_NH_HS: (0, 1, 2, 3, 4),
    KVFormat.TWO_NB_NH_BS_HS: (0, 1, 3, 2, 4),
    KVFormat.NB_TWO_BS_NH_HS: (1, 0, 2, 3, 4),
    KVFormat.NB_TWO_NH_BS_HS: (1, 0, 3, 2, 4),
}
# Axis of num_blocks in the raw tensor (what POST /cache/checksums index_selects on).
_BLOCK_AXIS: dict[KVFormat, int] = {
    KVFormat.TWO_NB_BS_NH_HS: 1,
    KVFormat.TWO_NB_NH_BS_HS: 1,
    KVFormat.NB_TWO_BS_NH_HS: 0,
    KVFormat.NB_TWO_NH_BS_HS: 0,
    KVFormat.MLA: 0,
}


def block_axis_of(fmt: KVFormat) -> int:
    """The axis of the raw layer tensor that indexes paged blocks."""
    return _BLOCK_AXIS[fmt]


def detect_format(tensor: torch.Tensor, kv_layout: str) -> KVFormat:
    """The format of one registered layer tensor under the resolved ``kv_layout``.

    Mirrors LMCache's vLLM detector for the formats we support; raises
    :class:`LayoutError` naming the shape for everything else.
    """
    shape = tuple(int(s) for s in tensor.shape)
    heads_first = kv_layout in _HEADS_FIRST
    if tensor.dim() == 5:
        if shape[0] == 2:  # K/V axis first; checked first, as LMCache does, when NB == 2 too
            return KVFormat.TWO_NB_NH_BS_HS if heads_first else KVFormat.TWO_NB_BS_NH_HS
        if shape[1] == 2:  # blocks first
            return KVFormat.NB_TWO_NH_BS_HS if heads_first else KVFormat.NB_TWO_BS_NH_HS
        raise LayoutError(f"rank-5 KV tensor {list(shape)} has no K/V axis of size 2 at position 0 or 1")
    if tensor.dim() == 3:
        if tensor.dtype == torch.uint8 and shape[-1] == _INDEXER_ROW_BYTES:
            raise LayoutError(f"KV tensor {list(shape)} uint8 looks like the DSA indexer plane, which is not supported")
        return KVFormat.MLA
    if tensor.dim() == 4:
        raise LayoutError(f"rank-4 KV tensor {list(shape)} (fused K/V) is not supported")
    raise LayoutError(f"KV tensor of rank {tensor.dim()} {list(shape)} is not a supported layout "
                      "(expected (2,NB,BS,NH,HS), (2,NB,NH,BS,HS), (NB,2,...) or MLA (NB,BS,HS))")


def canonical_view(tensor: torch.Tensor, fmt: KVFormat) -> torch.Tensor:
    """A view of a layer tensor as ``(kv, NB, BS, NH, HS)`` (no copy; strides follow the format)."""
    if fmt is KVFormat.MLA:
        return tensor.unsqueeze(0).unsqueeze(3)
    return tensor.permute(*_CANONICAL_PERM[fmt])


@dataclass(frozen=True)
class KernelGroupLayout:
    """One kernel group: layers of identical format, shape and dtype, and their part of the object."""

    index: int
    engine_group_id: int
    layer_indices: tuple[int, ...]
    fmt: KVFormat
    kv_size: int
    num_blocks: int
    tokens_per_block: int
    num_heads: int
    head_size: int
    dtype: torch.dtype
    blocks_per_chunk: int  # block ids per chunk in a STORE/RETRIEVE list
    chunk_tokens: int
    object_offset: int  # bytes from the start of the object to this group's block
    sw_size_tokens: int = -1  # sliding window in tokens, -1 = full attention
    window_blocks: int = 0  # trailing blocks of each chunk the object keeps (0: all of them)

    @property
    def kept_blocks(self) -> int:
        """Blocks of each chunk stored in the object: the last ``sw/BS`` for a sub-chunk window, else all."""
        return self.window_blocks or self.blocks_per_chunk

    @property
    def object_tokens(self) -> int:
        """Tokens of each chunk stored in the object (the chunk, or the sub-chunk window)."""
        return self.kept_blocks * self.tokens_per_block

    @property
    def num_layers(self) -> int:
        """Layers in this group."""
        return len(self.layer_indices)

    @property
    def hidden(self) -> int:
        """Elements per token per layer and K/V plane: ``num_heads * head_size``."""
        return self.num_heads * self.head_size

    @property
    def object_shape(self) -> tuple[int, int, int, int]:
        """``(kv_size, num_layers, object_tokens, hidden)``: this group's block of the object."""
        return (self.kv_size, self.num_layers, self.object_tokens, self.hidden)

    @property
    def object_nbytes(self) -> int:
        """Bytes of this group's block of the object."""
        kv, nl, t, h = self.object_shape
        return kv * nl * t * h * self.dtype.itemsize


@dataclass(frozen=True)
class KVLayout:
    """The resolved layout of one registration: kernel groups and the chunk object they make.

    The scalar properties (``kv_size``, ``num_layers`` …) describe the common
    single-group case; with several kernel groups they describe group 0, except
    ``num_layers`` (all grouped layers) and ``object_nbytes`` (the whole object).
    """

    kv_layout: str
    chunk_tokens: int
    groups: tuple[KernelGroupLayout, ...]
    layer_formats: tuple[KVFormat, ...]  # one per registered tensor, grouped or not

    @property
    def num_groups(self) -> int:
        """Kernel groups, i.e. how many ``block_ids`` lists a STORE/RETRIEVE must carry."""
        return len(self.groups)

    @property
    def kv_size(self) -> int:
        """2 for K and V planes, 1 for MLA."""
        return self.groups[0].kv_size

    @property
    def num_layers(self) -> int:
        """Layers stored in the object (all kernel groups)."""
        return sum(g.num_layers for g in self.groups)

    @property
    def tokens_per_block(self) -> int:
        """Tokens per paged block (group 0)."""
        return self.groups[0].tokens_per_block

    @property
    def num_heads(self) -> int:
        """KV heads per layer (group 0; 1 for MLA)."""
        return self.groups[0].num_heads

    @property
    def head_size(self) -> int:
        """Elements per head (group 0)."""
        return self.groups[0].head_size

    @property
    def hidden(self) -> int:
        """``num_heads * head_size`` (group 0)."""
        return self.groups[0].hidden

    @property
    def dtype(self) -> torch.dtype:
        """KV dtype (group 0)."""
        return self.groups[0].dtype

    @property
    def blocks_per_chunk(self) -> int:
        """Paged blocks per chunk (group 0)."""
        return self.groups[0].blocks_per_chunk

    @property
    def object_shape(self) -> tuple[int, int, int, int]:
        """``[kv_size, num_layers, chunk_tokens, hidden]``; only defined for one kernel group."""
        if len(self.groups) != 1:
            raise LayoutError("a multi-group object is a concatenation; use groups[g].object_shape")
        return self.groups[0].object_shape

    @property
    def object_nbytes(self) -> int:
        """Bytes of one stored chunk object (what L1 allocates and the FS file holds)."""
        return sum(g.object_nbytes for g in self.groups)

    @property
    def block_axes(self) -> tuple[int, ...]:
        """Per registered tensor: its block axis (for ``POST /cache/checksums``)."""
        return tuple(block_axis_of(f) for f in self.layer_formats)

    def describe(self) -> dict[str, Any]:
        """A JSON-able summary (for ``/status`` and logs)."""
        return {
            "kv_layout": self.kv_layout,
            "chunk_tokens": self.chunk_tokens,
            "object_nbytes": self.object_nbytes,
            "groups": [
                {
                    "engine_group_id": g.engine_group_id,
                    "layers": list(g.layer_indices),
                    "format": g.fmt.value,
                    "dtype": dtype_name(g.dtype),
                    "kv_size": g.kv_size,
                    "num_blocks": g.num_blocks,
                    "tokens_per_block": g.tokens_per_block,
                    "num_heads": g.num_heads,
                    "head_size": g.head_size,
                    "blocks_per_chunk": g.blocks_per_chunk,
                    "sw_size_tokens": g.sw_size_tokens,
                    "object_shape": list(g.object_shape),
                }
                for g in self.groups
            ],
        }


def _info_get(info: Any, name: str, default: Any) -> Any:
    """Read a field from a group info given as a mapping or as an object with attributes."""
    if isinstance(info, Mapping):
        return info.get(name, default)
    return getattr(info, name, default)


def _dims(tensor: torch.Tensor, fmt: KVFormat) -> tuple[int, int, int, int, int]:
    """``(kv_size, NB, BS, NH, HS)`` of a layer tensor in format ``fmt``."""
    kv, nb, bs, nh, hs = (int(s) for s in canonical_view(tensor, fmt).shape)
    return kv, nb, bs, nh, hs


def _engine_group_of_layers(infos: Sequence[Any], num_layers: int) -> list[int | None]:
    """Per registered tensor: the engine group id listing it, or None (excluded)."""
    owner: list[int | None] = [None] * num_layers
    for info in infos:
        gid = _info_get(info, "engine_group_id", None)
        if not isinstance(gid, int) or isinstance(gid, bool):
            raise LayoutError(f"engine group info without an integer engine_group_id: {info!r}")
        for idx in _info_get(info, "layer_indices", ()) or ():
            if not isinstance(idx, int) or not 0 <= idx < num_layers:
                raise LayoutError(f"engine group {gid}: layer index {idx!r} outside [0, {num_layers})")
            if owner[idx] is not None and owner[idx] != gid:
                raise LayoutError(f"layer {idx} is listed by engine groups {owner[idx]} and {gid}")
            owner[idx] = gid
    return owner


def resolve_kv_layout(
    layers: Sequence[torch.Tensor],
    layout_hints: Mapping[str, Any] | None,
    engine_group_infos: Sequence[Any] | None,
    chunk_size: int,
    *,
    default_kv_layout: str = "HND",
    full_sw_kv: bool = False,
) -> KVLayout:
    """Work out the :class:`KVLayout` of a registration.

    ``layers``: the mapped per-layer tensors, in registration order.
    ``layout_hints``: the wire map (``{}`` when none); only ``kv_layout`` is used.
    ``engine_group_infos``: the wire list of group maps (or objects with the same
    attributes); empty means "one group holding every layer".
    ``chunk_size``: tokens per chunk (the server's ``--chunk-size``).
    ``default_kv_layout``: used when the hint is absent (see the module docstring).
    ``full_sw_kv``: store every block of sub-chunk sliding-window groups (LMCache's
    ``full_sw_kv``) instead of only each chunk's trailing window.

    Raises :class:`LayoutError` with a message naming the problem.
    """
    if chunk_size <= 0:
        raise LayoutError(f"chunk_size must be positive, got {chunk_size}")
    if not layers:
        raise LayoutError("no KV layer tensors were registered")
    hints = layout_hints or {}
    hinted = hints.get("kv_layout")
    kv_layout = default_kv_layout if hinted is None else hinted
    if kv_layout not in KV_LAYOUT_NAMES:
        raise LayoutError(f"kv_layout {kv_layout!r} is not one of {', '.join(KV_LAYOUT_NAMES)}")

    formats = tuple(detect_format(t, kv_layout) for t in layers)
    infos = list(engine_group_infos or ())
    owners: list[int | None] = _engine_group_of_layers(infos, len(layers)) if infos else [0] * len(layers)

    # Group by identity in order of first layer, as LMCache's group_layers_by_identity does.
    buckets: dict[tuple[Any, ...], list[int]] = {}
    for idx, (tensor, fmt) in enumerate(zip(layers, formats, strict=True)):
        if owners[idx] is None:
            continue  # not listed by any engine group: a KV-sharing layer, not stored
        kv, _nb, bs, nh, hs = _dims(tensor, fmt)
        if min(kv, bs, nh, hs) <= 0:
            raise LayoutError(f"layer {idx}: KV tensor {list(tensor.shape)} has an empty dimension")
        copy_dtype(tensor.dtype)  # refuses dtypes we cannot move as raw bits
        identity = (fmt, kv, nh, hs, bs, tensor.dtype, owners[idx])
        buckets.setdefault(identity, []).append(idx)
    if not buckets:
        raise LayoutError("no registered layer belongs to any engine group")
    ordered = sorted(buckets.items(), key=lambda item: item[1][0])
    if infos and len(infos) != len(ordered):
        raise LayoutError(f"{len(infos)} engine group infos for {len(ordered)} kernel groups "
                          "(layers of one engine group must share format, shape and dtype)")

    groups: list[KernelGroupLayout] = []
    offset = 0
    for gi, ((fmt, kv, nh, hs, bs, dtype, engine_gid), indices) in enumerate(ordered):
        nb = _dims(layers[indices[0]], fmt)[1]
        for idx in indices[1:]:
            if _dims(layers[idx], fmt)[1] != nb:
                raise LayoutError(f"group {gi}: layers {indices[0]} and {idx} have different block counts")
        info = infos[gi] if infos else None
        tokens_per_block = bs
        sw = -1
        if info is not None:
            listed = tuple(_info_get(info, "layer_indices", ()) or ())
            if listed != tuple(indices):
                raise LayoutError(f"group {gi}: engine group info lists layers {list(listed)} "
                                  f"but the kernel group holds layers {indices}")
            stated = int(_info_get(info, "tokens_per_block", 0) or 0)
            if stated > 0 and stated != bs:
                hint_note = (" — the kv_layout hint is missing, so the server assumed "
                             f"{kv_layout}; send layout_hints {{'kv_layout': ...}}") if hinted is None else ""
                raise LayoutError(f"group {gi}: engine group says {stated} tokens per block but the "
                                  f"{kv_layout} reading of {list(layers[indices[0]].shape)} has {bs} slots per "
                                  f"block (compressed blocks are not supported){hint_note}")
            sw = int(_info_get(info, "sw_size_tokens", -1))
        if chunk_size % tokens_per_block:
            raise LayoutError(f"group {gi}: chunk size {chunk_size} is not a multiple of "
                              f"{tokens_per_block} tokens per block")
        window_blocks = 0
        if 0 < sw < chunk_size:
            # A sub-chunk sliding window: only each chunk's trailing window is attended to,
            # so LMCache keeps (and transfers) just those blocks, unless full_sw_kv.
            if sw % tokens_per_block:
                raise LayoutError(f"group {gi}: sub-chunk sliding window of {sw} tokens is not a multiple "
                                  f"of {tokens_per_block} tokens per block")
            if not full_sw_kv:
                window_blocks = sw // tokens_per_block
        group = KernelGroupLayout(
            index=gi, engine_group_id=int(engine_gid or 0), layer_indices=tuple(indices), fmt=fmt,
            kv_size=kv, num_blocks=nb, tokens_per_block=tokens_per_block, num_heads=nh, head_size=hs,
            dtype=dtype, blocks_per_chunk=chunk_size // tokens_per_block, chunk_tokens=chunk_size,
            object_offset=offset, sw_size_tokens=sw, window_blocks=window_blocks,
        )
        # Each group's block is viewed as its dtype inside the object, so it must start aligned.
        if offset % dtype.itemsize:
            raise LayoutError(f"group {gi}: object offset {offset} is not aligned to {dtype_name(dtype)}")
        offset += group.object_nbytes
        groups.append(group)
    return KVLayout(kv_layout=kv_layout, chunk_tokens=chunk_size, groups=tuple(groups), layer_formats=formats)
