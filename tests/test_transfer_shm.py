"""Mapping cpu_shm descriptors: zero copy, validation, name safety, segment refcounting, CUDA guard."""

from __future__ import annotations

import gc
import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import msgspec
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from lmcache_core.transfer import cuda_ipc
from lmcache_core.transfer.layout import copy_dtype
from lmcache_core.transfer.shm import (
    SharedSegment,
    ShmDescriptorError,
    ShmMissingError,
    ShmNameError,
    ShmSegmentCache,
    ShmTooSmallError,
    create_shm_tensor,
    shm_path,
    view_span_bytes,
)


def _mapped_paths() -> str:
    with open("/proc/self/maps") as f:
        return f.read()


@pytest.fixture
def cache():
    c = ShmSegmentCache()
    yield c
    c.close()


def test_map_is_zero_copy_both_ways(cache: ShmSegmentCache) -> None:
    with create_shm_tensor((2, 4, 16, 2, 8), torch.float16) as client:
        client.tensor.copy_(torch.arange(client.tensor.numel()).reshape(client.tensor.shape).half())
        m = cache.map_descriptor(client.fields)
        assert torch.equal(m.tensor, client.tensor)
        m.tensor[1, 3].fill_(7.0)  # server writes ...
        assert bool((client.tensor[1, 3] == 7.0).all())  # ... the client sees them
        client.tensor[0, 0].fill_(-1.0)
        assert bool((m.tensor[0, 0] == -1.0).all())
        m.release()


def test_zero_copy_with_another_process(cache: ShmSegmentCache, tmp_path: Path) -> None:
    """A real client process creates the segment; bytes flow both ways through the same pages."""
    script = textwrap.dedent("""
        import json, sys, torch
        from lmcache_core.transfer.shm import create_shm_tensor
        st = create_shm_tensor((4, 256), torch.int32)
        st.tensor.copy_(torch.arange(1024, dtype=torch.int32).reshape(4, 256))
        print(json.dumps(st.fields), flush=True)
        sys.stdin.readline()                      # the server has written row 2
        print(int(st.tensor[2].sum()), flush=True)
        st.close()
    """)
    proc = subprocess.Popen([sys.executable, "-c", script], stdin=subprocess.PIPE, stdout=subprocess.PIPE,
                            stderr=subprocess.DEVNULL, text=True)
    try:
        assert proc.stdout is not None and proc.stdin is not None
        fields = json.loads(proc.stdout.readline())
        m = cache.map_descriptor(fields)
        assert int(m.tensor[1, 5]) == 256 + 5
        m.tensor[2].fill_(3)
        proc.stdin.write("go\n")
        proc.stdin.flush()
        assert int(proc.stdout.readline()) == 3 * 256
        m.release()
        assert proc.wait(timeout=60) == 0
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait(timeout=10)


def test_layers_sharing_a_segment_map_once_and_unmap_with_the_last(cache: ShmSegmentCache) -> None:
    seg = SharedSegment(2 * 4096)
    try:
        a, fa = seg.tensor((1024,), torch.float32, storage_offset=0)
        b, fb = seg.tensor((1024,), torch.float32, storage_offset=1024)
        del a, b
        ma, mb = cache.map_descriptor(fa), cache.map_descriptor(fb)
        assert cache.segments() == [{"shm_name": seg.name, "nbytes": seg.nbytes, "refs": 2}]
        assert ma.tensor.untyped_storage().data_ptr() == mb.tensor.untyped_storage().data_ptr()
        assert seg.path in _mapped_paths()
        ma.release()
        ma.release()  # idempotent: does not steal b's reference
        assert cache.segments()[0]["refs"] == 1
        mb.tensor.fill_(1.5)  # still usable
        mb.release()
        assert cache.segments() == []
        # Our own segment object still maps it; the cache's mapping is gone.
        assert _mapped_paths().count(seg.path) == 1
    finally:
        seg.close()
    gc.collect()
    assert seg.path not in _mapped_paths()
    assert not os.path.exists(seg.path)


def test_release_while_a_view_is_alive_defers_the_unmap(cache: ShmSegmentCache) -> None:
    client = create_shm_tensor((4096,), torch.uint8)
    path = client.segment.path
    m = cache.map_descriptor(client.fields)
    client.tensor = None  # type: ignore[assignment]
    client.close()  # the client unlinks and unmaps; only the server's mapping is left
    held = m.tensor[:10]  # e.g. a copy in flight on another thread
    m.release()
    assert cache.segments() == []
    held.fill_(9)  # the memory is still mapped: no crash
    assert int(held.sum()) == 90
    assert path in _mapped_paths()
    del held
    gc.collect()
    assert path not in _mapped_paths()


