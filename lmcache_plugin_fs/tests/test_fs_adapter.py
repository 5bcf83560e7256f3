"""The fs L2 adapter on real directories: format, round trips, checksums, failures, recovery, listing."""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import sys
import time
import zlib
from pathlib import Path

import msgspec
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from lmcache_plugin_fs.adapter import (
    CRC32_MAGIC,
    TRAILER_SIZE,
    FSAdapterConfig,
    FSL2Adapter,
    decode_cursor,
    encode_cursor,
)

from lmcache_core.keys import ObjectKey, fs_file_name, try_parse_fs_file_name
from lmcache_core.storage.l2.base import L2AdapterContext

MODEL = "org/model-a"
VECTORS = Path(__file__).resolve().parents[2] / "tests" / "data" / "test_vectors.json"


def key(i: int, model: str = MODEL, salt: str = "") -> ObjectKey:
    return ObjectKey(i.to_bytes(4, "big") * 8, model, 0x01000100, 0, salt)


def obj(i: int, n: int = 4096) -> torch.Tensor:
    return (torch.arange(n, dtype=torch.int64) * 7 + i).remainder(251).to(torch.uint8)


def data_files(base: Path) -> list[str]:
    return sorted(p.name for p in base.iterdir() if p.name.endswith(".data"))


def tmp_files(adapter: FSL2Adapter) -> list[str]:
    return sorted(n for n in os.listdir(adapter.tmp_dir) if n.endswith(".tmp"))


# -- round trip and format ---------------------------------------------------------------


def test_round_trip_bytes_equal_and_one_raw_file_per_object(make_fs, tmp_path):
    a = make_fs()
    keys = [key(i) for i in range(3)] + [key(9, salt="alice")]
    objs = [obj(i, 1000 + i) for i in range(4)]
    assert a.store(keys, objs).result(10) == [True] * 4
    assert data_files(tmp_path / "l2") == sorted(fs_file_name(k) for k in keys)
    for k, o in zip(keys, objs):
        assert (tmp_path / "l2" / fs_file_name(k)).read_bytes() == bytes(o.tolist())  # raw, no header
    bufs = [torch.zeros_like(o) for o in objs]
    assert a.lookup_and_lock(keys + [key(77)]).result(10) == [True] * 4 + [False]
    assert a.load(keys, bufs).result(10) == [True] * 4
    assert all(torch.equal(b, o) for b, o in zip(bufs, objs))
    assert a.load([key(77)], [torch.zeros(10, dtype=torch.uint8)]).result(10) == [False]
    assert a.usage().total_bytes_used == sum(o.numel() for o in objs)
    assert tmp_files(a) == []


def test_load_with_a_buffer_of_another_size_is_a_miss_and_keeps_the_file(make_fs, tmp_path):
    a = make_fs()
    a.store([key(1)], [obj(1, 100)]).result(10)
    assert a.load([key(1)], [torch.zeros(99, dtype=torch.uint8)]).result(10) == [False]
    assert a.load([key(1)], [torch.zeros(101, dtype=torch.uint8)]).result(10) == [False]
    assert (tmp_path / "l2" / fs_file_name(key(1))).exists()


def kv_pattern_objects(vec: dict) -> list[bytes]:
    """The chunk objects of the vector's KV pattern (NHD layers -> [kv, layer, token, hidden])."""
    layers = []
    for layer in range(vec["layers"]):
        i = torch.arange(2 * 64 * 16 * 2 * 8, dtype=torch.int64)
        values = ((i * 31 + layer * 7) % 2039 - 1019).to(torch.float32) / 64
        layers.append(values.to(torch.float16).reshape(2, 64, 16, 2, 8))
    objects = []
    for chunk in range(len(vec["fs_l2_files"])):
        blocks = slice(16 * chunk, 16 * chunk + 16)
        t = torch.stack([torch.stack([lay[kv, blocks].reshape(256, 16) for lay in layers]) for kv in range(2)])
        objects.append(bytes(t.contiguous().view(torch.uint8).reshape(-1).tolist()))
    return objects


