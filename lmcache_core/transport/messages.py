"""Typed payloads of the LMCache 0.5.6 ZMQ protocol (msgspec Structs, no torch import).

Every type here decodes from, and encodes to, exactly the msgpack bytes the
real ``lmcache==0.5.6`` client produces (``docs/datapath.md``):

* dataclass-like payloads (:class:`IPCCacheServerKey`, :class:`BlockAllocationRecord`,
  ...) are msgpack maps holding **all** fields, in declaration order. Maps are
  read by key name, unknown keys are ignored and missing keys take their
  defaults, as the real decoder does.
* device tensor descriptors travel as msgpack **ext type 1** whose data is itself
  a msgpack map tagged by its first key ``"type"`` (§3). They decode to a
  :class:`DeviceIPCWrapper` holding one of :data:`IPCDescriptor`; the decoders and
  encoders that do that live in :mod:`lmcache_core.transport.wire`.
* one ``*Args`` Struct per operation names and types that op's payload frames,
  in wire order (§1.2: every parameter is its own frame, defaults included).

Constraints that only a misbehaving client can break (a ``cache_salt`` with a
path separator, a negative ``start``, a descriptor whose view overruns its
segment) are checked while decoding, so such a frame is a ``MalformedRequest``
before any handler runs. Semantic checks that a well-behaved client *can* fail
(``num_kv_readers == 0`` on LOOKUP, ``model_name`` containing ``@``, token ids
outside ``[0, 2**32)``) are left to the handlers: token values are validated by
:func:`lmcache_core.hashing.pack_tokens` on the way into the hasher, so checking
them here too would only add a second pass over a 128k-element list.
"""

from __future__ import annotations

import enum
from collections.abc import Mapping
from types import MappingProxyType
from typing import Annotated, Any, Literal, TypedDict

import msgspec

__all__ = [
    "DTYPE_ITEMSIZE",
    "Args",
    "BlockAllocationRecord",
    "CBMatchResult",
    "CBProtocolHandshakeArgs",
    "CBRegisterRopeArgs",
    "CBReorderPlanArgs",
    "CBRetrievePreComputedArgs",
    "CBUnifiedLookupResult",
    "CacheSalt",
    "ClearArgs",
    "CommitStoreArgs",
    "CpuShmIPCData",
    "CudaIPCData",
    "DeviceIPCWrapper",
    "EngineGroupInfo",
    "EngineType",
    "IPCCacheServerKey",
    "IPCDescriptor",
    "InstanceArgs",
    "KVEventBatch",
    "KVEventRecord",
    "KeyInstanceArgs",
    "KeyTpArgs",
    "LayoutHints",
    "MemoryLayoutDesc",
    "NoArgs",
    "NonNegative",
    "P2PLookupAndLockArgs",
    "P2PUnlockObjectsArgs",
    "PingArgs",
    "PrepareRetrieveResponse",
    "PrepareStoreResponse",
    "RawCudaIPCData",
    "RegisterEngineDrivenArgs",
    "RegisterEngineDrivenContextPayload",
    "RegisterEngineDrivenContextResponse",
    "RegisterKVCacheArgs",
    "ReportBlockAllocationArgs",
    "RequestIdArgs",
    "RetrieveArgs",
    "ServerModuleCallArgs",
    "ServerModuleCallRequest",
    "ServerModuleCallResponse",
    "ShmName",
    "StoreArgs",
    "SubscribeKVEventsArgs",
    "TaskIdArgs",
    "TensorMetadata",
    "TransferChannelAddress",
    "VmmCudaIPCData",
    "WaitPrefetchStatusArgs",
    "WireObjectKey",
]

NonNegative = Annotated[int, msgspec.Meta(ge=0)]

# Salt rule of 0.5.6's IPCCacheServerKey (its __post_init__ runs while the real
# server decodes, so a bad salt never reaches a handler there either).
CacheSalt = Annotated[str, msgspec.Meta(max_length=128, pattern=r"^[^@/\\\x00]*$")]

# A POSIX shm name as shm_open(3) takes it: one optional leading "/", then one
# path component. The real client sends "/lmcache_kv_<pid>_<n>"; the pattern
# keeps a hostile name from ever naming a file outside /dev/shm.
ShmName = Annotated[str, msgspec.Meta(pattern=r"^/?(?!\.\.?$)[^/\x00]{1,255}$")]