def test_reused_name_is_a_different_segment(cache: ShmSegmentCache) -> None:
    first = create_shm_tensor((16,), torch.int64)
    first.tensor.fill_(1)
    m1 = cache.map_descriptor(first.fields)
    name = first.fields["shm_name"]
    first.close()
    second = create_shm_tensor((16,), torch.int64, name=name)
    second.tensor.fill_(2)
    try:
        m2 = cache.map_descriptor(second.fields)
        assert len(cache.segments()) == 2
        assert int(m1.tensor.sum()) == 16 and int(m2.tensor.sum()) == 32
        m1.release()
        m2.release()
        assert cache.segments() == []
    finally:
        second.close()


@pytest.mark.parametrize("name", ["/", "", "/a/b", "/../etc/passwd", "/..", "/x\0y", "a/b", "/.", "/" + "x" * 300])
def test_unsafe_names_are_refused(cache: ShmSegmentCache, name: str) -> None:
    with pytest.raises(ShmNameError):
        cache.map_tensor(name, 64, "uint8", [64], [1], 0)


def test_name_without_leading_slash_is_accepted() -> None:
    assert shm_path("lmcache_kv_1_0") == shm_path("/lmcache_kv_1_0") == "/dev/shm/lmcache_kv_1_0"


def test_symlink_in_dev_shm_is_not_followed(cache: ShmSegmentCache, tmp_path: Path) -> None:
    target = tmp_path / "outside"
    target.write_bytes(b"\0" * 4096)
    link = f"/dev/shm/lmcache_test_link_{os.getpid()}"
    os.symlink(target, link)
    try:
        with pytest.raises(ShmMissingError):
            cache.map_tensor(os.path.basename(link), 4096, "uint8", [4096], [1], 0)
    finally:
        os.unlink(link)
    assert cache.segments() == []


def test_missing_segment(cache: ShmSegmentCache) -> None:
    with pytest.raises(ShmMissingError, match="does not exist"):
        cache.map_tensor(f"/lmcache_no_such_segment_{os.getpid()}", 64, "uint8", [64], [1], 0)


def test_segment_shorter_than_nbytes(cache: ShmSegmentCache) -> None:
    with create_shm_tensor((64,), torch.uint8) as client, pytest.raises(ShmTooSmallError, match="has 64 bytes"):
        cache.map_tensor(client.fields["shm_name"], 128, "uint8", [128], [1], 0)
    assert cache.segments() == []


def test_view_must_fit_in_nbytes(cache: ShmSegmentCache) -> None:
    with create_shm_tensor((1024,), torch.uint8) as client:
        name = client.fields["shm_name"]
        with pytest.raises(ShmTooSmallError):  # 257 float32 = 1028 bytes
            cache.map_tensor(name, 1024, "float32", [257], [1], 0)
        with pytest.raises(ShmTooSmallError):  # offset pushes the end past the segment
            cache.map_tensor(name, 1024, "float16", [2, 256], [256, 1], 1)
        m = cache.map_tensor(name, 1024, "float16", [2, 255], [256, 1], 1)  # exactly fits
        m.release()
    assert cache.segments() == []


@pytest.mark.parametrize(("field", "value", "match"), [
    ("dtype", "float17", "unknown dtype"),
    ("dtype", "Tensor", "unknown dtype"),
    ("dtype", "", "dtype"),
    ("shape", [4, 4], "differ in rank"),
    ("stride", [-1], "non-negative"),
    ("storage_offset", -1, "storage_offset"),
    ("nbytes", -5, "nbytes"),
    ("device_uuid", "GPU-1234", "expected 'cpu'"),
    ("shape", "16", "list of integers"),
])
def test_malformed_descriptor_fields(cache: ShmSegmentCache, field: str, value: object, match: str) -> None:
    with create_shm_tensor((16,), torch.uint8) as client:
        fields = dict(client.fields)
        fields[field] = value
        with pytest.raises(ShmDescriptorError, match=match):
            cache.map_descriptor(fields)
    assert cache.segments() == []


def test_zero_nbytes_gives_an_empty_tensor_without_a_segment(cache: ShmSegmentCache) -> None:
    m = cache.map_tensor("", 0, "float16", [2, 0, 16], [0, 16, 1], 0)
    assert m.tensor.numel() == 0 and m.tensor.dtype == torch.float16
    m.release()
    assert cache.segments() == []


def test_dtype_name_with_torch_prefix_and_truncated_segment(cache: ShmSegmentCache) -> None:
    with create_shm_tensor((10,), torch.uint8) as client:  # 10 bytes: 2 float32 + 2 spare bytes
        client.tensor.copy_(torch.tensor([0, 0, 128, 63, 0, 0, 0, 64, 1, 2], dtype=torch.uint8))
        m = cache.map_tensor(client.fields["shm_name"], 10, "torch.float32", [2], [1], 0)
        assert m.tensor.tolist() == [1.0, 2.0]
        m.release()


