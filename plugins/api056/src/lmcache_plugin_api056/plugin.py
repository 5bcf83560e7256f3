"""LMCache 0.5.6's HTTP route generation, beside the seed's (0.5.6's ``multiprocess/http_apis/``: ``config_api``,
``cache_api``, ``reconfigure_api``, and the pydantic models they validate with).

LMCache 0.5.6 renamed most of the operator API the seed documents; its own CLI
(``lmcache kvcache clear``, ``lmcache describe kvcache``, ...) and dashboards call the
new names. This plugin serves them over the same engine operations as the seed's
routes, so an operator can swap servers without changing scripts. Being its own
plugin (``api056``), a generation can be deny-listed (``--disable-plugins api056``).
Every route is tagged ``generation:0.5.6`` in the OpenAPI document.

Routes
------
``GET /config``
    Every config section (``GET /conf``'s document: secrets masked, indented by 2,
    non-ASCII kept). 503 ``{"error": "configs not initialized"}`` when there is none.
``GET /config/adapters``
    ``{"adapters": [{"index", "type_name", "tier": "l2", "primary", "reconfigurable"}]}``
    in configuration order (``[]`` without L2).
``POST /cache/clear`` (admin)
    Optional body ``{"tier": "l1", "force": false}`` (empty body: those defaults). 200
    ``{"status": "ok", "cleared": {"tier": "l1"}}``; 400 ``tier 'l2' not supported; only
    'l1'`` for ``l2``/``all``; 422 for a body that is not that shape. ``force`` false
    clears only objects no reader or writer holds (what 0.5.6 does; the seed's
    ``/clear-cache`` always forces).
``GET /cache/objects?tier=l2&adapter=&model_name=&page_size=500&page_token=``
    One page ``{"adapter", "shared", "entries": [{"key", "size_bytes"}],
    "next_page_token"}``. 422 for a ``tier`` outside ``l1|l2|all`` or ``page_size``
    outside 1..5000; 400 for another tier, a malformed ``page_token`` or a
    ``model_name`` no key can have; 503 no adapters; 404 unknown ``adapter``; 503 when
    the adapter cannot list (0.5.6's mapping of ``NotImplementedError``; the seed's
    ``/l2/keys`` says 501) or its listing fails.
``DELETE /cache/objects`` (admin)
    Body ``{"keys": [EncodedObjectKey], "tier": "l2", "force": false, "adapter": null}``.
    422 shape; 400 more than 10,000 keys or a key invariant (``keys[i]: ...``); 503 no
    adapters / 404 unknown adapter when the tier includes L2. 200 ``{"deleted",
    "skipped", "ok"[, "error"]}``: ``deleted`` counts L1 removals plus the whole L2
    batch (0.5.6 counts requested keys, not keys that existed); ``skipped`` counts L1
    keys left because locked (never with ``force``).
``POST /cache/prefetches`` (admin)
    Body ``{"model_name", "world_size", "token_ids", "cache_salt": "", "source_tier":
    "l2", "target_tier": "l1"}``. 422 shape; 400 another direction; 503 no layout
    registered for ``(model_name, world_size)`` (the seed's ``/l2/prefetch`` says 409);
    400 over 1,000,000 tokens, a token id outside ``[0, 2**32)`` or a bad
    ``model_name``/``cache_salt``; 202 ``{"chunks": 0, "status": "noop"}`` below one
    chunk; else 202 ``{"request_id", "chunks", "status": "submitted"}`` (without L2 the job
    is completed at once with ``found_keys`` 0, as 0.5.6 answers).
``GET /cache/prefetches/{request_id}``
    200 ``{"request_id", "status": "pending"}``, then once ``{"request_id", "status":
    "completed", "found_keys", "total_keys"}``, then 404.
``GET /reconfigure/{backend}/l2/status``, ``POST /reconfigure/{backend}/l2/{operation}`` (admin)
    The seed's ``/reconfigure/{backend}/...`` under 0.5.6's path; see :mod:`.reconfigure`.

Envelopes: ``/cache/*`` and ``/config/adapters`` answer errors as ``{"detail": "..."}``
and shape errors as FastAPI's ``{"detail": [...]}`` list (:mod:`.validation`); their
503 before the engine is ready is ``{"detail": "server not initialized"}``. ``/config``
and ``/reconfigure`` keep ``{"error": "..."}`` as 0.5.6 does.

Decisions where 0.5.6's behaviour is not worth copying (each keeps the status code):

* ``DELETE /cache/objects`` with ``tier: all`` resolves the L2 adapter before deleting
  from L1, so a 503/404 changes nothing (0.5.6 has already deleted from L1 then).
* Empty ``?model_name=`` and ``?page_token=`` mean "not given", as in the seed's
  ``/l2/keys`` (an empty cursor is the first page).
* ``POST /cache/prefetches``: a token id outside ``[0, 2**32)`` is 400 (0.5.6 answers 500).
* ``POST /reconfigure/{backend}/l2/{operation}`` refuses an operation the adapter does
  not list (400 ``unsupported <backend> reconfigure operation: <op>``) for every
  backend, like the seed, instead of handing it to the adapter.
"""

