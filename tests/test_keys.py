"""ObjectKey invariants, the wire form, kv_rank packing and the FS / S3 name codecs."""

from __future__ import annotations

import json
import posixpath
import sys
import tracemalloc
from pathlib import Path

import msgspec
import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from lmcache_core.keys import (
    MAX_CACHE_SALT_CHARS,
    MAX_CHUNK_HASH_BYTES,
    UINT32_MAX,
    EncodedObjectKey,
    InvalidKeyError,
    KeyNameError,
    KVRank,
    ObjectKey,
    UnencodableKeyError,
    fs_file_name,
    kv_rank_for_worker,
    kv_ranks_for_world,
    object_name,
    object_name_prefix,
    pack_kv_rank,
    parse_fs_file_name,
    parse_object_name,
    try_parse_fs_file_name,
    try_parse_object_name,
    unpack_kv_rank,
    validate_cache_salt,
    validate_key,
    validate_model_name,
)

HASH0 = bytes.fromhex("084547b6c40ed5b05ba8cd0305db5bf74d5617673948d9ed193ab7d6cbc484d4")

# From protocol/test_vectors.json (computed by lmcache==0.5.6), embedded so the suite runs anywhere.
FS_UNSALTED = "meta-llama-SEP-Llama-3.1-8B@0x01000100@0@" + HASH0.hex() + ".data"
FS_SALTED = "test-model@0x02010201@a@" + HASH0.hex() + "@alice.data"
S3_UNSALTED = "meta-llama/Llama-3.1-8B@01000100@0@" + HASH0.hex()
S3_SALTED = "test-model@02010201@a@" + HASH0.hex() + "@alice"
UNSALTED = ObjectKey(HASH0, "meta-llama/Llama-3.1-8B", 0x01000100)
SALTED = ObjectKey(HASH0, "test-model", 0x02010201, 10, "alice")


def _vectors_file() -> Path:
    # Vectors computed with lmcache==0.5.6 (facts about its hashing and keys),
    # kept in the repository so the check needs nothing beside it.
    return Path(__file__).resolve().parent / "data" / "test_vectors.json"


# -- strategies -------------------------------------------------------------------

# Model names: any text without '@' or NUL, biased towards the characters that matter to the codecs.
model_names = st.lists(
    st.one_of(
        st.sampled_from(["/", "-", "SEP", "-SEP-", ".", "..", "\\", "a"]),
        st.text(alphabet=st.characters(blacklist_characters="@\x00", blacklist_categories=("Cs",)), max_size=6),
    ),
    max_size=8,
).map("".join)
salts = st.text(
    alphabet=st.characters(blacklist_characters="@/\\\x00", blacklist_categories=("Cs",)),
    max_size=MAX_CACHE_SALT_CHARS,
)
uint32 = st.integers(0, UINT32_MAX)
hashes = st.binary(max_size=MAX_CHUNK_HASH_BYTES)


@st.composite
def valid_keys(draw: st.DrawFn) -> ObjectKey:
    return ObjectKey.validated(draw(hashes), draw(model_names), draw(uint32), draw(uint32), draw(salts))


# -- ObjectKey --------------------------------------------------------------------


def test_key_is_frozen_hashable_and_compares_by_value() -> None:
    a = ObjectKey(HASH0, "m", 1)
    b = ObjectKey(bytes(HASH0), "m", 1, 0, "")
    assert a == b and hash(a) == hash(b)
    assert {a: 1}[b] == 1
    assert a != ObjectKey(HASH0, "m", 1, cache_salt="x")  # a salt isolates tenants
    assert a != ObjectKey(HASH0, "m", 1, object_group_id=1)
    with pytest.raises(AttributeError):
        a.kv_rank = 2  # type: ignore[misc]


def test_key_memory_per_object_is_small() -> None:
    # L1 keeps one key per object and must stay within 256 bytes of metadata per object.
    rank = kv_rank_for_worker(1, 0)
    key = ObjectKey(HASH0, "model", rank)
    assert sys.getsizeof(key) <= 64
    count = 20_000
    hashes_ = [i.to_bytes(32, "big") for i in range(count)]
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        keys = [ObjectKey(h, "model", rank) for h in hashes_]
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    per_key = (after - before - sys.getsizeof(keys)) / count
    assert per_key <= 64  # the key itself; the 32-byte hash adds ~72 (bytes header included)