def test_client_segment_is_unlinked_at_close() -> None:
    client = create_shm_tensor((8,), torch.uint8)
    path = client.segment.path
    assert os.path.exists(path)
    client.close()
    client.close()
    assert not os.path.exists(path)


@settings(max_examples=60, deadline=None)
@given(
    shape=st.lists(st.integers(0, 5), min_size=1, max_size=4),
    extra=st.lists(st.integers(0, 3), min_size=4, max_size=4),
    offset=st.integers(0, 64),
    dtype=st.sampled_from([torch.uint8, torch.float16, torch.float32, torch.int64]),
)
def test_any_view_maps_iff_it_fits(shape: list[int], extra: list[int], offset: int, dtype: torch.dtype) -> None:
    """Random (possibly overlapping or gapped) strides: either the mapped view equals the client's view
    of the same bytes, or the span exceeds the segment and it is refused."""
    stride, acc = [], 1
    for size, gap in zip(reversed(shape), extra, strict=False):
        stride.append(acc + gap)
        acc = (acc + gap) * max(size, 1)
    stride.reverse()
    nbytes = 512
    cache = ShmSegmentCache()
    seg = SharedSegment(nbytes)
    try:
        seg._base.copy_(torch.arange(nbytes, dtype=torch.int64).remainder(251).to(torch.uint8))  # type: ignore[union-attr]
        span = view_span_bytes(dtype.itemsize, shape, stride, offset)
        if span > nbytes:
            with pytest.raises(ShmTooSmallError):
                cache.map_tensor(seg.name, nbytes, str(dtype), shape, stride, offset)
            return
        client_view, _ = seg.tensor(shape, dtype, storage_offset=offset, stride=stride)
        m = cache.map_tensor(seg.name, nbytes, str(dtype), shape, stride, offset)
        assert m.tensor.shape == client_view.shape and m.tensor.stride() == client_view.stride()
        bits = copy_dtype(dtype)  # compare raw bits: random bytes make NaNs
        assert torch.equal(m.tensor.view(bits), client_view.view(bits))
        m.release()
    finally:
        cache.close()
        seg.close()


def test_cuda_paths_report_cuda_not_available_on_cpu() -> None:
    if cuda_ipc.cuda_available():
        pytest.skip("this host has CUDA; the GPU check covers it")
    handle = [0, b"\0" * 64, 1024, 0, None, 0, None, False]
    for call in (
        lambda: cuda_ipc.require_cuda(),
        lambda: cuda_ipc.rebuild_cuda_tensor(handle, "float16", [512], [1], 0, "GPU-0"),
        lambda: cuda_ipc.device_ordinal_for_uuid("GPU-0"),
        lambda: cuda_ipc.import_ipc_event(b"x" * 64, 0),
        lambda: cuda_ipc.export_ipc_event(0),
    ):
        with pytest.raises(cuda_ipc.CudaUnavailableError, match="CUDA not available"):
            call()
    # The CPU stub handle and the empty handle mean "nothing to wait on", CUDA or not.
    assert cuda_ipc.import_ipc_event(cuda_ipc.CPU_STUB_EVENT_HANDLE, 0) is None
    assert cuda_ipc.import_ipc_event(b"", 0) is None
    cuda_ipc.wait_ipc_event(b"stub_ipc_handle", 0)


class _Meta(msgspec.Struct):
    dtype: str
    shape: list[int]
    stride: list[int]
    storage_offset: int
    device_uuid: str


class _CpuShm(msgspec.Struct, tag_field="type", tag="cpu_shm"):
    shm_name: str
    nbytes: int
    version: int
    metadata: _Meta


def test_descriptor_in_wire_form_or_as_a_struct(cache: ShmSegmentCache) -> None:
    """The lead passes whatever the codec decodes: the wire map (view fields under metadata) or Structs."""
    with create_shm_tensor((2, 3), torch.float32) as client:
        f = client.fields
        meta = {k: f[k] for k in ("dtype", "shape", "stride", "storage_offset", "device_uuid")}
        wire = {"type": "cpu_shm", "shm_name": f["shm_name"], "nbytes": f["nbytes"], "version": 1, "metadata": meta}
        struct = msgspec.msgpack.decode(msgspec.msgpack.encode(wire), type=_CpuShm)
        client.tensor.fill_(4.0)
        for desc in (wire, struct, f):
            m = cache.map_descriptor(desc)
            assert m.tensor.shape == (2, 3) and float(m.tensor.sum()) == 24.0
            m.release()
        with pytest.raises(ShmDescriptorError, match="not cpu_shm"):
            cache.map_descriptor(dict(wire, type="cuda"))
        with pytest.raises(ShmDescriptorError, match="no 'nbytes'"):
            cache.map_descriptor({k: v for k, v in wire.items() if k != "nbytes"})
    assert cache.segments() == []
