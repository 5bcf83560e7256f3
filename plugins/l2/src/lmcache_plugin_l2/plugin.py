"""L2 management and warm prefetch: the seed's five ``/l2`` routes.

Routes (LMCache's HTTP API, "L2 Storage Management")
-----------------------------------------------------------------------------------
``GET /l2/adapters``
    ``{"adapters": [{"index", "type_name", "primary", "health"}]}`` in configuration order;
    ``primary`` only on index 0; ``health`` is the adapter's cheap summary (``is_healthy``;
    an S3 adapter adds its breaker state, failures by reason, latency); ``[]`` when no
    adapter is configured. 503 before the engine is ready.
``DELETE /l2?adapter=<type_name>`` (admin)
    Body ``{"keys": [EncodedObjectKey, ...]}``. Checked in this order: 422 for a body
    that is not that shape; 400 ``too many keys in a single request (limit=10000,
    got=N)``; 400 ``keys[i]: <reason>`` for the first key that breaks an ``ObjectKey``
    invariant; 503 ``no L2 adapters configured``; 404 for an unknown ``adapter``. Then
    the adapter deletes the keys on its own threads (never on the event loop) and the
    answer is 200 ``{"requested": N, "adapter": "<type_name>", "ok": true}``, or, when
    the adapter failed, ``"ok": false`` and ``"error"``. Absent keys are skipped;
    keys a lookup holds locked in the adapter (``lookup_and_lock`` without its
    ``unlock`` yet) are skipped and stay, and ``ok`` stays true for them, as the seed
    says ("skipped so the delete never corrupts an active transfer"). L1 is never
    touched. Deleted keys reach the adapter's listeners (eviction policies, quotas).
``GET /l2/keys?adapter=&model_name=&page_size=500&page_token=`` (admin guard: keys carry every tenant's salt)
    One page ``{"adapter", "entries": [{"key": EncodedObjectKey, "size_bytes"}],
    "next_page_token": str | null}`` (null: the listing is done). 422 for
    ``page_size`` that is not an integer in ``[1, 5000]``; 400 for a malformed
    ``page_token`` (or a ``model_name`` no key can have); 404 unknown adapter; 501
    for an adapter type that cannot list (``ListingNotSupported``); 503 before the
    engine is ready, with no adapters, or when the adapter's listing fails (an I/O
    error: the tier is unavailable, not the request wrong).
``POST /l2/prefetch`` (admin)
    Body ``{"model_name", "world_size", "token_ids", "cache_salt": ""}``. 422 for a
    body that is not that shape (types, ``world_size`` outside ``1..255``, a token id
    outside ``[0, 2**32)``); 400 for more than 1,000,000 tokens or a ``model_name`` /
    ``cache_salt`` that breaks the key invariants; 503 with no engine or no L2
    adapter; 409 when no worker registered a KV layout for ``(model_name,
    world_size)``; then 202 ``{"chunks": 0, "status": "noop"}`` below one full chunk,
    else 202 ``{"request_id", "chunks", "status": "submitted"}``. The tokens are
    hashed with the server's own :class:`~lmcache_core.hashing.TokenHasher` and each
    chunk expands to one key per rank (object group 0), exactly as ``LOOKUP`` builds
    them, so a later lookup finds what the warm loaded.
``GET /l2/prefetch/{request_id}``
    200 ``{"status": "pending"}``, then once 200 ``{"status": "completed",
    "found_keys", "total_keys"}``, then 404. 503 before the engine is ready.

Every error body is ``{"detail": "<message>"}``: these are FastAPI ``HTTPException``
routes in LMCache, including the 503 envelope. Messages
quote caller input with ``repr``, so no input can make an answer unencodable.

Decisions where the seed is silent
----------------------------------
* An empty query value (``?adapter=``, ``?model_name=``, ``?page_token=``) means the
  parameter is absent: the seed's own pagination loop sends ``page_token=`` on its
  first call.
* Unpolled results expire. LMCache keeps a completed job until it is polled
  (forever when nobody polls). Here a completed job is forgotten
  ``--l2-warm-job-ttl-seconds`` (default 600) after it completed, and beyond the
  ``--l2-warm-job-max-completed`` (default 10,000) most recent ones; a forgotten id
  polls 404 like a consumed one. The engine side is
  :class:`lmcache_core.storage.l2.prefetch_controller.WarmPrefetchJobs`; its counts
  show in ``/status`` (``storage_manager.warm_prefetch_jobs``) and as
  ``lmcache_mp_l2_warm_prefetch_*`` metrics.
* ``DELETE /l2`` reports an adapter that raised removing some keys (the FS adapter's
  ``unlink`` failing, say) as ``ok: false`` with ``error`` naming how many keys
  failed and the first reason; LMCache's S3 adapter swallows such errors, so its
  ``ok: true`` proves less.
* Body fields are decoded leniently like FastAPI's lax mode (``"kv_rank": "3"`` is 3);
  unknown fields are ignored. A ``kv_rank`` or ``object_group_id`` outside
  ``[0, 2**32)`` or a hash over 64 bytes is a key-invariant 400 (our key limits,
  documented in :mod:`lmcache_core.keys`).
* Path safety: key and model names never become paths here; the adapter names its
  objects with :func:`lmcache_core.keys.fs_file_name` / ``object_name``, which map
  ``/`` away (FS) and refuse NUL, so ``..`` or ``/`` in a model name names one plain
  file inside the adapter's directory. ``model_name`` and ``cache_salt`` are checked
  before any adapter sees them.
* A listed key whose name cannot be written as UTF-8 JSON (a file name with
  undecodable bytes) is left out of its page rather than failing the page.
"""