def test_parsed_keys_share_model_salt_and_rank_objects() -> None:
    a = parse_fs_file_name(FS_SALTED)
    b = parse_fs_file_name("".join(FS_SALTED))  # an equal but separate string
    assert a.model_name is b.model_name and a.cache_salt is b.cache_salt and a.kv_rank is b.kv_rank


@given(valid_keys())
def test_validated_accepts_valid_parts_and_validate_key_agrees(key: ObjectKey) -> None:
    assert validate_key(key) is key
    assert key.validate() is key


INVALID_PARTS = [
    ("chunk_hash", dict(chunk_hash="ab")),
    ("chunk_hash", dict(chunk_hash=bytearray(b"ab"))),
    ("chunk_hash", dict(chunk_hash=memoryview(b"ab"))),
    ("chunk_hash", dict(chunk_hash=b"x" * (MAX_CHUNK_HASH_BYTES + 1))),
    ("model_name", dict(model_name="a@b")),
    ("model_name", dict(model_name="a\x00b")),
    ("model_name", dict(model_name=None)),
    ("model_name", dict(model_name=b"model")),
    ("kv_rank", dict(kv_rank=-1)),
    ("kv_rank", dict(kv_rank=UINT32_MAX + 1)),
    ("kv_rank", dict(kv_rank=True)),
    ("kv_rank", dict(kv_rank="1")),
    ("kv_rank", dict(kv_rank=1.0)),
    ("object_group_id", dict(object_group_id=-1)),
    ("object_group_id", dict(object_group_id=UINT32_MAX + 1)),
    ("object_group_id", dict(object_group_id=False)),
    ("cache_salt", dict(cache_salt="a@b")),
    ("cache_salt", dict(cache_salt="a/b")),
    ("cache_salt", dict(cache_salt="a\\b")),
    ("cache_salt", dict(cache_salt="a\x00b")),
    ("cache_salt", dict(cache_salt="x" * (MAX_CACHE_SALT_CHARS + 1))),
    ("cache_salt", dict(cache_salt=None)),
]


@pytest.mark.parametrize(("field", "override"), INVALID_PARTS)
def test_validated_rejects_each_invalid_part_naming_the_field(field: str, override: dict) -> None:
    parts = dict(chunk_hash=HASH0, model_name="m", kv_rank=1, object_group_id=0, cache_salt="")
    parts.update(override)
    with pytest.raises(InvalidKeyError) as info:
        ObjectKey.validated(**parts)
    assert info.value.field == field
    assert str(info.value).startswith(field)
    # The unchecked constructor accepts it (when the type allows); validate_key then refuses it.
    with pytest.raises(InvalidKeyError):
        validate_key(ObjectKey(**parts))


def test_limits_are_inclusive() -> None:
    ObjectKey.validated(b"x" * MAX_CHUNK_HASH_BYTES, "", UINT32_MAX, UINT32_MAX, "s" * MAX_CACHE_SALT_CHARS)
    ObjectKey.validated(b"", "a/b/../c", 0)  # '/' and dots are fine in a key; the codecs decide


def _with_one_of(chars: str) -> st.SearchStrategy[str]:
    return st.tuples(st.text(max_size=10), st.sampled_from(chars), st.text(max_size=10)).map("".join)


@given(_with_one_of("@\x00"))
def test_invalid_model_names_are_all_rejected(name: str) -> None:
    with pytest.raises(InvalidKeyError):
        validate_model_name(name)


@given(
    st.one_of(
        _with_one_of("@/\\\x00"),
        st.text(min_size=MAX_CACHE_SALT_CHARS + 1, max_size=MAX_CACHE_SALT_CHARS + 20),
    )
)
def test_invalid_salts_are_all_rejected(salt: str) -> None:
    with pytest.raises(InvalidKeyError):
        validate_cache_salt(salt)


