"""Cache keys: :class:`ObjectKey`, its wire form, ``kv_rank`` packing and L2 name codecs.

An :class:`ObjectKey` names one stored chunk object: ``(chunk_hash, model_name,
kv_rank, object_group_id, cache_salt)``. Equal tokens give equal keys, and the
L2 names below are the ones LMCache 0.5.6 writes, so an L2 filled by one server
is readable by the other (LMCache 0.5.6's key and L2 naming; vectors it computed:
``tests/data/test_vectors.json``).

Validation and the hot path
---------------------------
``ObjectKey(...)`` is the **unchecked** constructor: a C-level msgspec
constructor (~80 ns), because the data path builds one key per chunk per rank
per object group from parts that were validated once per request. Every
boundary that receives key parts from outside validates instead:

* :meth:`ObjectKey.validated` (or :func:`validate_key` on an existing key)
  checks every invariant and raises :class:`InvalidKeyError` naming the field;
* :meth:`EncodedObjectKey.to_object_key` (HTTP/JSON) and the name parsers
  validate;
* the ZMQ handlers check a request's ``model_name`` / ``cache_salt`` once with
  :func:`validate_model_name` / :func:`validate_cache_salt`, then build keys
  with the plain constructor;
* the name encoders (:func:`fs_file_name`, :func:`object_name`) validate the
  key they are given, because a bad key there could name a file outside the
  adapter's directory. Their cost is negligible next to the I/O they precede.

Invariants (LMCache 0.5.6's, plus the few marked *ours*):

* ``model_name``: a ``str`` without ``@`` (the field separator); ``/`` allowed;
  may be empty (0.5.6 accepts it). *Ours:* no NUL, since no tier can store it.
* ``cache_salt``: a ``str`` of at most 128 characters without ``@ / \\`` or NUL.
* ``object_group_id``: an ``int`` (not ``bool``) in ``[0, 2**32)``; 0.5.6 only
  requires ``>= 0``, the upper bound is *ours* (keeps names short).
* ``kv_rank``: an ``int`` (not ``bool``) in ``[0, 2**32)`` (*ours*; 0.5.6 does
  not check, but its names print it as 8 hex digits, so larger values could
  never round-trip).
* ``chunk_hash``: ``bytes`` of at most 64 bytes. 0.5.6 checks neither type nor
  length and accepts an empty hash from HTTP, so we accept empty too; the cap
  is *ours* (0.5.6's hashers give 32 bytes, vLLM's 8 or 32).

Name codecs
-----------
* FS: ``<model, "/" -> "-SEP-">@0x<kv_rank:08x>@<group:x>@<hash hex>[@<salt>].data``.
* S3 / native: ``<model verbatim>@<kv_rank:08x>@<group:x>@<hash hex>[@<salt>]``.

Parsers accept exactly the names the encoders produce (lowercase hex, 8-digit
rank, unpadded group, non-empty salt when present) and raise
:class:`KeyNameError` for anything else (temp files, other tools' objects).

Decisions on awkward model names (documented in the errors they raise):

* ``-SEP-``: the FS encoding of ``/`` is not injective (``"a-SEP-b"`` and
  ``"a/b"`` would share a file name). A model name whose FS form would not
  decode back to itself raises :class:`UnencodableKeyError` from
  :func:`fs_file_name`: such a key cannot live in an FS tier (L1 and S3 are
  unaffected). The parser turns every ``-SEP-`` into ``/``, which is what
  LMCache does.
* Path safety: an FS name never contains ``/`` or NUL, and since it always
  contains ``@`` and ends in ``.data`` it is never ``.`` or ``..``, so it is
  one plain entry in the adapter's directory whatever the model name (``..``
  included). S3 names keep ``/``; :func:`object_name` refuses (with
  :class:`UnencodableKeyError`) a model name that starts with ``/`` or has an
  empty, ``.`` or ``..`` segment, so an object name read as a relative path
  can never leave its root.
* Length: a name longer than the store allows (255 bytes for a file name, 1024
  for an S3 key) raises :class:`UnencodableKeyError` rather than failing later
  in the OS or the S3 server.
* Backslash is an ordinary character (the server targets POSIX file systems).
"""