@pytest.mark.parametrize("checksum", ["none", "crc32"])
def test_files_match_the_end_to_end_vectors(make_fs, tmp_path, checksum):
    vec = json.loads(VECTORS.read_text())["end_to_end_store"]
    names = list(vec["fs_l2_files"])  # chunk order
    keys = [try_parse_fs_file_name(n) for n in names]
    assert all(k is not None and fs_file_name(k) == n for k, n in zip(keys, names))
    payloads = kv_pattern_objects(vec)
    a = make_fs(checksum=checksum)
    tensors = [torch.frombuffer(bytearray(p), dtype=torch.uint8) for p in payloads]
    assert a.store(keys, tensors).result(10) == [True, True]
    assert data_files(tmp_path / "l2") == sorted(names)
    for name, payload in zip(names, payloads):
        expect = vec["fs_l2_files"][name]
        raw = (tmp_path / "l2" / name).read_bytes()
        body, trailer = (raw, b"") if checksum == "none" else (raw[:-TRAILER_SIZE], raw[-TRAILER_SIZE:])
        assert len(body) == expect["size"] and body[:16].hex() == expect["first_16_bytes_hex"]
        assert hashlib.sha256(body).hexdigest() == expect["sha256"]
        if checksum == "crc32":
            assert trailer == CRC32_MAGIC + zlib.crc32(payload).to_bytes(4, "little")
    bufs = [torch.zeros(len(p), dtype=torch.uint8) for p in payloads]
    assert a.load(keys, bufs).result(10) == [True, True]
    assert [bytes(b.tolist()) for b in bufs] == payloads


def test_an_existing_file_counts_as_stored_and_is_not_rewritten(make_fs, tmp_path):
    a = make_fs()
    path = tmp_path / "l2" / fs_file_name(key(1))
    a.store([key(1)], [obj(1)]).result(10)
    inode = path.stat().st_ino
    assert a.store([key(1)], [obj(1)]).result(10) == [True]
    assert path.stat().st_ino == inode
    assert a.report_status()["stored_object_count"] == 1


def test_concurrent_stores_of_one_key_leave_one_whole_file(make_fs, tmp_path):
    a = make_fs(workers=8)
    futures = [a.store([key(5)], [obj(5, 1 << 20)]) for _ in range(16)]
    assert all(f.result(20) == [True] for f in futures)
    assert (tmp_path / "l2" / fs_file_name(key(5))).read_bytes() == bytes(obj(5, 1 << 20).tolist())
    assert tmp_files(a) == []


def test_delete_removes_files_and_accounting(make_fs, tmp_path):
    a = make_fs()
    a.store([key(1), key(2)], [obj(1, 10), obj(2, 20)]).result(10)
    assert a.delete([key(1), key(3)]).result(10) == [True, True]  # absent counts as gone
    assert data_files(tmp_path / "l2") == [fs_file_name(key(2))]
    assert a.usage().total_bytes_used == 20


# -- checksums ------------------------------------------------------------------------------


def flip(path: Path, offset: int) -> None:
    raw = bytearray(path.read_bytes())
    raw[offset] ^= 0x01
    path.write_bytes(bytes(raw))


@pytest.mark.parametrize("offset", [0, 99, 100, 107], ids=["payload0", "payload_last", "magic", "crc"])
def test_crc32_mismatch_is_a_miss_and_the_file_is_removed(make_fs, tmp_path, offset):
    a = make_fs(checksum="crc32")
    path = tmp_path / "l2" / fs_file_name(key(1))
    a.store([key(1)], [obj(1, 100)]).result(10)
    assert path.stat().st_size == 100 + TRAILER_SIZE
    flip(path, offset)
    assert a.load([key(1)], [torch.zeros(100, dtype=torch.uint8)]).result(10) == [False]
    assert not path.exists()
    status = a.report_status()
    assert status["checksum_failures"] == 1 and status["stored_object_count"] == 0
    assert a.usage().total_bytes_used == 0
    # It can be stored again and then loads.
    a.store([key(1)], [obj(1, 100)]).result(10)
    buf = torch.zeros(100, dtype=torch.uint8)
    assert a.load([key(1)], [buf]).result(10) == [True] and torch.equal(buf, obj(1, 100))


def test_crc32_discards_files_without_a_trailer_and_none_reads_trailered_files(make_fs, tmp_path):
    base = tmp_path / "l2"
    make_fs(base).store([key(1)], [obj(1, 64)]).result(10)  # written without checksums
    make_fs(base, checksum="crc32").store([key(2)], [obj(2, 64)]).result(10)
    plain, crc = make_fs(base), make_fs(base, checksum="crc32")
    buf = torch.zeros(64, dtype=torch.uint8)
    assert plain.load([key(2)], [buf]).result(10) == [True] and torch.equal(buf, obj(2, 64))
    assert crc.load([key(1)], [buf]).result(10) == [False]
    assert data_files(base) == [fs_file_name(key(2))]