@given(st.one_of(st.integers(max_value=-1), st.integers(min_value=UINT32_MAX + 1)))
def test_out_of_range_ints_are_rejected(value: int) -> None:
    for field in ("kv_rank", "object_group_id"):
        with pytest.raises(InvalidKeyError) as info:
            ObjectKey.validated(HASH0, "m", **{"kv_rank": 0, field: value})
        assert info.value.field == field


def test_validate_key_rejects_non_keys() -> None:
    with pytest.raises(InvalidKeyError):
        validate_key(("h", "m", 1))


# -- EncodedObjectKey --------------------------------------------------------------


@given(valid_keys())
def test_encoded_round_trip_through_json(key: ObjectKey) -> None:
    encoded = key.to_encoded()
    assert encoded.chunk_hash_hex == key.chunk_hash.hex()
    assert EncodedObjectKey.from_object_key(key) == encoded
    wire = msgspec.json.encode(encoded)
    assert msgspec.json.decode(wire, type=EncodedObjectKey).to_object_key() == key


def test_encoded_defaults_and_json_shape() -> None:
    decoded = msgspec.json.decode(
        b'{"chunk_hash_hex": "0a0B", "model_name": "m", "kv_rank": 16777472}', type=EncodedObjectKey
    )
    assert decoded.to_object_key() == ObjectKey(b"\x0a\x0b", "m", 0x01000100, 0, "")
    assert json.loads(msgspec.json.encode(SALTED.to_encoded())) == {
        "chunk_hash_hex": HASH0.hex(), "model_name": "test-model", "kv_rank": 0x02010201,
        "object_group_id": 10, "cache_salt": "alice",
    }


@pytest.mark.parametrize(
    ("text", "expected"),
    [("", b""), ("ABcd", b"\xab\xcd"), ("ab cd", b"\xab\xcd"), (" ab\tcd\n", b"\xab\xcd")],
)
def test_encoded_hex_follows_python_fromhex(text: str, expected: bytes) -> None:
    assert EncodedObjectKey(text, "m", 0).to_object_key().chunk_hash == expected


@pytest.mark.parametrize("text", ["abc", "zz", "0x00", "a b", "\u0660\u0661"])
def test_encoded_bad_hex_is_rejected(text: str) -> None:
    with pytest.raises(InvalidKeyError) as info:
        EncodedObjectKey(text, "m", 0).to_object_key()
    assert info.value.field == "chunk_hash_hex"


@pytest.mark.parametrize(
    ("encoded", "field"),
    [
        (EncodedObjectKey("00" * (MAX_CHUNK_HASH_BYTES + 1), "m", 0), "chunk_hash_hex"),
        (EncodedObjectKey("00", "a@b", 0), "model_name"),
        (EncodedObjectKey("00", "m", -1), "kv_rank"),
        (EncodedObjectKey("00", "m", 0, -1), "object_group_id"),
        (EncodedObjectKey("00", "m", 0, 0, "a/b"), "cache_salt"),
        (EncodedObjectKey(5, "m", 0), "chunk_hash_hex"),  # type: ignore[arg-type]
    ],
)
def test_encoded_invariants_are_checked(encoded: EncodedObjectKey, field: str) -> None:
    with pytest.raises(InvalidKeyError) as info:
        encoded.to_object_key()
    assert info.value.field == field


# -- kv_rank ----------------------------------------------------------------------


def test_kv_rank_vectors() -> None:
    assert kv_rank_for_worker(1, 0) == 0x01000100 == 16777472
    assert kv_rank_for_worker(2, 1) == 0x02010201
    assert kv_rank_for_worker(4, 3) == 0x04030403
    assert kv_ranks_for_world(2) == (0x02000200, 0x02010201)
    assert unpack_kv_rank(0x04030403) == KVRank(4, 3, 4, 3)


def test_kv_rank_for_worker_shares_int_objects() -> None:
    assert kv_rank_for_worker(3, 2) is kv_rank_for_worker(3, 2)
    assert kv_ranks_for_world(3)[2] is kv_rank_for_worker(3, 2)