# torch 2.13's dtype names (``str(dtype)`` without ``torch.``) and their item
# sizes. Static so that decoding never imports torch; the 0.5.6 server checks
# the same names against its own torch (``ipc_wire.py`` DTYPES).
DTYPE_ITEMSIZE: Mapping[str, int] = MappingProxyType(
    {
        "bfloat16": 2, "bits16": 2, "bits1x8": 1, "bits2x4": 1, "bits4x2": 1, "bits8": 1,
        "bool": 1, "complex128": 16, "complex32": 4, "complex64": 8, "float16": 2,
        "float32": 4, "float4_e2m1fn_x2": 1, "float64": 8, "float8_e4m3fn": 1,
        "float8_e4m3fnuz": 1, "float8_e5m2": 1, "float8_e5m2fnuz": 1, "float8_e8m0fnu": 1,
        "int1": 1, "int16": 2, "int2": 1, "int3": 1, "int32": 4, "int4": 1, "int5": 1,
        "int6": 1, "int64": 8, "int7": 1, "int8": 1, "qint32": 4, "qint8": 1,
        "quint2x4": 1, "quint4x2": 1, "quint8": 1, "uint1": 1, "uint16": 2, "uint2": 1,
        "uint3": 1, "uint32": 4, "uint4": 1, "uint5": 1, "uint6": 1, "uint64": 8,
        "uint7": 1, "uint8": 1,
    }
)  # fmt: skip


# -- the cache key ---------------------------------------------------------------------


class IPCCacheServerKey(msgspec.Struct, frozen=True):
    """The token-based key every data op carries (§4), as a map of these 10 fields in this order.

    ``worker_id`` is ``None`` for scheduler ops (``lookup``, ``free_lookup_locks``)
    and the worker rank for transfers. ``token_ids`` is the full sequence so far,
    decoded as ``list[int]`` (msgspec's fastest path); values are not range
    checked here (see the module docstring). ``request_id`` ties lookup,
    retrieve and end_session together and is not part of the cache identity.
    """

    model_name: str
    world_size: NonNegative
    worker_id: NonNegative | None
    token_ids: list[int]
    start: NonNegative
    end: NonNegative
    request_id: str
    cache_salt: CacheSalt = ""
    request_configs: dict[str, Any] | None = None
    num_kv_readers: NonNegative = 0


# -- registration payloads -----------------------------------------------------------------


class EngineType(str, enum.Enum):
    """``lmcache.utils.EngineType``: on the wire, the value string."""

    VLLM = "vllm"
    ATOM = "atom"
    SGLANG = "sglang"
    TRTLLM = "trtllm"
    MOCK = "mock"


class LayoutHints(TypedDict, total=False):
    """Optional registration hints (a plain map on the wire; ``{}`` when none)."""

    kv_layout: Literal["NHD", "HND", "BLHNC", "BLNHC"]
    num_kv_heads: int
    tokens_per_block: int
    kv_list_layout: Literal["k_v", "unified"]
    head_dim: int


class EngineGroupInfo(msgspec.Struct, frozen=True):
    """One LMCache KV group of a registration: which layers, block size, sliding window."""

    engine_group_id: int
    layer_indices: tuple[int, ...] = ()
    tokens_per_block: int = 0
    sw_size_tokens: int = -1  # -1: not a sliding-window group
    extra_object_group_tag: int = 0
    recurrent_state: bool = False


class BlockAllocationRecord(msgspec.Struct, frozen=True):
    """One request's block-allocation delta (``report_block_allocation``)."""

    req_id: str
    new_block_ids: list[int]
    new_token_ids: list[int]


class RegisterEngineDrivenContextPayload(msgspec.Struct, frozen=True):
    """Op 14's single payload: what an engine-driven worker registers (§5.4)."""

    instance_id: int
    model_name: str
    world_size: int
    block_size: int
    num_layers: int
    hidden_dim_size: int
    dtype_str: str
    use_mla: bool
    num_physical_slots: int | None = None  # None: legacy, one slot per token


class RegisterEngineDrivenContextResponse(msgspec.Struct, frozen=True):
    """Op 14's reply. An empty ``shm_name`` selects pickle transport."""

    shm_name: str = ""
    pool_size: int = 0


class PrepareStoreResponse(msgspec.Struct, frozen=True):
    """Op 16's reply."""

    context: dict[str, Any] = {}