# -- failures ---------------------------------------------------------------------------


def test_unwritable_temp_directory_fails_the_store_and_counts_it(make_fs, tmp_path):
    a = make_fs()
    os.rmdir(a.tmp_dir)
    Path(a.tmp_dir).write_bytes(b"not a directory")  # even root cannot create files under it
    assert a.store([key(1), key(2)], [obj(1), obj(2)]).result(10) == [False, False]
    assert a.report_status()["failures"]["store"] == 2
    assert data_files(tmp_path / "l2") == [] and a.usage().total_bytes_used == 0


def test_missing_base_directory_fails_stores_and_reports_unhealthy(make_fs, tmp_path):
    a = make_fs(relative_tmp_dir=None)
    os.rmdir(tmp_path / "l2")
    assert a.store([key(1)], [obj(1)]).result(10) == [False]
    assert a.lookup_and_lock([key(1)]).result(10) == [False]
    status = a.report_status()
    assert status["failures"]["store"] == 1 and status["is_healthy"] is False


FULL_DISK_CHILD = r"""
import os, resource, signal, sys, torch
from lmcache_core.keys import ObjectKey
from lmcache_core.storage.l2.base import L2AdapterContext
from lmcache_plugin_fs.adapter import FSAdapterConfig, FSL2Adapter
signal.signal(signal.SIGXFSZ, signal.SIG_IGN)   # a write past the limit then fails with EFBIG
resource.setrlimit(resource.RLIMIT_FSIZE, (1 << 20, 1 << 20))
a = FSL2Adapter(FSAdapterConfig(base_path=sys.argv[1]), L2AdapterContext(0, "fs", io_workers=1))
a.start()
ok = a.store([ObjectKey(b"\x01" * 32, "m", 1, 0, "")], [torch.ones(4 << 20, dtype=torch.uint8)]).result(30)
small = a.store([ObjectKey(b"\x02" * 32, "m", 1, 0, "")], [torch.ones(1000, dtype=torch.uint8)]).result(30)
print(ok, small, a.report_status()["failures"]["store"], a.usage().total_bytes_used, flush=True)
a.close()
"""


def test_a_write_error_mid_object_fails_that_store_only_and_leaves_nothing(tmp_path):
    base = tmp_path / "l2"
    out = subprocess.run([sys.executable, "-c", FULL_DISK_CHILD, str(base)], capture_output=True, text=True,
                         timeout=120, check=True).stdout.split()
    assert out == ["[False]", "[True]", "1", "1000"]
    assert data_files(base) == [fs_file_name(ObjectKey(b"\x02" * 32, "m", 1, 0, ""))]
    assert os.listdir(base / ".tmp") == []


# -- recovery ---------------------------------------------------------------------------------


def dead_pid() -> int:
    proc = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True,
                          text=True, check=True, timeout=60)
    return int(proc.stdout)


def test_recovery_accounts_objects_and_ignores_foreign_files(make_fs, tmp_path):
    base = tmp_path / "l2"
    writer = make_fs(base, checksum="crc32")
    writer.store([key(i, salt="s" if i % 2 else "") for i in range(5)], [obj(i, 100 + i) for i in range(5)]).result(10)
    (base / "README.data").write_bytes(b"x")  # not a key name
    (base / "notes.txt").write_bytes(b"x")
    os.symlink(base / fs_file_name(key(0)), base / fs_file_name(key(50)))  # symlinks are never objects
    (base / fs_file_name(key(60))).mkdir()
    (base / fs_file_name(key(70))).write_bytes(b"")  # empty: not an object
    a = make_fs(base, checksum="crc32")
    assert a.report_status()["stored_object_count"] == 5
    assert a.usage().total_bytes_used == sum(100 + i for i in range(5))  # payload sizes, trailer excluded
    assert a.usage_by_salt() == {"": 100 + 102 + 104, "s": 101 + 103}
    assert (base / "README.data").exists() and (base / "notes.txt").exists()
    assert make_fs(base, checksum="crc32", recover_on_start=False).report_status()["stored_object_count"] == 0