@given(st.integers(0, 255), st.integers(0, 255), st.integers(0, 255), st.integers(0, 255))
def test_pack_unpack_round_trip(ws: int, gr: int, lws: int, lr: int) -> None:
    rank = pack_kv_rank(ws, gr, lws, lr)
    assert 0 <= rank <= UINT32_MAX
    assert unpack_kv_rank(rank) == (ws, gr, lws, lr)


@given(uint32)
def test_unpack_pack_round_trip(rank: int) -> None:
    assert pack_kv_rank(*unpack_kv_rank(rank)) == rank


@pytest.mark.parametrize(
    "args", [(256, 0, 1, 0), (1, -1, 1, 0), (1, 0, 1, 256), (1, 0, True, 0), (1.0, 0, 1, 0)]
)
def test_pack_kv_rank_range_checks(args: tuple) -> None:
    with pytest.raises(InvalidKeyError):
        pack_kv_rank(*args)


@pytest.mark.parametrize("args", [(0, 0), (2, 2), (256, 0), (1, -1), (True, 0)])
def test_kv_rank_for_worker_checks(args: tuple) -> None:
    with pytest.raises(InvalidKeyError):
        kv_rank_for_worker(*args)


@pytest.mark.parametrize("rank", [-1, UINT32_MAX + 1, True])
def test_unpack_kv_rank_range_check(rank: int) -> None:
    with pytest.raises(InvalidKeyError):
        unpack_kv_rank(rank)


@pytest.mark.parametrize("ws", [0, 256, True])
def test_kv_ranks_for_world_checks(ws: int) -> None:
    with pytest.raises(InvalidKeyError):
        kv_ranks_for_world(ws)


# -- FS names -----------------------------------------------------------------------


def test_fs_name_vectors() -> None:
    assert fs_file_name(UNSALTED) == FS_UNSALTED
    assert fs_file_name(SALTED) == FS_SALTED
    assert parse_fs_file_name(FS_UNSALTED) == UNSALTED
    assert parse_fs_file_name(FS_SALTED) == SALTED
    golden = "golden-model@0x01000100@0@" + HASH0.hex() + ".data"
    assert parse_fs_file_name(golden) == ObjectKey(HASH0, "golden-model", 0x01000100)


def test_vectors_file_names_and_ranks() -> None:
    path = _vectors_file()
    doc = json.loads(path.read_text())
    names = doc["object_names"]
    fs = {k: v for k, v in names.items() if k.startswith("fs_") and k not in ("fs_rule",)}
    assert sorted(fs.values()) == sorted([FS_UNSALTED, FS_SALTED])
    assert names["s3_unsalted"] == S3_UNSALTED == object_name(UNSALTED)
    assert names["s3_salted"] == S3_SALTED == object_name(SALTED)
    native = [v for k, v in names.items() if k.startswith("native_connector")]
    assert native == [object_name(UNSALTED)]
    ranks = doc["kv_rank"]
    assert int(ranks["ws1_worker0"], 16) == kv_rank_for_worker(1, 0) == ranks["ws1_worker0_decimal"]
    assert int(ranks["ws2_worker1"], 16) == kv_rank_for_worker(2, 1)
    assert int(ranks["ws4_worker3"], 16) == kv_rank_for_worker(4, 3)
    for name in doc["end_to_end_store"]["fs_l2_files"]:
        key = parse_fs_file_name(name)
        assert (key.model_name, key.kv_rank) == ("vector-model", 0x01000100)


def _fs_encodable(model: str) -> bool:
    return model.replace("/", "-SEP-").replace("-SEP-", "/") == model