from __future__ import annotations

import json
import math
from typing import Annotated, Any

import anyio
import msgspec
from litestar import MediaType, Request, Response, Router, delete, get, post
from litestar.datastructures import State
from litestar.params import FromPath, PathParameter, QueryParameter

from lmcache_core.api import CacheServer, Engine, hookimpl, masked, openapi, require_admin, unavailable_body

from . import cache, reconfigure
from .validation import (
    REQUIRED,
    Invalid,
    Issue,
    as_bool,
    as_int,
    as_optional_str,
    as_str,
    as_tier,
    body_of,
    dataclass_of,
    issue,
    json_body,
    list_of,
    MISSING,
)

GENERATION_TAG = "generation:0.5.6"
NOT_INITIALIZED = {"detail": "server not initialized"}
CONFIGS_UNAVAILABLE = {"error": "configs not initialized"}
ENGINE_UNAVAILABLE = {"error": "engine not initialized"}
MIN_PAGE_SIZE, MAX_PAGE_SIZE, DEFAULT_PAGE_SIZE = 1, 5000, 500
MAX_BODY_BYTES = 32 << 20  # 1,000,000 token ids as JSON is ~11 MB
JSON = MediaType.JSON


# -- request bodies (0.5.6's dataclasses, validated as pydantic does) ---------------------------

ENCODED_KEY = dataclass_of("EncodedObjectKey", [
    ("chunk_hash_hex", as_str, REQUIRED), ("model_name", as_str, REQUIRED), ("kv_rank", as_int, REQUIRED),
    ("object_group_id", as_int, 0), ("cache_salt", as_str, "")])
CLEAR_REQUEST = dataclass_of("ClearRequest", [("tier", as_tier, "l1"), ("force", as_bool, False)])
DELETE_REQUEST = dataclass_of("DeleteObjectsRequest", [
    ("keys", list_of(ENCODED_KEY), REQUIRED), ("tier", as_tier, "l2"), ("force", as_bool, False),
    ("adapter", as_optional_str, None)])
PREFETCH_REQUEST = dataclass_of("PrefetchRequest", [
    ("model_name", as_str, REQUIRED), ("world_size", as_int, REQUIRED), ("token_ids", list_of(as_int), REQUIRED),
    ("cache_salt", as_str, ""), ("source_tier", as_tier, "l2"), ("target_tier", as_tier, "l1")])


# -- what the OpenAPI document says ----------------------------------------------------------