from __future__ import annotations

import re
import sys
from functools import lru_cache
from typing import NamedTuple

import msgspec

__all__ = [
    "FS_NAME_SUFFIX",
    "MAX_CACHE_SALT_CHARS",
    "MAX_CHUNK_HASH_BYTES",
    "MAX_FS_NAME_BYTES",
    "MAX_OBJECT_NAME_BYTES",
    "UINT32_MAX",
    "EncodedObjectKey",
    "InvalidKeyError",
    "KVRank",
    "KeyNameError",
    "ObjectKey",
    "UnencodableKeyError",
    "fs_file_name",
    "kv_rank_for_worker",
    "kv_ranks_for_world",
    "object_name",
    "object_name_prefix",
    "pack_kv_rank",
    "parse_fs_file_name",
    "parse_object_name",
    "try_parse_fs_file_name",
    "try_parse_object_name",
    "unpack_kv_rank",
    "validate_cache_salt",
    "validate_chunk_hash",
    "validate_key",
    "validate_kv_rank",
    "validate_model_name",
    "validate_object_group_id",
]

UINT32_MAX = 0xFFFFFFFF
MAX_CACHE_SALT_CHARS = 128
MAX_CHUNK_HASH_BYTES = 64
MAX_FS_NAME_BYTES = 255
"""NAME_MAX of Linux file systems."""
MAX_OBJECT_NAME_BYTES = 1024
"""The S3 limit on an object key (UTF-8 bytes)."""
FS_NAME_SUFFIX = ".data"
_SEP = "-SEP-"


# -- errors -------------------------------------------------------------------


class InvalidKeyError(ValueError):
    """A key part breaks an :class:`ObjectKey` invariant. ``field`` names the part."""

    def __init__(self, field: str, message: str) -> None:
        super().__init__(f"{field} {message}")
        self.field = field


class UnencodableKeyError(InvalidKeyError):
    """A valid key that one L2 naming scheme cannot represent (the tier should skip it)."""


class KeyNameError(ValueError):
    """A string is not an L2 name that the matching encoder would produce."""


def _show(value: object) -> str:
    """``repr`` cut to a readable length, for error messages."""
    text = repr(value)
    return text if len(text) <= 80 else text[:77] + "..."


# -- field validators -----------------------------------------------------------


def validate_model_name(model_name: object) -> str:
    """Return ``model_name`` if it is a valid key model name, else raise :class:`InvalidKeyError`."""
    if not isinstance(model_name, str):
        raise InvalidKeyError("model_name", f"must be a str, got {type(model_name).__name__}")
    if "@" in model_name:
        raise InvalidKeyError("model_name", f"must not contain '@' (the name field separator): {_show(model_name)}")
    if "\x00" in model_name:
        raise InvalidKeyError("model_name", f"must not contain NUL: {_show(model_name)}")
    return model_name


def validate_cache_salt(cache_salt: object) -> str:
    """Return ``cache_salt`` if valid (≤128 chars, none of ``@ / \\`` NUL), else raise."""
    if not isinstance(cache_salt, str):
        raise InvalidKeyError("cache_salt", f"must be a str, got {type(cache_salt).__name__}")
    if cache_salt:
        if len(cache_salt) > MAX_CACHE_SALT_CHARS:
            raise InvalidKeyError(
                "cache_salt", f"must be at most {MAX_CACHE_SALT_CHARS} characters, got {len(cache_salt)}"
            )
        if "@" in cache_salt or "/" in cache_salt or "\\" in cache_salt or "\x00" in cache_salt:
            raise InvalidKeyError(
                "cache_salt", f"must not contain '@', '/', '\\' or NUL: {_show(cache_salt)}"
            )
    return cache_salt