class PrepareRetrieveResponse(msgspec.Struct, frozen=True):
    """Op 18's reply: ``data`` is ``pickle.dumps(list[Tensor])`` on success, ``b""`` on a miss."""

    success: bool
    data: bytes = b""
    context: dict[str, Any] = {}


# -- ext type 1: device tensor descriptors (§3) ---------------------------------------------


class TensorMetadata(msgspec.Struct, frozen=True, forbid_unknown_fields=True):
    """A tensor view inside a storage segment (§3.1), validated as it is decoded."""

    dtype: str
    shape: tuple[NonNegative, ...]
    stride: tuple[NonNegative, ...]
    storage_offset: NonNegative
    device_uuid: str

    def __post_init__(self) -> None:
        # Raised while decoding, msgspec turns these into a ValidationError.
        if self.dtype not in DTYPE_ITEMSIZE:
            raise ValueError(f"unknown tensor dtype {self.dtype!r}")
        if len(self.shape) != len(self.stride):
            raise ValueError(f"shape rank {len(self.shape)} != stride rank {len(self.stride)}")

    @property
    def itemsize(self) -> int:
        """Bytes per element of ``dtype``."""
        return DTYPE_ITEMSIZE[self.dtype]

    def byte_span(self) -> int:
        """Exclusive byte end of the view within its storage; 0 for a view with no elements."""
        if 0 in self.shape:
            return 0
        last = sum((size - 1) * stride for size, stride in zip(self.shape, self.stride))
        return self.itemsize * (self.storage_offset + 1 + last)


def _check_span(metadata: TensorMetadata, limit: int, what: str) -> None:
    span = metadata.byte_span()
    if span > limit:
        raise ValueError(f"tensor view spans {span} bytes, more than the {limit}-byte {what}")


# Field order matters for byte equality with the real client: its base class is
# kw_only, so version/metadata come after each variant's own fields.
class CpuShmIPCData(msgspec.Struct, tag="cpu_shm", tag_field="type", frozen=True, forbid_unknown_fields=True):
    """A view into a named POSIX shared-memory segment of ``nbytes`` bytes (§3.2)."""

    shm_name: ShmName
    nbytes: NonNegative
    version: Literal[1]
    metadata: TensorMetadata

    def __post_init__(self) -> None:
        _check_span(self.metadata, self.nbytes, "shared-memory segment")


CudaHandle = tuple[int, bytes | None, NonNegative, NonNegative, bytes | None, NonNegative, bytes | None, bool]


class CudaIPCData(msgspec.Struct, tag="cuda", tag_field="type", frozen=True, forbid_unknown_fields=True):
    """PyTorch ``UntypedStorage._share_cuda_()`` tuple (§3.3); ``handle[2]`` is the storage size."""

    handle: CudaHandle
    version: Literal[1]
    metadata: TensorMetadata

    def __post_init__(self) -> None:
        _check_span(self.metadata, self.handle[2], "CUDA storage")


class RawCudaIPCData(msgspec.Struct, tag="cuda_raw", tag_field="type", frozen=True, forbid_unknown_fields=True):
    """``cudaIpcMemHandle`` of an allocation base plus a byte range (§3.3)."""

    ipc_handle: Annotated[bytes, msgspec.Meta(min_length=64, max_length=64)]
    alloc_offset: NonNegative
    nbytes: NonNegative
    version: Literal[1]
    metadata: TensorMetadata

    def __post_init__(self) -> None:
        _check_span(self.metadata, self.nbytes, "raw CUDA byte range")


class VmmCudaIPCData(msgspec.Struct, tag="cuda_vmm", tag_field="type", frozen=True, forbid_unknown_fields=True):
    """CUDA VMM allocation export (§3.3); the fd itself travels out of band."""

    export_id: Annotated[bytes, msgspec.Meta(min_length=16, max_length=16)]
    kind: Literal["posix_fd", "fabric"]
    fabric_blob: bytes | None
    alloc_size: NonNegative
    alloc_offset: NonNegative
    nbytes: NonNegative
    version: Literal[1]
    metadata: TensorMetadata

    def __post_init__(self) -> None:
        _check_span(self.metadata, self.nbytes, "VMM byte range")
        if self.alloc_offset + self.nbytes > self.alloc_size:
            raise ValueError("VMM byte range exceeds its allocation")
        if (self.kind == "fabric") != (self.fabric_blob is not None):
            raise ValueError("fabric_blob must be set exactly when kind is 'fabric'")