@pytest.mark.parametrize("tmp_dir", [".tmp", None])
def test_recovery_removes_stale_temp_files_of_dead_writers_only(make_fs, tmp_path, tmp_dir):
    base = tmp_path / "l2"
    a = make_fs(base, relative_tmp_dir=tmp_dir)
    host = a._tmp_prefix.split(".")[1]  # ".lmcs-<host>.<pid>."
    tmp = Path(a.tmp_dir)
    stale = tmp / f".{host}.{dead_pid()}.0.tmp"
    live = tmp / f".{host}.{os.getppid()}.0.tmp"
    old_foreign = tmp / ".lmcs-elsewhere.123.0.tmp"
    new_foreign = tmp / ".lmcs-elsewhere.124.0.tmp"
    other_tool = tmp / "something.tmp"
    for p in (stale, live, old_foreign, new_foreign, other_tool):
        p.write_bytes(b"partial")
    two_hours_ago = time.time() - 7200
    os.utime(old_foreign, (two_hours_ago, two_hours_ago))
    b = make_fs(base, relative_tmp_dir=tmp_dir)
    assert sorted(p.name for p in tmp.iterdir() if p.suffix == ".tmp") == sorted(
        p.name for p in (live, new_foreign, other_tool))
    assert b.report_status()["stale_tmp_removed"] == 2
    assert b.report_status()["stored_object_count"] == 0


# -- listing ------------------------------------------------------------------------------------


def list_all(a: FSL2Adapter, model: str | None, page_size: int, between_pages=None) -> list[list]:
    pages, token = [], None
    for _ in range(10_000):
        page = a.list_keys(model, page_size, token)
        pages.append([(e.key.to_object_key(), e.size_bytes) for e in page.entries])
        token = page.next_page_token
        if token is None:
            return pages
        if between_pages:
            between_pages(len(pages))
    raise AssertionError("listing did not finish")


def test_listing_pages_cover_every_key_once_in_name_order(make_fs):
    a = make_fs(checksum="crc32")
    keys = [key(i) for i in range(23)] + [key(i, model="other") for i in range(5)]
    a.store(keys, [obj(i, 10 + i) for i in range(len(keys))]).result(10)
    pages = list_all(a, MODEL, 5)
    assert [len(p) for p in pages] == [5, 5, 5, 5, 3]
    flat = [k for p in pages for k in p]
    assert flat == sorted(((k, 10 + i) for i, k in enumerate(keys[:23])), key=lambda e: fs_file_name(e[0]))
    assert sorted(fs_file_name(k) for p in list_all(a, None, 1000) for k, _ in p) == sorted(map(fs_file_name, keys))
    assert list_all(a, "absent", 3) == [[]]


def test_listing_while_stores_and_deletes_continue_lists_stable_keys_exactly_once(make_fs):
    a = make_fs()
    stable = [key(i) for i in range(0, 400, 2)]
    a.store(stable, [obj(i, 8) for i in range(len(stable))]).result(10)
    churn = iter(range(1, 10_000, 2))

    def store_more(page_no: int) -> None:
        new = [key(next(churn)) for _ in range(7)]  # names spread over the whole order
        assert a.store(new, [obj(0, 8)] * 7).result(10) == [True] * 7
        if page_no % 3 == 0:
            a.delete(new[:3]).result(10)

    seen = [k for p in list_all(a, MODEL, 9, store_more) for k, _ in p]
    assert len(seen) == len(set(seen))  # no key twice
    assert set(stable) <= set(seen)


def test_malformed_cursor_and_page_size_raise_value_error(make_fs):
    a = make_fs()
    a.store([key(1), key(2)], [obj(1), obj(2)]).result(10)
    token = a.list_keys(MODEL, 1).next_page_token
    assert token is not None and a.list_keys(MODEL, 1, token).entries[0].key.to_object_key() in (key(1), key(2))
    for bad in ["", "garbage", "fs1.!!!", token[:-3] + "@@@", encode_cursor("notes.txt"), "fs1." + "A" * 5]:
        with pytest.raises(ValueError):
            a.list_keys(MODEL, 1, bad)
    with pytest.raises(ValueError):
        a.list_keys(MODEL, 0)


@settings(max_examples=200, deadline=None)
@given(model=st.text(st.characters(blacklist_characters="@\x00", blacklist_categories=("Cs",)), max_size=40),
       salt=st.text(st.characters(blacklist_characters="@/\\\x00", blacklist_categories=("Cs",)), max_size=20),
       chunk_hash=st.binary(min_size=0, max_size=64),
       garbage=st.one_of(st.text(max_size=40), st.text(max_size=60).map("fs1.".__add__),
                         st.binary(max_size=80).map(lambda b: encode_cursor(b.decode("latin-1")))))