def _uint32(field: str, value: object) -> int:
    # bool is an int subclass; True as a rank or group is always a client bug.
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidKeyError(field, f"must be an int, got {type(value).__name__}")
    if not 0 <= value <= UINT32_MAX:
        raise InvalidKeyError(field, f"must be in [0, 2**32), got {value}")
    return value


def validate_kv_rank(kv_rank: object) -> int:
    """Return ``kv_rank`` if it is an int in ``[0, 2**32)``, else raise :class:`InvalidKeyError`."""
    return _uint32("kv_rank", kv_rank)


def validate_object_group_id(object_group_id: object) -> int:
    """Return ``object_group_id`` if it is an int in ``[0, 2**32)``, else raise :class:`InvalidKeyError`."""
    return _uint32("object_group_id", object_group_id)


def validate_chunk_hash(chunk_hash: object) -> bytes:
    """Return ``chunk_hash`` if it is ``bytes`` of at most 64 bytes, else raise :class:`InvalidKeyError`."""
    # Mutable buffers are refused rather than copied: a key must stay hashable and equal to itself.
    if not isinstance(chunk_hash, bytes):
        raise InvalidKeyError("chunk_hash", f"must be bytes, got {type(chunk_hash).__name__}")
    if len(chunk_hash) > MAX_CHUNK_HASH_BYTES:
        raise InvalidKeyError(
            "chunk_hash", f"must be at most {MAX_CHUNK_HASH_BYTES} bytes, got {len(chunk_hash)}"
        )
    return chunk_hash


# -- ObjectKey ----------------------------------------------------------------


class ObjectKey(msgspec.Struct, frozen=True, gc=False):
    """The identity of one stored chunk object (frozen, hashable, ~56 bytes plus the hash bytes).

    The constructor does **not** validate (see the module docstring); use
    :meth:`validated` for parts that come from outside. ``gc=False`` is safe
    because every field is an atomic immutable value, and keeps the object out
    of the cyclic GC (no GC header, no tracking cost for a million keys).
    """

    chunk_hash: bytes
    model_name: str
    kv_rank: int
    object_group_id: int = 0
    cache_salt: str = ""

    @classmethod
    def validated(
        cls,
        chunk_hash: bytes,
        model_name: str,
        kv_rank: int,
        object_group_id: int = 0,
        cache_salt: str = "",
    ) -> ObjectKey:
        """Build a key after checking every invariant; raises :class:`InvalidKeyError`."""
        return cls(
            validate_chunk_hash(chunk_hash),
            validate_model_name(model_name),
            validate_kv_rank(kv_rank),
            validate_object_group_id(object_group_id),
            validate_cache_salt(cache_salt),
        )

    def validate(self) -> ObjectKey:
        """Return ``self`` if every invariant holds, else raise :class:`InvalidKeyError`."""
        return validate_key(self)

    def to_encoded(self) -> EncodedObjectKey:
        """The HTTP/JSON form (lowercase hex hash)."""
        return EncodedObjectKey(
            self.chunk_hash.hex(), self.model_name, self.kv_rank, self.object_group_id, self.cache_salt
        )


def validate_key(key: object) -> ObjectKey:
    """Return ``key`` if it is an :class:`ObjectKey` whose fields hold every invariant, else raise."""
    if not isinstance(key, ObjectKey):
        raise InvalidKeyError("key", f"must be an ObjectKey, got {type(key).__name__}")
    validate_chunk_hash(key.chunk_hash)
    validate_model_name(key.model_name)
    validate_kv_rank(key.kv_rank)
    validate_object_group_id(key.object_group_id)
    validate_cache_salt(key.cache_salt)
    return key


