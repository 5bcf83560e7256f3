"""Token lists off the wire: decoded once per distinct list (transport/tokens.py), hashed once (sessions)."""

from __future__ import annotations

import msgspec
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from lmcache_core.client import make_key
from lmcache_core.hashing import PackedTokens, TokenHasher, pack_tokens
from lmcache_core.sessions import Session
from lmcache_core.transport import messages as m
from lmcache_core.transport import wire
from lmcache_core.transport.tokens import KeyDecoder, TokenListCache
from lmcache_core.transport.wire import MalformedRequest, Op

PLAIN = msgspec.msgpack.Decoder(m.IPCCacheServerKey)


def key_frame(tokens, rid="r", **kw):
    return msgspec.msgpack.encode(make_key(tokens, rid, **kw))


@settings(max_examples=150, deadline=None)
@given(tokens=st.lists(st.integers(0, 2**32 - 1), max_size=600), rid=st.text(max_size=20),
       salt=st.sampled_from(["", "tenant-a"]), readers=st.integers(0, 4))
def test_the_key_decodes_as_the_plain_decoder_does(tokens, rid, salt, readers):
    frame = key_frame(tokens, rid, cache_salt=salt, num_kv_readers=readers)
    ours = KeyDecoder(TokenListCache()).decode(frame)
    plain = PLAIN.decode(frame)
    assert ours == plain
    assert isinstance(ours.token_ids, PackedTokens) and ours.token_ids.packed == pack_tokens(tokens)
    assert list(ours.token_ids) == tokens and len(ours.token_ids) == len(tokens)
    # encoded again (our client, a relay), it is the same frame
    assert wire._encoder.encode(ours) == frame


def test_a_repeated_list_is_decoded_once_and_shared():
    cache = TokenListCache()
    decoder = KeyDecoder(cache)
    tokens = list(range(1000, 3048))
    a = decoder.decode(key_frame(tokens, "a"))
    b = decoder.decode(key_frame(tokens, "b", worker_id=3))  # another request, same tokens
    c = decoder.decode(key_frame(tokens[:-1], "c"))
    assert a.token_ids is b.token_ids and a.request_id == "a" and b.worker_id == 3
    assert c.token_ids is not a.token_ids and len(c.token_ids) == 2047
    assert (cache.hits, cache.misses, len(cache)) == (1, 2, 2)


@pytest.mark.parametrize("bad, where", [
    ([1, "2"], "$.token_ids[1]"),
    ([1, True], "$.token_ids[1]"),
    ({"a": 1}, "$.token_ids"),
])
def test_a_bad_token_list_is_malformed_with_the_plain_decoders_words(bad, where):
    good = make_key([1, 2], "r")
    frame = msgspec.msgpack.encode({**msgspec.to_builtins(good), "token_ids": bad})
    with pytest.raises(msgspec.ValidationError) as plain:
        PLAIN.decode(frame)
    with pytest.raises(msgspec.ValidationError) as ours:
        KeyDecoder(TokenListCache()).decode(frame)
    assert str(ours.value) == str(plain.value) and where in str(ours.value)
    with pytest.raises(MalformedRequest, match=r"token_ids"):
        wire.decode_request([b"\x01", wire.encode_operation(Op.LOOKUP), frame, msgspec.msgpack.encode(1)])


@pytest.mark.parametrize("outside", [2**32, -1])
def test_a_token_outside_uint32_stays_a_plain_list_for_the_op_to_refuse_in_band(outside):
    cache = TokenListCache()
    key = KeyDecoder(cache).decode(key_frame([1, outside], "r"))
    assert key.token_ids == [1, outside] and type(key.token_ids) is list and len(cache) == 0


def test_the_cache_is_bounded_in_entries_and_bytes():
    cache = TokenListCache(max_entries=3, max_bytes=1 << 20)
    decoder = KeyDecoder(cache)
    for i in range(5):
        decoder.decode(key_frame([i] * 100, f"r{i}"))
    assert len(cache) == 3
    first = decoder.decode(key_frame([4] * 100, "again"))
    assert cache.hits == 1 and list(first.token_ids) == [4] * 100
    small = TokenListCache(max_entries=100, max_bytes=60_000)
    big = KeyDecoder(small)
    for i in range(10):
        big.decode(key_frame([70_000 + i] * 1000, f"b{i}"))  # ~5 KB raw + 4 KB packed each
    assert small._bytes <= 60_000 and 1 <= len(small) < 10
    huge = [70_000] * 4000  # past a quarter of the budget: decoded, not kept
    assert list(big.decode(key_frame(huge, "h")).token_ids) == huge and len(small) < 10


class CountingHasher(TokenHasher):
    def __init__(self) -> None:
        super().__init__(chunk_size=256)
        self.chunks_hashed = 0

    def hash_packed(self, packed, start_chunk=0, end_chunk=None, prefix=None):
        out = super().hash_packed(packed, start_chunk, end_chunk, prefix)
        self.chunks_hashed += len(out)
        return out


def test_requests_with_the_same_packed_tokens_hash_them_once():
    hasher = CountingHasher()
    tokens = PackedTokens(pack_tokens(list(range(5000, 5000 + 2048))))
    first = Session("a", hasher).hashes_for(tokens, 0, 2048)
    assert hasher.chunks_hashed == 8
    second = Session("b", hasher).hashes_for(tokens, 0, 1024)
    third = Session("c", hasher).hashes_for(tokens, 512, 2048)
    assert hasher.chunks_hashed == 8  # no more hashing
    assert second == first[:4] and third == first[2:]
    assert first == Session("d", CountingHasher()).hashes_for(list(range(5000, 5000 + 2048)), 0, 2048)
    other = CountingHasher()  # another server's hasher never reads this one's memo
    assert Session("e", other).hashes_for(tokens, 0, 2048) == first and other.chunks_hashed == 8


def test_packed_tokens_read_like_the_list():
    values = [0, 1, 2**32 - 1, 70_000, 5]
    t = PackedTokens(pack_tokens(values))
    assert t == values and t == tuple(values) and values == t and t != values[:-1]
    assert t[2] == 2**32 - 1 and t[-1] == 5 and t[1:3] == [1, 2**32 - 1] and list(t) == values
    assert pack_tokens(t, 1, 3) == pack_tokens(values, 1, 3) and pack_tokens(t, -2) == pack_tokens(values, -2)
    assert pack_tokens(t, 4, 2) == b"" and pack_tokens(t) is t.packed