@given(valid_keys())
@example(ObjectKey(b"", "", 0))
@example(ObjectKey(HASH0, "..", 0, 0, ".."))
@example(ObjectKey(HASH0, "a-SEP-b", 0))
@example(ObjectKey(HASH0, "-SEP/", 0))
@example(ObjectKey(HASH0, "x", 0, 0, "s.data"))
@settings(max_examples=300)
def test_fs_name_round_trip_or_refusal(key: ObjectKey) -> None:
    salt = f"@{key.cache_salt}" if key.cache_salt else ""
    expected_bytes = len(
        f"{key.model_name.replace('/', '-SEP-')}@0x{key.kv_rank:08x}@{key.object_group_id:x}"
        f"@{key.chunk_hash.hex()}{salt}.data".encode()
    )
    try:
        name = fs_file_name(key)
    except UnencodableKeyError:
        assert not _fs_encodable(key.model_name) or expected_bytes > 255
        return
    assert _fs_encodable(key.model_name) and expected_bytes <= 255
    assert parse_fs_file_name(name) == key
    # One plain directory entry whatever the key says.
    assert "/" not in name and "\x00" not in name and name not in (".", "..")
    assert posixpath.dirname(posixpath.normpath(posixpath.join("/base", name))) == "/base"


def test_fs_name_refuses_ambiguous_model_names() -> None:
    for model in ("a-SEP-b", "-SEP/", "x/-SEP-"):
        with pytest.raises(UnencodableKeyError) as info:
            fs_file_name(ObjectKey(HASH0, model, 1))
        assert info.value.field == "model_name"
    # '/' alone and dot segments are fine: they become one file name.
    assert fs_file_name(ObjectKey(HASH0, "../../etc", 1)).startswith("..-SEP-..-SEP-etc@")


def test_fs_name_refuses_names_over_name_max() -> None:
    key = ObjectKey(HASH0, "m" * 60, 1, 0, "s" * 128)
    with pytest.raises(UnencodableKeyError):
        fs_file_name(key)
    assert object_name(key)  # S3's limit is 1024 bytes


def test_fs_name_validates_trusted_keys() -> None:
    with pytest.raises(InvalidKeyError):
        fs_file_name(ObjectKey(HASH0, "m", 1, 0, "../../x"))
    with pytest.raises(InvalidKeyError):
        fs_file_name(ObjectKey(HASH0, "m", -5))


@pytest.mark.parametrize(
    "name",
    [
        FS_UNSALTED[:-5],  # no suffix
        FS_UNSALTED + ".tmp",
        FS_UNSALTED.replace(".data", ".DATA"),
        FS_UNSALTED.replace("@0x01000100@", "@01000100@"),  # the S3 form of the rank
        FS_UNSALTED.replace("@0x01000100@", "@0x1000100@"),  # unpadded rank
        FS_UNSALTED.replace("@0x01000100@", "@0X01000100@"),
        FS_UNSALTED.replace("@0x01000100@", "@0x0100010G@"),
        FS_UNSALTED.replace("@0@", "@00@"),  # padded group
        FS_UNSALTED.replace("@0@", "@@"),
        FS_UNSALTED.replace("@0@", "@A@"),
        FS_UNSALTED.replace("084547b6", "084547B6"),  # uppercase hash
        FS_UNSALTED.replace("084547b6", "84547b6"),  # odd length
        FS_SALTED.replace("@alice", "@"),  # empty salt field
        FS_SALTED.replace("@alice", "@al@ice"),  # six fields
        FS_SALTED.replace("@alice", "@" + "s" * 129),
        "dir/" + FS_UNSALTED,
        "meta-llama/Llama@0x01000100@0@" + HASH0.hex() + ".data",  # '/' cannot be in a file name
        "a@b@0x01000100@0@" + HASH0.hex() + ".data",
        "m@0x01000100@0@" + "00" * 65 + ".data",  # hash over 64 bytes
        "m@0x01000100@100000000@" + HASH0.hex() + ".data",  # group over 32 bits
        "",
        ".data",
        "..",
        "x\x00@0x01000100@0@.data",
        S3_UNSALTED,
    ],
)
def test_parse_fs_rejects_names_we_would_not_write(name: str) -> None:
    with pytest.raises(KeyNameError):
        parse_fs_file_name(name)
    assert try_parse_fs_file_name(name) is None


def test_parse_rejects_non_strings() -> None:
    for value in (None, b"x.data", 5):
        with pytest.raises(KeyNameError):
            parse_fs_file_name(value)  # type: ignore[arg-type]
        with pytest.raises(KeyNameError):
            parse_object_name(value)  # type: ignore[arg-type]