class EncodedObjectKey(msgspec.Struct, frozen=True, gc=False):
    """The wire (HTTP/JSON) form of an :class:`ObjectKey`: the hash as hex text.

    Decoding a body into this Struct checks field types; :meth:`to_object_key`
    checks the hex and the key invariants.
    """

    chunk_hash_hex: str
    model_name: str
    kv_rank: int
    object_group_id: int = 0
    cache_salt: str = ""

    def to_object_key(self) -> ObjectKey:
        """Validate and convert; raises :class:`InvalidKeyError` (field ``chunk_hash_hex`` for bad hex).

        The hex is parsed like LMCache does (Python's ``bytes.fromhex``):
        case-insensitive, ASCII whitespace between bytes tolerated, empty
        accepted as an empty hash, odd length or non-hex rejected.
        """
        text = self.chunk_hash_hex
        if not isinstance(text, str):
            raise InvalidKeyError("chunk_hash_hex", f"must be a str, got {type(text).__name__}")
        try:
            chunk_hash = bytes.fromhex(text)
        except ValueError:
            raise InvalidKeyError("chunk_hash_hex", f"is not valid hex: {_show(text)}") from None
        if len(chunk_hash) > MAX_CHUNK_HASH_BYTES:
            raise InvalidKeyError(
                "chunk_hash_hex", f"must encode at most {MAX_CHUNK_HASH_BYTES} bytes, got {len(chunk_hash)}"
            )
        return ObjectKey(
            chunk_hash,
            _intern(validate_model_name(self.model_name)),
            _intern_rank(validate_kv_rank(self.kv_rank)),
            validate_object_group_id(self.object_group_id),
            _intern(validate_cache_salt(self.cache_salt)),
        )

    @classmethod
    def from_object_key(cls, key: ObjectKey) -> EncodedObjectKey:
        """Same as ``key.to_encoded()``."""
        return key.to_encoded()


# Keys decoded in bulk (HTTP batches, L2 listings) would otherwise each carry
# their own copy of the model name, salt and rank; sharing them keeps a key at
# ~128 bytes. Interning is bounded so that hostile input cannot grow it forever.
_INTERN_LIMIT = 65536
_ranks: dict[int, int] = {}


def _intern(text: str) -> str:
    # sys.intern only takes exact str; long strings are not worth a table slot.
    return sys.intern(text) if type(text) is str and len(text) <= 256 else text


def _intern_rank(rank: int) -> int:
    shared = _ranks.get(rank)
    if shared is not None:
        return shared
    if len(_ranks) < _INTERN_LIMIT:
        _ranks[rank] = rank
    return rank


# -- kv_rank --------------------------------------------------------------------


class KVRank(NamedTuple):
    """The four 8-bit fields packed into a ``kv_rank``."""

    world_size: int
    global_rank: int
    local_world_size: int
    local_rank: int


def _byte(field: str, value: object) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise InvalidKeyError(field, f"must be an int, got {type(value).__name__}")
    if not 0 <= value <= 0xFF:
        raise InvalidKeyError(field, f"must fit in 8 bits (0..255) to pack a kv_rank, got {value}")
    return value


def pack_kv_rank(world_size: int, global_rank: int, local_world_size: int, local_rank: int) -> int:
    """``(world_size<<24) | (global_rank<<16) | (local_world_size<<8) | local_rank``, each field 0..255."""
    return _intern_rank(
        (_byte("world_size", world_size) << 24)
        | (_byte("global_rank", global_rank) << 16)
        | (_byte("local_world_size", local_world_size) << 8)
        | _byte("local_rank", local_rank)
    )


def unpack_kv_rank(kv_rank: int) -> KVRank:
    """Split a ``kv_rank`` into its four fields; raises :class:`InvalidKeyError` outside ``[0, 2**32)``."""
    validate_kv_rank(kv_rank)
    return KVRank((kv_rank >> 24) & 0xFF, (kv_rank >> 16) & 0xFF, (kv_rank >> 8) & 0xFF, kv_rank & 0xFF)


@lru_cache(maxsize=4096)
def _rank_for_worker(world_size: int, worker_id: int) -> int:
    return pack_kv_rank(world_size, worker_id, world_size, worker_id)