from __future__ import annotations

import logging
import re
from typing import Annotated, Any

import msgspec
from litestar import Router, delete, get, post
from litestar.params import FromPath, QueryParameter, RawBody

from lmcache_core.api import (
    DEFAULT_WARM_JOB_MAX_COMPLETED,
    DEFAULT_WARM_JOB_TTL_S,
    DETAIL,
    CacheServer,
    EncodedObjectKey,
    Engine,
    EngineUnavailable,
    HTTPError,
    InvalidKeyError,
    L2Adapter,
    ObjectKey,
    RegisterConfig,
    RegisterRoutes,
    error_envelope,
    hookimpl,
    kv_ranks_for_world,
    openapi,
    require_admin,
    safe_text,
    validate_cache_salt,
    validate_model_name,
)

logger = logging.getLogger(__name__)

CONFIG_NAME = "l2_routes"
MAX_DELETE_KEYS = 10_000
MIN_PAGE_SIZE, MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE = 1, 5000, 500
MAX_PREFETCH_TOKENS = 1_000_000
# 1,000,000 ten-digit token ids with separators is ~11 MB, over Litestar's 10 MB default.
MAX_BODY_BYTES = 32 << 20
NO_ADAPTERS = "no L2 adapters configured"


class L2RoutesConfig(msgspec.Struct, kw_only=True):
    """The l2 route plugin's settings (``--l2-warm-job-*``; ``GET /conf`` shows them under ``l2_routes``)."""

    warm_job_ttl_seconds: Annotated[float, msgspec.Meta(
        gt=0, description="forget a completed warm prefetch (POST /l2/prefetch) this long after it completed "
                          "if nobody polled it")] = DEFAULT_WARM_JOB_TTL_S
    warm_job_max_completed: Annotated[int, msgspec.Meta(
        ge=1, description="keep at most this many unpolled completed warm prefetch results (oldest go first)"
    )] = DEFAULT_WARM_JOB_MAX_COMPLETED


# -- bodies -------------------------------------------------------------------------------


class DeleteKeysRequest(msgspec.Struct):
    """Body of ``DELETE /l2``."""

    keys: list[EncodedObjectKey]


TokenId = Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)]


class WarmPrefetchRequest(msgspec.Struct):
    """Body of ``POST /l2/prefetch``."""

    model_name: str
    world_size: Annotated[int, msgspec.Meta(ge=1, le=255)]
    token_ids: list[TokenId]
    cache_salt: str = ""


class AdapterInfo(msgspec.Struct):
    index: int
    type_name: str
    primary: bool
    health: dict[str, Any] = msgspec.field(default_factory=dict)  # L2Adapter.health(): is_healthy, type-specific


class AdaptersResponse(msgspec.Struct):
    """Body of ``GET /l2/adapters``."""

    adapters: list[AdapterInfo]