Tier = Annotated[str, msgspec.Meta(pattern="^(l1|l2|all)$")]
# pydantic's lax mode, which 0.5.6's clients rely on: a bool is also 0/1 or a yes/no word in any case, an
# integer also a bool or a decimal string (blanks around, `_` between digits, a `.0` tail).
_BOOL_WORDS = ("0", "off", "f", "false", "n", "no", "1", "on", "t", "true", "y", "yes")
LaxBool = (bool | Annotated[int, msgspec.Meta(ge=0, le=1)]
           | Annotated[str, msgspec.Meta(pattern="^(" + "|".join(openapi.any_case(w) for w in _BOOL_WORDS) + ")$")])
_INT_TEXT = Annotated[str, msgspec.Meta(pattern=r"^[ \t\n\r\f\v]*[+-]?[0-9]+(_[0-9]+)*(\.0*)?[ \t\n\r\f\v]*$")]
LaxInt = int | bool | _INT_TEXT
LaxUint32 = Annotated[int, msgspec.Meta(ge=0, le=0xFFFFFFFF)] | bool | _INT_TEXT


class EncodedObjectKeyBody(msgspec.Struct):
    chunk_hash_hex: Annotated[str, msgspec.Meta(pattern=openapi.CHUNK_HASH_HEX_PATTERN)]
    model_name: Annotated[str, msgspec.Meta(pattern=openapi.MODEL_NAME_PATTERN)]
    kv_rank: LaxUint32
    object_group_id: LaxUint32 = 0
    cache_salt: Annotated[str, msgspec.Meta(pattern=openapi.CACHE_SALT_PATTERN)] = ""


class ClearBody(msgspec.Struct):
    """``POST /cache/clear`` body (optional, ``null`` too): only ``l1`` is served."""

    tier: Annotated[str, msgspec.Meta(pattern="^l1$")] = "l1"
    force: LaxBool = False


class DeleteObjectsBody(msgspec.Struct):
    """``DELETE /cache/objects`` body."""

    keys: Annotated[list[EncodedObjectKeyBody], msgspec.Meta(max_length=cache.MAX_DELETE_BATCH)]
    tier: Tier = "l2"
    force: LaxBool = False
    adapter: str | None = None


class PrefetchBody(msgspec.Struct):
    """``POST /cache/prefetches`` body (only ``l2`` → ``l1``)."""

    model_name: Annotated[str, msgspec.Meta(pattern=openapi.MODEL_NAME_PATTERN)]
    world_size: LaxInt
    token_ids: Annotated[list[LaxUint32], msgspec.Meta(max_length=cache.MAX_TOKEN_IDS)]
    cache_salt: Annotated[str, msgspec.Meta(pattern=openapi.CACHE_SALT_PATTERN)] = ""
    source_tier: Annotated[str, msgspec.Meta(pattern="^l2$")] = "l2"
    target_tier: Annotated[str, msgspec.Meta(pattern="^l1$")] = "l1"


class AdapterEntry(msgspec.Struct):
    index: int
    type_name: str
    tier: str
    primary: bool
    reconfigurable: bool


class Adapters(msgspec.Struct):
    """``GET /config/adapters`` 200."""

    adapters: list[AdapterEntry]


class Cleared(msgspec.Struct):
    """``POST /cache/clear`` 200."""

    status: str
    cleared: dict[str, str]


class KeyEntry(msgspec.Struct):
    key: EncodedObjectKeyBody
    size_bytes: int


class ObjectPage(msgspec.Struct):
    """``GET /cache/objects`` 200; ``next_page_token`` null when the listing is done."""

    adapter: str
    shared: bool
    entries: list[KeyEntry]
    next_page_token: str | None


class DeleteResult(msgspec.Struct):
    """``DELETE /cache/objects`` 200."""

    deleted: int
    skipped: int
    ok: bool
    error: str | None = None


class PrefetchSubmitted(msgspec.Struct):
    """``POST /cache/prefetches`` 202."""

    chunks: int
    status: str
    request_id: str | None = None