def kv_rank_for_worker(world_size: int, worker_id: int) -> int:
    """The ``kv_rank`` the MP server gives ``worker_id`` of ``world_size`` (``ws 1, w 0 -> 0x01000100``).

    As in LMCache, ``global_rank = local_rank = worker_id`` and
    ``local_world_size = world_size``. Requires ``1 <= world_size <= 255`` and
    ``0 <= worker_id < world_size``. Results are cached, so all keys of a rank
    share one int object.
    """
    _byte("world_size", world_size)
    _byte("worker_id", worker_id)
    if world_size < 1:
        raise InvalidKeyError("world_size", f"must be at least 1, got {world_size}")
    if worker_id >= world_size:
        raise InvalidKeyError("worker_id", f"must be below world_size {world_size}, got {worker_id}")
    return _rank_for_worker(world_size, worker_id)


@lru_cache(maxsize=256)
def _ranks_for_world(world_size: int) -> tuple[int, ...]:
    return tuple(_rank_for_worker(world_size, w) for w in range(world_size))


def kv_ranks_for_world(world_size: int) -> tuple[int, ...]:
    """Every rank's ``kv_rank`` in rank order: what a key without a worker id expands to."""
    if isinstance(world_size, bool) or not isinstance(world_size, int) or not 1 <= world_size <= 0xFF:
        raise InvalidKeyError("world_size", f"must be an int in 1..255, got {_show(world_size)}")
    return _ranks_for_world(world_size)


# -- L2 names -------------------------------------------------------------------

_RANK_HEX = "[0-9a-f]{8}"
_GROUP_HEX = "0|[1-9a-f][0-9a-f]{0,7}"
_HASH_HEX = "(?:[0-9a-f]{2}){0,%d}" % MAX_CHUNK_HASH_BYTES
_SALT = "[^@/\\\\\x00]{1,%d}" % MAX_CACHE_SALT_CHARS

_FS_NAME = re.compile(
    f"(?P<model>[^@/\x00]*)@0x(?P<rank>{_RANK_HEX})@(?P<group>{_GROUP_HEX})@(?P<hash>{_HASH_HEX})"
    f"(?:@(?P<salt>{_SALT}))?" + re.escape(FS_NAME_SUFFIX)
)
_OBJECT_NAME = re.compile(
    f"(?P<model>[^@\x00]*)@(?P<rank>{_RANK_HEX})@(?P<group>{_GROUP_HEX})@(?P<hash>{_HASH_HEX})"
    f"(?:@(?P<salt>{_SALT}))?"
)


def _byte_length(name: str) -> int:
    # surrogateescape mirrors os.fsencode; a lone surrogate it cannot map has no file name at all.
    try:
        return len(name.encode("utf-8", "surrogateescape"))
    except UnicodeEncodeError:
        return -1


@lru_cache(maxsize=1024)
def _fs_model_part(model_name: str) -> str:
    encoded = model_name.replace("/", _SEP)
    if encoded.replace(_SEP, "/") != model_name:
        raise UnencodableKeyError(
            "model_name",
            f"cannot be written to an FS tier: {_show(model_name)} contains '{_SEP}' in a way that its "
            f"FS file name would read back as a different model (LMCache encodes '/' as '{_SEP}')",
        )
    return encoded


def _check_length(field_name: str, name: str, limit: int, what: str) -> str:
    if name.isascii() and len(name) <= limit:  # O(1) flag check in CPython; the common case
        return name
    size = _byte_length(name)
    if size < 0 or size > limit:
        problem = "has no byte encoding" if size < 0 else f"would be {size} bytes, over the {limit}-byte limit"
        raise UnencodableKeyError(field_name, f"gives a {what} that {problem}")
    return name


def fs_file_name(key: ObjectKey) -> str:
    """The FS tier file name of ``key``, byte-identical to LMCache 0.5.6's.

    ``<model, "/" -> "-SEP-">@0x<kv_rank:08x>@<group:x>@<hash hex>[@<salt>].data``.
    Raises :class:`InvalidKeyError` for an invalid key and
    :class:`UnencodableKeyError` for a valid key the FS tier cannot name.
    """
    validate_key(key)
    name = f"{_fs_model_part(key.model_name)}@0x{key.kv_rank:08x}@{key.object_group_id:x}@{key.chunk_hash.hex()}"
    if key.cache_salt:
        name = f"{name}@{key.cache_salt}"
    return _check_length("key", name + FS_NAME_SUFFIX, MAX_FS_NAME_BYTES, "file name")