IPCDescriptor = CpuShmIPCData | CudaIPCData | RawCudaIPCData | VmmCudaIPCData
"""The descriptor variants we accept (``musa`` and ``npu`` are out of scope and rejected)."""


class DeviceIPCWrapper:
    """One ext-type-1 element of ``register_kv_cache``'s ``kv_cache`` list.

    A plain class rather than a Struct on purpose: msgspec hands only unknown
    types to ``enc_hook``/``dec_hook``, which is what lets the wire codec map this
    class to and from ``msgspec.msgpack.Ext(1, ...)``. ``descriptor`` is the
    decoded, validated tagged map.
    """

    __slots__ = ("descriptor",)

    def __init__(self, descriptor: IPCDescriptor) -> None:
        self.descriptor = descriptor

    def __eq__(self, other: object) -> bool:
        return isinstance(other, DeviceIPCWrapper) and other.descriptor == self.descriptor

    def __hash__(self) -> int:
        return hash(self.descriptor)

    def __repr__(self) -> str:
        return f"DeviceIPCWrapper({self.descriptor!r})"


# -- payloads of ops outside the vLLM/CPU path (typed so arity and shapes are checked) ---------


class CBMatchResult(msgspec.Struct, frozen=True):
    """CacheBlend sub-sequence match (ops 27, 28)."""

    old_st: int
    old_ed: int
    cur_st: int
    cur_ed: int
    hash: bytes


class CBUnifiedLookupResult(msgspec.Struct, frozen=True):
    """CacheBlend unified lookup reply (op 28)."""

    prefix_coverage_tokens: int
    non_prefix_segments: list[CBMatchResult]
    segmented_prefix_segments: list[CBMatchResult] = []


class WireObjectKey(msgspec.Struct, frozen=True):
    """0.5.6's ``ObjectKey`` dataclass as a map (P2P ops 29, 31); see ``lmcache_core.keys`` for ours."""

    chunk_hash: bytes
    model_name: str
    kv_rank: int
    object_group_id: int = 0
    cache_salt: str = ""


class MemoryLayoutDesc(msgspec.Struct, frozen=True):
    """Object layout for P2P (op 29): shapes as int arrays, dtypes as names without ``torch.``."""

    shapes: list[list[int]]
    dtypes: list[str]


class TransferChannelAddress(msgspec.Struct, frozen=True):
    """P2P read address (op 30 reply)."""

    offset: int
    size: int


class KVEventRecord(msgspec.Struct, frozen=True):
    """One CPU cache change in a ``subscribe_kv_events`` batch."""

    seq: int
    kind: str
    medium: str
    model_name: str
    block_hashes: list[bytes]
    parent_block_hash: bytes | None
    token_ids: list[int]


class KVEventBatch(msgspec.Struct, frozen=True):
    """One item of the ``subscribe_kv_events`` stream."""

    enabled: bool
    incarnation: int
    next_cursor: int
    lost: bool
    events: list[KVEventRecord]


class ServerModuleCallRequest(msgspec.Struct, frozen=True):
    """Opaque extension call (``server_module_call``)."""

    method: str
    payload: bytes


class ServerModuleCallResponse(msgspec.Struct, frozen=True):
    """Opaque extension reply (``server_module_call``)."""

    success: bool
    payload: bytes
    error: str


# -- per-operation payload signatures --------------------------------------------------------
#
# One Struct per op: its fields are the op's parameters in the client protocol's
# declaration order (``v1/multiprocess/transport/base.py`` ``RequestClient``),
# each carried in its own frame. A field default is the client's default: the
# client still sends it (§1.2), so a default never makes a frame optional.


class Args(msgspec.Struct, frozen=True):
    """Base of the per-op argument Structs (``Request.args``)."""


class NoArgs(Args, frozen=True):
    """Ops without parameters: ``noop``, ``get_chunk_size``, ``get_experimental``."""


class RegisterKVCacheArgs(Args, frozen=True):
    """Op 1 ``register_kv_cache`` (op 3 ``register_q_cache`` has the same frames)."""

    instance_id: int
    kv_cache: list[DeviceIPCWrapper]
    model_name: str
    world_size: int
    engine_type: EngineType
    layout_hints: LayoutHints
    engine_group_infos: list[EngineGroupInfo]