class PrefetchState(msgspec.Struct):
    """``GET /cache/prefetches/{request_id}`` 200."""

    request_id: str
    status: str
    found_keys: int | None = None
    total_keys: int | None = None


class ReconfigureAdapter(msgspec.Struct):
    backend: str
    supported_operations: list[str]
    status: dict[str, Any]
    adapter_index: int
    l2_adapter_index: int


class ReconfigureStatus(msgspec.Struct):
    """``GET /reconfigure/{backend}/l2/status`` 200."""

    enabled: bool
    backend: str
    num_adapters: int
    adapters: list[ReconfigureAdapter]


class ValidationIssue(msgspec.Struct):
    type: str
    loc: list[str | int]
    msg: str
    input: Any = None
    ctx: dict[str, Any] | None = None


class ValidationErrors(msgspec.Struct):
    """FastAPI's (pydantic's) 422 envelope."""

    detail: list[ValidationIssue]


def invalid(description: str) -> Any:
    return openapi.error(description, ValidationErrors)


# -- helpers ---------------------------------------------------------------------------------


def answer(status: int, body: Any) -> Response[Any]:
    return Response(body, status_code=status, media_type=JSON)


async def off_loop(fn: Any, *args: Any) -> Response[Any]:
    """``fn(*args) -> (status, body)`` on a worker thread (adapter I/O and engine locks stay off the loop)."""
    status, body = await anyio.to_thread.run_sync(fn, *args)
    return answer(status, body)


async def _body(request: Request[Any, Any, Any], parser: Any, *, optional: bool = False) -> Any:
    """The validated JSON body (None when ``optional`` and absent), or the 422 answer."""
    try:
        return body_of(await request.body(), parser, optional=optional)
    except Invalid as exc:
        return answer(422, exc.body)


def _present(value: str | None) -> str | None:
    return value if value else None