def _key_from_match(match: re.Match[str], model_name: str) -> ObjectKey:
    # The patterns admit only valid parts (hex widths bound rank and group to 32 bits, the
    # hash to 64 bytes; the salt and model classes exclude the forbidden characters), so the
    # unchecked constructor is safe here.
    return ObjectKey(
        bytes.fromhex(match["hash"]),
        _intern(model_name),
        _intern_rank(int(match["rank"], 16)),
        int(match["group"], 16),
        _intern(match["salt"] or ""),
    )


def parse_fs_file_name(name: str) -> ObjectKey:
    """The key whose :func:`fs_file_name` is ``name``; raises :class:`KeyNameError` for any other string."""
    match = _FS_NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise KeyNameError(f"not an FS key file name: {_show(name)}")
    model_name = match["model"].replace(_SEP, "/")
    try:
        # Always equal when the part has no '/' (the pattern ensures it); kept as the guard
        # that makes "parses" imply "is the key's own name".
        if _fs_model_part(model_name) != match["model"]:
            raise KeyNameError(f"not an FS key file name: {_show(name)} (model part is not canonical)")
        _check_length("key", name, MAX_FS_NAME_BYTES, "file name")
    except UnencodableKeyError as exc:
        raise KeyNameError(f"not an FS key file name: {_show(name)} ({exc})") from None
    return _key_from_match(match, model_name)


def try_parse_fs_file_name(name: str) -> ObjectKey | None:
    """:func:`parse_fs_file_name`, returning None instead of raising (for directory scans)."""
    try:
        return parse_fs_file_name(name)
    except KeyNameError:
        return None


@lru_cache(maxsize=1024)
def _object_model_part(model_name: str) -> str:
    if "/" in model_name:
        segments = model_name.split("/")
        # The last segment is followed by "@..." in the name, so it may be empty or dots.
        if any(seg in ("", ".", "..") for seg in segments[:-1]):
            raise UnencodableKeyError(
                "model_name",
                f"cannot be used in an object name: {_show(model_name)} starts with '/' or has an empty, "
                "'.' or '..' path segment, which a path-based store could resolve outside its root",
            )
    return model_name


def object_name_prefix(model_name: str) -> str:
    """``<model>@``: the listing prefix that selects every object of one model."""
    return _object_model_part(validate_model_name(model_name)) + "@"


def object_name(key: ObjectKey) -> str:
    """The S3 / native-connector object name of ``key``, identical to LMCache 0.5.6's.

    ``<model verbatim>@<kv_rank:08x>@<group:x>@<hash hex>[@<salt>]`` (no ``0x``,
    no extension). Raises like :func:`fs_file_name`.
    """
    validate_key(key)
    name = f"{_object_model_part(key.model_name)}@{key.kv_rank:08x}@{key.object_group_id:x}@{key.chunk_hash.hex()}"
    if key.cache_salt:
        name = f"{name}@{key.cache_salt}"
    return _check_length("key", name, MAX_OBJECT_NAME_BYTES, "object name")


def parse_object_name(name: str) -> ObjectKey:
    """The key whose :func:`object_name` is ``name``; raises :class:`KeyNameError` for any other string."""
    match = _OBJECT_NAME.fullmatch(name) if isinstance(name, str) else None
    if match is None:
        raise KeyNameError(f"not a key object name: {_show(name)}")
    try:
        _object_model_part(match["model"])
        _check_length("key", name, MAX_OBJECT_NAME_BYTES, "object name")
    except UnencodableKeyError as exc:
        raise KeyNameError(f"not a key object name: {_show(name)} ({exc})") from None
    return _key_from_match(match, match["model"])


def try_parse_object_name(name: str) -> ObjectKey | None:
    """:func:`parse_object_name`, returning None instead of raising (for listings)."""
    try:
        return parse_object_name(name)
    except KeyNameError:
        return None