@given(st.text(alphabet=st.sampled_from("ab/-SEP@0x1.dt\\"), max_size=40))
@example("-SEP-@0x00000000@0@.data")
@example("a-SEP--SEP-@0x00000000@0@.data")
def test_any_fs_name_that_parses_is_canonical(name: str) -> None:
    key = try_parse_fs_file_name(name)
    if key is not None:
        assert fs_file_name(key) == name
        assert "/" not in name


# -- S3 / native object names -----------------------------------------------------------


def test_object_name_vectors() -> None:
    assert object_name(UNSALTED) == S3_UNSALTED
    assert object_name(SALTED) == S3_SALTED
    assert parse_object_name(S3_UNSALTED) == UNSALTED
    assert parse_object_name(S3_SALTED) == SALTED
    assert object_name_prefix("meta-llama/Llama-3.1-8B") == "meta-llama/Llama-3.1-8B@"
    assert S3_UNSALTED.startswith(object_name_prefix(UNSALTED.model_name))


def _object_safe(model: str) -> bool:
    return not any(seg in ("", ".", "..") for seg in model.split("/")[:-1])


@given(valid_keys())
@example(ObjectKey(b"", "", 0))
@example(ObjectKey(HASH0, "a-SEP-b/..x", 0, 3, "s"))
@settings(max_examples=300)
def test_object_name_round_trip_or_refusal(key: ObjectKey) -> None:
    try:
        name = object_name(key)
    except UnencodableKeyError:
        assert not _object_safe(key.model_name)
        return
    assert _object_safe(key.model_name)
    assert parse_object_name(name) == key
    # Read as a relative path, the name stays below its root.
    resolved = posixpath.normpath(posixpath.join("/root", name))
    assert resolved.startswith("/root/") and "\x00" not in name


@pytest.mark.parametrize("model", ["/abs", "a//b", "./a", "a/./b", "a/../../b", "../x"])
def test_object_name_refuses_escaping_model_names(model: str) -> None:
    with pytest.raises(UnencodableKeyError) as info:
        object_name(ObjectKey(HASH0, model, 1))
    assert info.value.field == "model_name"
    with pytest.raises(UnencodableKeyError):
        object_name_prefix(model)
    forged = f"{model}@01000100@0@{HASH0.hex()}"
    with pytest.raises(KeyNameError):
        parse_object_name(forged)


def test_object_name_allows_trailing_slash_and_dots_in_last_segment() -> None:
    for model in ("a/", "..", "a/..", "a/..b", "a/b."):
        key = ObjectKey(HASH0, model, 1)
        assert parse_object_name(object_name(key)) == key


@pytest.mark.parametrize(
    "name",
    [
        S3_UNSALTED + ".data",
        "0x".join(S3_UNSALTED.split("@01000100")) ,
        S3_UNSALTED.replace("@01000100@", "@1000100@"),
        S3_UNSALTED.replace("@0@", "@00@"),
        S3_UNSALTED.replace("084547b6", "084547B6"),
        S3_SALTED.replace("@alice", "@"),
        S3_SALTED + "@x",
        FS_UNSALTED,
        "m@01000100@0",
        "",
    ],
)
def test_parse_object_name_rejects_names_we_would_not_write(name: str) -> None:
    with pytest.raises(KeyNameError):
        parse_object_name(name)
    assert try_parse_object_name(name) is None


@given(st.text(alphabet=st.sampled_from("ab/.@0123456789ef-\\"), max_size=40))
def test_any_object_name_that_parses_is_canonical(name: str) -> None:
    key = try_parse_object_name(name)
    if key is not None:
        assert object_name(key) == name


@given(valid_keys())
def test_names_of_distinct_keys_differ(key: ObjectKey) -> None:
    other = ObjectKey(key.chunk_hash, key.model_name, key.kv_rank ^ 1, key.object_group_id, key.cache_salt)
    assume(_object_safe(key.model_name))
    assert object_name(key) != object_name(other)