def _finite(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return str(value).replace("inf", "Infinity").replace("nan", "NaN")
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    return [_finite(v) for v in value] if isinstance(value, list) else value


def config_section(config: Any) -> Any:
    """One config object as masked JSON builtins; never its ``str()`` (that could carry a secret)."""
    try:
        doc = msgspec.to_builtins(config, enc_hook=str, str_keys=True)
    except Exception:
        doc = None
    if doc is None or (isinstance(doc, str) and not isinstance(config, str)):
        return {"error": f"unrenderable config: {type(config).__name__}"}
    return _finite(masked(doc))


# -- /config ---------------------------------------------------------------------------------


@get("/config", sync_to_thread=True, summary="Every config section, secrets masked (0.5.6's /conf)", responses={
    200: openapi.json(dict[str, Any], "one object per config section, indented by 2"),
    503: openapi.error("no config sections")})
def config(state: State) -> Response[Any]:
    """Every registered config section as one indented JSON document."""
    server = getattr(state, "server", None)
    configs = getattr(server, "configs", None)
    snapshot = dict(configs) if isinstance(configs, dict) else {}
    if not snapshot:
        return answer(503, CONFIGS_UNAVAILABLE)
    doc = {str(name): config_section(cfg) for name, cfg in snapshot.items()}
    return Response(json.dumps(doc, indent=2, ensure_ascii=False).encode(), media_type=JSON)


@get("/config/adapters", sync_to_thread=False, summary="L2 adapters, in configuration order",
     responses={200: openapi.json(Adapters, "`[]` without L2; `reconfigurable` adapters take /reconfigure")})
def config_adapters(engine: Engine) -> dict[str, Any]:
    """``primary`` marks index 0; pass a ``reconfigurable`` adapter's ``type_name`` as ``{backend}``."""
    return cache.list_adapters(engine)


# -- /cache ----------------------------------------------------------------------------------


@post("/cache/clear", status_code=200, guards=[require_admin], summary="Clear L1",
      operation_class=openapi.operation(body=openapi.json_body(ClearBody | None, required=False)), responses={
          200: openapi.json(Cleared, "L1 cleared (with `force`, objects being read or written too)"),
          400: openapi.detail("a tier other than `l1`"),
          422: invalid("the body is not a ClearRequest")})
async def clear_cache(engine: Engine, request: Request[Any, Any, Any]) -> Response[Any]:
    """An empty body means ``{"tier": "l1", "force": false}``."""
    body = await _body(request, CLEAR_REQUEST, optional=True)
    if isinstance(body, Response):
        return body
    body = body or {"tier": "l1", "force": False}
    if body["tier"] != "l1":
        return answer(*cache.detail(400, f"tier {body['tier']!r} not supported; only 'l1'"))
    return await off_loop(cache.clear, engine, body["force"])


def _query_issues(tier: str | None, page_size: str | None) -> tuple[list[Issue], str, int]:
    issues: list[Issue] = []
    tier_value = as_tier(tier, ("query", "tier"), issues) if tier is not None else "l2"
    size = DEFAULT_PAGE_SIZE
    if page_size is not None:
        size = as_int(page_size, ("query", "page_size"), issues)
        if isinstance(size, int) and size < MIN_PAGE_SIZE:
            issues.append(issue("greater_than_equal", ("query", "page_size"),
                                f"Input should be greater than or equal to {MIN_PAGE_SIZE}", page_size,
                                {"ge": MIN_PAGE_SIZE}))
        elif isinstance(size, int) and size > MAX_PAGE_SIZE:
            issues.append(issue("less_than_equal", ("query", "page_size"),
                                f"Input should be less than or equal to {MAX_PAGE_SIZE}", page_size,
                                {"le": MAX_PAGE_SIZE}))
    return issues, tier_value, size


PAGE_SIZE_PATTERN = (f"^{openapi.PY_WHITESPACE}*\\+?(0*[1-9]|0*[1-9][0-9]|0*[1-9][0-9]{{2}}|0*[1-4][0-9]{{3}}|"
                     f"0*5000)(\\.0*)?{openapi.PY_WHITESPACE}*$")


@get("/cache/objects", summary="Page through the keys of one L2 adapter", responses={
    200: openapi.json(ObjectPage, "one page; `next_page_token` null when the listing is done"),
    400: openapi.detail("`tier` other than `l2`, a malformed `page_token`, or a `model_name` no key can have"),
    404: openapi.detail("no adapter has the `adapter` type_name"),
    422: invalid("`tier` is not l1, l2 or all, or `page_size` is not an integer in [1, 5000]"),
    503: openapi.detail("not initialized, no L2 adapter, or the adapter cannot list (or failed to)")})
async def list_objects(
    engine: Engine,
    tier: Annotated[str | None, QueryParameter(description="only `l2` is listed",
                                               schema_extra={"pattern": "^l2$"})] = None,
    adapter: Annotated[str | None, QueryParameter(description="type_name (default: the primary)")] = None,
    model_name: Annotated[str | None, QueryParameter(description="only keys of this model",
                                                     schema_extra={"pattern": openapi.MODEL_NAME_PATTERN})] = None,
    page_size: Annotated[str | None, QueryParameter(description="1..5000 (default 500)",
                                                    schema_extra={"pattern": PAGE_SIZE_PATTERN})] = None,
    page_token: Annotated[str | None, QueryParameter(description="the previous page's next_page_token")] = None,
) -> Response[Any]:
    """One page of ``{"key", "size_bytes"}``; ``shared`` is the adapter's shared-pool flag."""
    issues, tier_value, size = _query_issues(tier, page_size)
    if issues:
        return answer(422, Invalid(issues).body)
    if tier_value != "l2":
        return answer(*cache.detail(400, f"tier {tier_value!r} not supported; only 'l2'"))
    return await off_loop(cache.list_objects, engine, adapter, _present(model_name), size, _present(page_token))


@delete("/cache/objects", status_code=200, guards=[require_admin], request_max_body_size=MAX_BODY_BYTES,
        summary="Delete keys from L1, L2 or both",
        operation_class=openapi.operation(body=openapi.json_body(DeleteObjectsBody)), responses={
            200: openapi.json(DeleteResult, "`deleted`: L1 removals plus the L2 batch; `skipped`: locked L1 keys"),
            400: openapi.detail(f"more than {cache.MAX_DELETE_BATCH} keys, or a key that breaks an invariant"),
            404: openapi.detail("no adapter has the `adapter` type_name (tier l2 or all)"),
            422: invalid("the body is not a DeleteObjectsRequest"),
            503: openapi.detail("not initialized, or no L2 adapter (tier l2 or all)")})
async def delete_objects(engine: Engine, request: Request[Any, Any, Any]) -> Response[Any]:
    """Key-addressed delete; ``force`` includes L1 objects being read or written."""
    body = await _body(request, DELETE_REQUEST)
    if isinstance(body, Response):
        return body
    return await off_loop(cache.delete_objects, engine, body["tier"], body["adapter"], body["keys"], body["force"])


@post("/cache/prefetches", status_code=202, guards=[require_admin], request_max_body_size=MAX_BODY_BYTES,
      summary="Warm L1 from L2 for a token sequence",
      operation_class=openapi.operation(body=openapi.json_body(PrefetchBody)), responses={
          202: openapi.json(PrefetchSubmitted, "submitted (poll `request_id`), or `noop` below one chunk"),
          400: openapi.detail("a direction other than l2 → l1, too many tokens, a token id out of range, or a "
                              "`model_name` / `cache_salt` no key can have"),
          422: invalid("the body is not a PrefetchRequest"),
          503: openapi.detail("not initialized, or no layout registered for (`model_name`, `world_size`)")})
async def submit_prefetch(engine: Engine, request: Request[Any, Any, Any]) -> Response[Any]:
    """Hash the tokens as LOOKUP does and warm their chunks into L1; 202 at once."""
    body = await _body(request, PREFETCH_REQUEST)
    if isinstance(body, Response):
        return body
    if (body["source_tier"], body["target_tier"]) != ("l2", "l1"):
        return answer(*cache.detail(400, f"unsupported prefetch direction {body['source_tier']!r}->"
                                         f"{body['target_tier']!r}; only 'l2'->'l1'"))
    return await off_loop(cache.submit_prefetch, engine, body["model_name"], body["world_size"], body["token_ids"],
                          body["cache_salt"])


@get("/cache/prefetches/{request_id:str}", sync_to_thread=False, summary="Poll a warm prefetch", responses={
    200: openapi.json(PrefetchState, "`pending`, or `completed` with the counts (once)"),
    404: openapi.detail("unknown `request_id`: never submitted, already polled as completed, or expired")})
def prefetch_status(engine: Engine, request_id: FromPath[str]) -> Response[Any]:
    """``pending``; ``completed`` once; then 404."""
    return answer(*cache.prefetch_status(engine, request_id))


# -- /reconfigure/{backend}/l2 ---------------------------------------------------------------

BackendPath = Annotated[str, PathParameter(description="L2 adapter type (stripped, case-insensitive), e.g. dax",
                                           schema_extra={"pattern": openapi.NOT_BLANK})]
OperationPath = Annotated[str, PathParameter(description="operation (stripped, case-insensitive), e.g. add",
                                             schema_extra={"pattern": openapi.NOT_BLANK})]


@get("/reconfigure/{backend:str}/l2/status", sync_to_thread=True,
     summary="Reconfigurable adapters of one backend", responses={
         200: openapi.json(ReconfigureStatus, "`enabled` false for a backend with no such adapter"),
         400: openapi.error("`backend` is blank")})
def reconfigure_status(engine: Engine, backend: FromPath[BackendPath]) -> Response[Any]:
    """Adapter indexes are backend-local (the value to send back); on a worker thread (status may probe)."""
    try:
        name = reconfigure.normalise(backend, "backend")
    except reconfigure.Refusal as refusal:
        return answer(*refusal.answer)
    return answer(200, reconfigure.status(engine, name))


async def _reconfigure(engine: CacheServer, backend: str, operation: str, raw: bytes) -> Response[Any]:
    try:
        name = reconfigure.normalise(backend, "backend")
        op = reconfigure.normalise(operation, "operation")
        body = json_body(raw)
        if body is MISSING:
            raise Invalid([issue("missing", ("body",), "Field required", None)])
        if not isinstance(body, dict):
            raise Invalid([issue("dict_type", ("body",), "Input should be a valid dictionary", body)])
        index, params = reconfigure.operation_params(name, op, body)
    except reconfigure.Refusal as refusal:
        return answer(*refusal.answer)
    except Invalid as exc:
        return answer(422, exc.body)
    return await off_loop(reconfigure.apply, engine, name, op, index, params)


RECONFIGURE_OPERATION = dict(
    status_code=200, guards=[require_admin],
    operation_class=openapi.operation(body=openapi.json_body(dict[str, Any], "a JSON object: dax `add` "
                                      "{device_path, size}, `remove` {device_path, mode, force}, `resize` "
                                      "{device_path, size, mode, force}; other backends: adapter_index and "
                                      "the adapter's fields")),
    responses={
        200: openapi.json(dict[str, Any], "the adapter's result, with `adapter_index` and `l2_adapter_index`"),
        400: openapi.error("blank backend or operation, an unsupported operation, a bad `size`, or parameters "
                           "the adapter refused"),
        404: openapi.error("`adapter_index` out of range for the backend"),
        409: openapi.error("the adapter cannot do the operation now"),
        422: invalid("the body is not a JSON object, or fails the dax schema"),
        500: openapi.error("the adapter failed"),
        501: openapi.error("the adapter does not implement the operation")})


# Positive data: which body an operation takes depends on the path (dax's bodies are strict, other backends'
# free), which one JSON schema cannot say; the conformance test does not expect every body to be accepted.
@post("/reconfigure/{backend:str}/l2/{operation:str}", summary="Apply one reconfiguration operation",
      **RECONFIGURE_OPERATION)  # type: ignore[arg-type]
async def reconfigure_operation(engine: Engine, backend: FromPath[BackendPath], operation: FromPath[OperationPath],
                                request: Request[Any, Any, Any]) -> Response[Any]:
    """Validates on the event loop (cheap); the adapter's operation runs on a worker thread."""
    return await _reconfigure(engine, backend, operation, await request.body())


@post("/reconfigure/{backend:str}/l2/status", include_in_schema=False, **RECONFIGURE_OPERATION)  # type: ignore
async def reconfigure_status_operation(engine: Engine, backend: FromPath[BackendPath],
                                       request: Request[Any, Any, Any]) -> Response[Any]:
    """The operation named ``status`` (the GET route's static segment would otherwise answer 405)."""
    return await _reconfigure(engine, backend, "status", await request.body())


config_router = Router(path="/", route_handlers=[config], tags=[GENERATION_TAG, "config"],
                       opt=unavailable_body(CONFIGS_UNAVAILABLE))
cache_router = Router(path="/", route_handlers=[config_adapters, clear_cache, list_objects, delete_objects,
                                                submit_prefetch, prefetch_status],
                      tags=[GENERATION_TAG, "cache"], opt=unavailable_body(NOT_INITIALIZED))
reconfigure_router = Router(path="/", route_handlers=[reconfigure_status, reconfigure_operation,
                                                      reconfigure_status_operation],
                            tags=[GENERATION_TAG, "reconfigure"], opt=unavailable_body(ENGINE_UNAVAILABLE))


@hookimpl
def lmcache_register_routes(register: Any) -> None:
    register(config_router, cache_router, reconfigure_router)