class KeyEntryBody(msgspec.Struct):
    key: EncodedObjectKey
    size_bytes: int


class KeyPageResponse(msgspec.Struct):
    """Body of ``GET /l2/keys``."""

    adapter: str
    entries: list[KeyEntryBody]
    next_page_token: str | None


# -- answers (what the handlers return, and what the OpenAPI document shows) -------------------


class DeleteResult(msgspec.Struct, omit_defaults=True):
    """``DELETE /l2`` 200: ``ok`` false with ``error`` when the adapter failed to delete some keys."""

    requested: int
    adapter: str
    ok: bool
    error: str | None = None


class PrefetchSubmitted(msgspec.Struct, kw_only=True, omit_defaults=True):
    """``POST /l2/prefetch`` 202: ``status`` ``submitted`` with a ``request_id``, or ``noop`` (no full chunk)."""

    request_id: str | None = None
    chunks: int
    status: str


class PrefetchState(msgspec.Struct, omit_defaults=True):
    """``GET /l2/prefetch/{request_id}`` 200: ``pending``, or ``completed`` with the counts (answered once)."""

    status: str
    found_keys: int | None = None
    total_keys: int | None = None


# The request bodies as the document describes them: the runtime Structs above decode the shape (a 422 when it
# is wrong), then the key invariants are checked (a 400); here both are constraints, so a client can read them.
Uint32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)]
ModelName = Annotated[str, msgspec.Meta(pattern=openapi.MODEL_NAME_PATTERN, description="no `@`, no NUL")]
CacheSalt = Annotated[str, msgspec.Meta(pattern=openapi.CACHE_SALT_PATTERN,
                                        description="at most 128 characters, none of `@ / \\` or NUL")]


class ObjectKeyBody(msgspec.Struct):
    """An ``EncodedObjectKey`` (:class:`lmcache_core.keys.EncodedObjectKey`) with its invariants."""

    chunk_hash_hex: Annotated[str, msgspec.Meta(pattern=openapi.CHUNK_HASH_HEX_PATTERN,
                                                description="at most 64 bytes as hex")]
    model_name: ModelName
    kv_rank: Uint32
    object_group_id: Uint32 = 0
    cache_salt: CacheSalt = ""


class DeleteKeysBody(msgspec.Struct):
    """``DELETE /l2`` body."""

    keys: Annotated[list[ObjectKeyBody], msgspec.Meta(max_length=MAX_DELETE_KEYS)]


class WarmPrefetchBody(msgspec.Struct):
    """``POST /l2/prefetch`` body."""

    model_name: ModelName
    world_size: Annotated[int, msgspec.Meta(ge=1, le=255)]
    token_ids: Annotated[list[TokenId], msgspec.Meta(max_length=MAX_PREFETCH_TOKENS)]
    cache_salt: CacheSalt = ""


NOT_READY_OR_NO_ADAPTERS = openapi.detail("the engine is not initialized, or no L2 adapter is configured")
UNKNOWN_ADAPTER = openapi.detail("no adapter has the `adapter` type_name")
PAGE_SIZE_PATTERN = (f"^({openapi.PY_WHITESPACE}*\\+?(0{{0,8}}[1-9]|0{{0,7}}[1-9][0-9]|0{{0,6}}[1-9][0-9]{{2}}|"
                     f"0{{0,5}}([1-4][0-9]{{3}}|5000)){openapi.PY_WHITESPACE}*)?$")
"""``page_size`` as :func:`_page_size` reads it: empty, or 1..5000 in at most 9 digits, blanks around."""


# -- helpers ------------------------------------------------------------------------------


def _json_safe(entry: KeyEntryBody) -> bool:
    try:
        entry.key.model_name.encode("utf-8")
        entry.key.cache_salt.encode("utf-8")
    except UnicodeEncodeError:
        return False
    return True


def _decode(raw: bytes, body_type: type[Any]) -> Any:
    """The body as ``body_type``, typed as the OpenAPI document says: ``"3"`` is not an integer (a 422);
    ``3.0`` is one (JSON Schema's ``integer`` takes any number without a fractional part), ``3.5`` is
    not. The bodies have no float fields. Raises ``msgspec.ValidationError``/``DecodeError``."""
    return msgspec.convert(_integral_floats_as_ints(msgspec.json.decode(raw)), body_type)