class InstanceArgs(Args, frozen=True):
    """Ops whose only parameter is ``instance_id: int`` (2, 4, 15, 26)."""

    instance_id: int


class StoreArgs(Args, frozen=True):
    """Op 6 ``store`` and op 5 ``store_q``."""

    key: IPCCacheServerKey
    instance_id: int
    block_ids: list[list[int]]
    event_ipc_handle: bytes


class RetrieveArgs(Args, frozen=True):
    """Op 7 ``retrieve``."""

    key: IPCCacheServerKey
    instance_id: int
    block_ids: list[list[int]]
    event_ipc_handle: bytes
    skip_first_n_tokens: int


class KeyTpArgs(Args, frozen=True):
    """Op 8 ``lookup``, op 12 ``free_lookup_locks``, op 28 ``cb_unified_lookup``."""

    key: IPCCacheServerKey
    tp_size: int


class RequestIdArgs(Args, frozen=True):
    """Op 9 ``query_prefetch_status`` and op 13 ``end_session``."""

    request_id: str


class WaitPrefetchStatusArgs(Args, frozen=True):
    """Op 10 ``wait_prefetch_status``; ``timeout`` in seconds (an int on the wire is accepted)."""

    request_id: str
    timeout: float


class RegisterEngineDrivenArgs(Args, frozen=True):
    """Op 14 ``register_kv_cache_engine_driven_context``."""

    payload: RegisterEngineDrivenContextPayload


class KeyInstanceArgs(Args, frozen=True):
    """Ops 16 ``prepare_store``, 18 ``prepare_retrieve``, 19 ``commit_retrieve``."""

    key: IPCCacheServerKey
    instance_id: int


class CommitStoreArgs(Args, frozen=True):
    """Op 17 ``commit_store``: ``data`` is ``pickle.dumps(list[Tensor])``."""

    key: IPCCacheServerKey
    instance_id: int
    data: bytes


class ClearArgs(Args, frozen=True):
    """Op 20 ``clear``."""

    force: bool = False


class PingArgs(Args, frozen=True):
    """Op 22 ``ping``: ``None`` from the scheduler, the worker's id from a worker."""

    instance_id: int | None


class ReportBlockAllocationArgs(Args, frozen=True):
    """Op 23 ``report_block_allocation``."""

    instance_id: int
    model_name: str
    records: list[BlockAllocationRecord]


class CBRegisterRopeArgs(Args, frozen=True):
    """Op 25 ``cb_register_rope`` (CacheBlend)."""

    instance_id: int
    cos_sin_caches_ipc: list[DeviceIPCWrapper]
    head_size: int
    is_neox_style: bool
    group_to_cache: list[int]
    group_rot: list[list[int]]
    group_head_size: list[int]
    kv_quant: str = ""


class CBRetrievePreComputedArgs(Args, frozen=True):
    """Op 27 ``cb_retrieve_pre_computed`` (CacheBlend)."""

    key: IPCCacheServerKey
    match_results: list[CBMatchResult]
    block_ids: list[list[int]]
    instance_id: int
    event_ipc_handle: bytes


class P2PLookupAndLockArgs(Args, frozen=True):
    """Op 29 ``p2p_lookup_and_lock``."""

    keys: list[WireObjectKey]
    group_layout_descs: dict[int, MemoryLayoutDesc]


class TaskIdArgs(Args, frozen=True):
    """Op 30 ``p2p_query_lookup_results``."""

    task_id: int


class P2PUnlockObjectsArgs(Args, frozen=True):
    """Op 31 ``p2p_unlock_objects``."""

    keys: list[WireObjectKey]


class CBProtocolHandshakeArgs(Args, frozen=True):
    """Op 33 ``cb_protocol_handshake``."""

    client_version: int


class CBReorderPlanArgs(Args, frozen=True):
    """``cb_reorder_plan`` (sent by name)."""

    key: IPCCacheServerKey
    keep_prefix: int
    budget_ms: int


class SubscribeKVEventsArgs(Args, frozen=True):
    """``subscribe_kv_events`` (sent by name; a stream)."""

    instance_id: int
    model_name: str
    cursor: int
    max_events: int


class ServerModuleCallArgs(Args, frozen=True):
    """``server_module_call`` (sent by name)."""

    request: ServerModuleCallRequest