def test_cursor_codec_round_trips_names_and_rejects_anything_else(model, salt, chunk_hash, garbage):
    try:
        name = fs_file_name(ObjectKey(chunk_hash, model, 5, 3, salt))
    except ValueError:
        name = None  # a key the FS tier cannot name
    if name is not None:
        assert decode_cursor(encode_cursor(name)) == name
    try:
        decoded = decode_cursor(garbage)
    except ValueError:
        return
    assert try_parse_fs_file_name(decoded) is not None


# -- paths and config ---------------------------------------------------------------------------


def test_keys_never_name_a_path_outside_base_path(make_fs, tmp_path):
    a = make_fs()
    for model in ["..", "../..", "a/../../etc", "/abs", "x/./y"]:
        k = ObjectKey(b"\x01" * 32, model, 1, 0, "")
        assert a.store([k], [obj(1, 8)]).result(10) == [True]
        assert os.path.dirname(a._path(k)) == str(tmp_path / "l2")
    assert sorted(os.listdir(tmp_path)) == ["l2"]
    # A model name the FS codec cannot represent fails that store only.
    bad = ObjectKey(b"\x01" * 32, "a-SEP-b", 1, 0, "")
    assert a.store([bad], [obj(1, 8)]).result(10) == [False]
    assert a.lookup_and_lock([bad]).result(10) == [False]  # a plain miss elsewhere
    assert a.load([bad], [torch.zeros(8, dtype=torch.uint8)]).result(10) == [False]
    assert a.report_status()["failures"] == {"store": 1, "lookup": 0, "load": 0, "delete": 0}


def test_config_creates_directories_and_validates(tmp_path):
    base = tmp_path / "deep" / "er" / "l2"
    a = FSL2Adapter(FSAdapterConfig(base_path=str(base), relative_tmp_dir="work"), L2AdapterContext(0, "fs"))
    a.close()
    assert (base / "work").is_dir()
    with pytest.raises(FileNotFoundError):  # one level, as LMCache
        FSL2Adapter(FSAdapterConfig(base_path=str(base), relative_tmp_dir="a/b"), L2AdapterContext(0, "fs"))
    cases = {
        "missing required field `base_path`": {},
        "base_path must be a non-empty path": {"base_path": ""},
        "checksum must be one of 'none', 'crc32', got 'md5'": {"base_path": "/x", "checksum": "md5"},
        "relative_tmp_dir must be a relative path": {"base_path": "/x", "relative_tmp_dir": "../up"},
        "got '/abs'": {"base_path": "/x", "relative_tmp_dir": "/abs"},
        "must not end in '.data'": {"base_path": "/x", "relative_tmp_dir": "t.data"},
        "io_workers must be >= 0": {"base_path": "/x", "io_workers": -1},
        "read_ahead_size must be a positive integer": {"base_path": "/x", "read_ahead_size": 0},
        "max_capacity_gb must be >= 0": {"base_path": "/x", "max_capacity_gb": -1},
        "unknown field `bogus`": {"base_path": "/x", "bogus": 1},
    }
    for message, doc in cases.items():
        with pytest.raises(msgspec.ValidationError, match=message.replace("(", r"\(")):
            msgspec.convert(doc, FSAdapterConfig)
    # LMCache's own keys load unchanged.
    cfg = msgspec.convert({"base_path": "/x", "relative_tmp_dir": ".tmp", "read_ahead_size": 4096,
                           "use_odirect": True, "checksum": "crc32", "max_capacity_gb": 2,
                           "recover_on_start": False}, FSAdapterConfig)
    assert cfg.checksum == "crc32" and cfg.max_capacity_gb == 2


def test_io_workers_sizes_the_adapter_pool(make_fs):
    assert make_fs(workers=2)._pool._max_workers == 2  # the server's default from the context
    assert make_fs(workers=2, io_workers=6)._pool._max_workers == 6


def test_status_names_the_adapter(make_fs, tmp_path):
    status = make_fs(checksum="crc32").report_status()
    assert status["type"] == "FSL2Adapter" and status["is_healthy"] is True
    assert status["base_path"] == str(tmp_path / "l2") and status["checksum"] == "crc32"
    assert status["tmp_dir"] == str(tmp_path / "l2" / ".tmp")