def _integral_floats_as_ints(value: Any) -> Any:
    if isinstance(value, float) and value.is_integer():
        return int(value)
    if isinstance(value, list):
        return [_integral_floats_as_ints(v) for v in value]
    if isinstance(value, dict):
        return {k: _integral_floats_as_ints(v) for k, v in value.items()}
    return value


def _body(raw: bytes, body_type: type[Any]) -> Any:
    """:func:`_decode`, or the 422 ``invalid request body: ...``."""
    try:
        return _decode(raw, body_type)
    except (msgspec.ValidationError, msgspec.DecodeError) as exc:
        raise HTTPError(422, f"invalid request body: {exc}") from None


def _resolve(server: CacheServer, selector: str | None) -> L2Adapter:
    """The adapter ``?adapter=`` names (the primary when None); 503 or 404 otherwise."""
    storage = server.storage
    if storage is None:
        raise EngineUnavailable()
    if not storage.l2_adapters:
        raise HTTPError(503, NO_ADAPTERS)
    adapter = storage.find_l2_adapter(selector)
    if adapter is None:
        raise HTTPError(404, f"no L2 adapter with type_name={selector!r}")
    return adapter


def _present(value: str | None) -> str | None:
    return value if value else None


_PAGE_SIZE = re.compile(r"\s*\+?[0-9]{1,9}\s*")


def _page_size(text: str | None) -> int | None:
    """``page_size`` as an int in range, or None (→ 422)."""
    if text is None or text == "":
        return DEFAULT_PAGE_SIZE
    if not _PAGE_SIZE.fullmatch(text):
        return None
    value = int(text.strip())  # int() does not strip \x1c-\x1f, which \s (and str.strip) take as blanks
    return value if MIN_PAGE_SIZE <= value <= MAX_PAGE_SIZE else None


# -- GET /l2/adapters ---------------------------------------------------------------------


@get("/adapters", sync_to_thread=False, summary="Configured L2 adapters")
def list_adapters(engine: Engine) -> AdaptersResponse:
    """Every L2 adapter in configuration order; ``primary`` marks index 0."""
    adapters = engine.storage.l2_adapters if engine.storage is not None else []
    return AdaptersResponse([AdapterInfo(i, a.type_name, i == 0, a.health()) for i, a in enumerate(adapters)])


# -- DELETE /l2 ---------------------------------------------------------------------------


@delete("/", status_code=200, sync_to_thread=True, guards=[require_admin], request_max_body_size=MAX_BODY_BYTES,
        summary="Delete keys from one L2 adapter",
        operation_class=openapi.operation(body=openapi.json_body(DeleteKeysBody)), responses={
            200: openapi.json(DeleteResult, "the adapter ran the delete (absent and locked keys are skipped)"),
            400: openapi.detail(f"more than {MAX_DELETE_KEYS} keys, or a key that breaks an ObjectKey invariant"),
            404: UNKNOWN_ADAPTER,
            422: openapi.detail("the body is not `{\"keys\": [EncodedObjectKey, ...]}`"),
            503: NOT_READY_OR_NO_ADAPTERS})
def delete_keys(
    engine: Engine,
    body: RawBody,
    adapter: Annotated[str | None, QueryParameter(description="type_name of the adapter (default: primary)")] = None,
) -> DeleteResult:
    """Delete ``{"keys": [EncodedObjectKey...]}`` (at most 10,000) from one adapter; locked keys stay."""
    request = _body(body, DeleteKeysRequest)
    requested = len(request.keys)
    if requested > MAX_DELETE_KEYS:
        raise HTTPError(400, f"too many keys in a single request (limit={MAX_DELETE_KEYS}, got={requested})")
    keys: list[ObjectKey] = []
    for i, encoded in enumerate(request.keys):
        try:
            keys.append(encoded.to_object_key())
        except InvalidKeyError as exc:
            raise HTTPError(400, f"keys[{i}]: {exc}") from None
    target = _resolve(engine, _present(adapter))
    try:
        report = target.delete_report(keys).result()
    except Exception as exc:  # closed adapter, or one whose delete raised as a whole
        logger.warning("DELETE /l2 on %s failed: %s", target.l2_name, exc)
        return DeleteResult(requested, target.type_name, False, safe_text(f"{type(exc).__name__}: {exc}"))
    if report.failed:
        key, reason = report.failed[0]
        return DeleteResult(requested, target.type_name, False, safe_text(
            f"{len(report.failed)} of {requested} keys could not be deleted; first: "
            f"chunk_hash_hex={key.chunk_hash.hex()} model_name={key.model_name!r}: {reason}"))
    return DeleteResult(requested, target.type_name, True)


