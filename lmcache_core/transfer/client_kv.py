"""A worker-side KV cache in POSIX shared memory, as the 0.5.6 CPU client registers it.

Used by our client, the tests and the benchmark to play the part of a vLLM
worker: each layer tensor lives in its own segment, and :meth:`descriptors`
gives the ``cpu_shm`` descriptors ``register_kv_cache`` sends.
"""

from __future__ import annotations

from collections.abc import Sequence

import torch

from lmcache_core.transfer.shm import SharedTensor, create_shm_tensor
from lmcache_core.transport import messages as m


class WorkerKVCache:
    """``num_layers`` tensors of ``shape`` (e.g. NHD ``(2, blocks, block_size, heads, head_size)``)."""

    def __init__(self, num_layers: int, shape: Sequence[int], dtype: torch.dtype = torch.float16) -> None:
        self._shared: list[SharedTensor] = [create_shm_tensor(shape, dtype) for _ in range(num_layers)]
        self.layers = [s.tensor for s in self._shared]

    def descriptors(self) -> list[m.DeviceIPCWrapper]:
        out = []
        for s in self._shared:
            f = s.fields
            meta = m.TensorMetadata(dtype=f["dtype"], shape=tuple(f["shape"]), stride=tuple(f["stride"]),
                                    storage_offset=f["storage_offset"], device_uuid=f["device_uuid"])
            out.append(m.DeviceIPCWrapper(m.CpuShmIPCData(shm_name=f["shm_name"], nbytes=f["nbytes"], version=1,
                                                          metadata=meta)))
        return out

    def close(self) -> None:
        for s in self._shared:
            s.close()