# -- GET /l2/keys -------------------------------------------------------------------------


def _list(server: CacheServer, selector: str | None, model_name: str | None, page_size: int,
          page_token: str | None) -> KeyPageResponse:
    adapter = _resolve(server, selector)
    try:
        page = adapter.list_keys(model_name, page_size, page_token)
    except NotImplementedError as exc:  # ListingNotSupported
        raise HTTPError(501, f"L2 adapter {adapter.type_name!r} does not support listing: {exc}") from None
    except ValueError as exc:
        raise HTTPError(400, f"malformed page_token for L2 adapter {adapter.type_name!r}: {exc}") from None
    except Exception as exc:
        logger.warning("GET /l2/keys on %s failed: %s", adapter.l2_name, exc)
        raise HTTPError(503, f"L2 adapter {adapter.type_name!r} failed to list: {type(exc).__name__}: {exc}") from None
    entries = [KeyEntryBody(e.key, e.size_bytes) for e in page.entries]
    safe = [e for e in entries if _json_safe(e)]
    return KeyPageResponse(adapter.type_name, safe, page.next_page_token)


# Positive data: page_token is opaque (only the tokens a page hands out are valid), so the conformance test does
# not expect every string to be accepted.
# Admin-guarded: keys carry every tenant's cache_salt (issue 13; docs/security.md).
@get("/keys", sync_to_thread=True, guards=[require_admin], summary="Page through the keys resident in one L2 adapter",
     responses={
    200: openapi.json(KeyPageResponse, "one page; `next_page_token` is null when the listing is done"),
    400: openapi.detail("a malformed `page_token`, or a `model_name` no key can have"),
    404: UNKNOWN_ADAPTER,
    422: openapi.detail(f"`page_size` is not an integer in [{MIN_PAGE_SIZE}, {MAX_PAGE_SIZE}]"),
    501: openapi.detail("the adapter's type cannot list its keys"),
    503: openapi.detail("the engine is not initialized, no L2 adapter is configured, or the adapter failed to list")})
def list_keys(
    engine: Engine,
    adapter: Annotated[str | None, QueryParameter(description="type_name of the adapter (default: primary)")] = None,
    model_name: Annotated[str | None, QueryParameter(description="only keys of this model",
                                                     schema_extra={"pattern": openapi.MODEL_NAME_PATTERN})] = None,
    page_size: Annotated[str | None, QueryParameter(description="entries per page, 1..5000 (default 500)",
                                                    schema_extra={"pattern": PAGE_SIZE_PATTERN})] = None,
    page_token: Annotated[str | None, QueryParameter(description="next_page_token of the previous page")] = None,
) -> KeyPageResponse:
    """One page of ``{"key", "size_bytes"}`` entries; ``next_page_token`` null when done."""
    size = _page_size(page_size)
    if size is None:
        raise HTTPError(422, f"page_size must be an integer in [{MIN_PAGE_SIZE}, {MAX_PAGE_SIZE}]")
    model = _present(model_name)
    if model is not None:
        try:
            validate_model_name(model)
        except InvalidKeyError as exc:
            raise HTTPError(400, str(exc)) from None
    return _list(engine, _present(adapter), model, size, _present(page_token))


# -- POST /l2/prefetch, GET /l2/prefetch/{request_id} ----------------------------------------


def _object_nbytes(server: CacheServer, model_name: str, world_size: int) -> int | None:
    """The chunk object size of a registered ``(model_name, world_size)`` layout, or None."""
    datapath = server.datapath
    # DataPath keeps its layouts private; this is the lookup LOOKUP itself uses.
    return datapath.object_nbytes_for(model_name, world_size) if datapath is not None else None


@post("/prefetch", status_code=202, sync_to_thread=True, guards=[require_admin], request_max_body_size=MAX_BODY_BYTES,
      summary="Warm L1 from L2 for a token sequence",
      operation_class=openapi.operation(body=openapi.json_body(WarmPrefetchBody)), responses={
          202: openapi.json(PrefetchSubmitted, "submitted (poll `request_id`), or `noop` below one full chunk"),
          400: openapi.detail(f"more than {MAX_PREFETCH_TOKENS} tokens, or a `model_name` / `cache_salt` no key "
                              "can have"),
          409: openapi.detail("no worker registered a KV layout for (`model_name`, `world_size`)"),
          422: openapi.detail("the body is not a WarmPrefetchRequest"),
          503: NOT_READY_OR_NO_ADAPTERS})
def warm_prefetch(engine: Engine, body: RawBody) -> PrefetchSubmitted:
    """Hash the tokens, submit a warm prefetch of their chunks across all adapters; 202 at once."""
    request = _body(body, WarmPrefetchRequest)
    if len(request.token_ids) > MAX_PREFETCH_TOKENS:
        raise HTTPError(400, f"token_ids exceeds the per-request cap (limit={MAX_PREFETCH_TOKENS}, "
                             f"got={len(request.token_ids)})")
    try:
        validate_model_name(request.model_name)
        validate_cache_salt(request.cache_salt)
    except InvalidKeyError as exc:
        raise HTTPError(400, str(exc)) from None
    storage = engine.storage
    if storage is None:
        raise EngineUnavailable()
    jobs = storage.warm_jobs
    if jobs is None:
        raise HTTPError(503, NO_ADAPTERS)
    nbytes = _object_nbytes(engine, request.model_name, request.world_size)
    if nbytes is None:
        raise HTTPError(409, f"no layout registered for model_name={request.model_name!r} "
                             f"world_size={request.world_size}; the model has not allocated KV cache on this node yet")
    hashes = engine.hasher.hash_chunks(request.token_ids)
    if not hashes:
        return PrefetchSubmitted(chunks=0, status="noop")
    ranks = kv_ranks_for_world(request.world_size)
    keys = [ObjectKey(h, request.model_name, rank, 0, request.cache_salt) for h in hashes for rank in ranks]
    try:
        request_id = jobs.submit(keys, nbytes)
    except RuntimeError:  # the prefetch pool is shut down: the engine is stopping
        raise EngineUnavailable() from None
    return PrefetchSubmitted(request_id=request_id, chunks=len(hashes), status="submitted")


@get("/prefetch/{request_id:str}", sync_to_thread=False, summary="Poll a warm prefetch", responses={
    200: openapi.json(PrefetchState, "`pending`, or `completed` with the counts (once)"),
    404: openapi.detail("unknown `request_id`: never submitted, already polled as completed, or expired")})
def poll_prefetch(engine: Engine, request_id: FromPath[str]) -> PrefetchState:
    """``pending``; then ``completed`` with the counts, exactly once; then 404."""
    jobs = engine.storage.warm_jobs if engine.storage is not None else None
    state = jobs.poll(request_id) if jobs is not None else None
    if state is None:
        raise HTTPError(404, f"unknown prefetch request_id={request_id!r} (already completed or never submitted)")
    if state.status == "pending":
        return PrefetchState("pending")
    return PrefetchState("completed", state.found_keys, state.total_keys)


router = Router(path="/l2", route_handlers=[list_adapters, delete_keys, list_keys, warm_prefetch, poll_prefetch],
                tags=["l2"], opt=error_envelope(DETAIL))


# -- hooks --------------------------------------------------------------------------------


@hookimpl
def lmcache_register_config(register: RegisterConfig) -> None:
    register(CONFIG_NAME, L2RoutesConfig, prefix="l2-", title="l2 plugin",
             description="L2 management routes and warm prefetch (/l2/...).")


@hookimpl
def lmcache_register_routes(register: RegisterRoutes) -> None:
    register(router)


@hookimpl
def lmcache_startup(server: CacheServer) -> None:
    config: L2RoutesConfig = server.configs[CONFIG_NAME]  # type: ignore[assignment]
    jobs = server.storage.warm_jobs if server.storage is not None else None
    if jobs is not None:
        jobs.configure(ttl_s=config.warm_job_ttl_seconds, max_completed=config.warm_job_max_completed)
