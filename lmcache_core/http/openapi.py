"""What the OpenAPI document (``GET /schema/openapi.json``) declares beyond what Litestar infers.

Litestar documents a handler from its signature: the return annotation becomes the
success response and a ``data`` parameter the request body. Most handlers here answer
with ``Response`` objects in the seed's envelopes, and read their raw body themselves
so that a malformed body gets the envelope the seed asks for rather than Litestar's.
The document has to be told the rest, and this module holds what route plugins share
for that:

* the error envelopes: :class:`ErrorBody` ``{"error"}``, :class:`DetailBody`
  ``{"detail"}``, :class:`StatusReasonBody` ``{"status", "reason"}`` and
  :class:`ValidationErrorBody` (FastAPI's 422 list);
* :func:`error`, :func:`detail`, :func:`json` and :func:`text`: ``ResponseSpec`` builders for a
  handler's ``responses={status: ...}`` (an entry for the success status replaces
  the one Litestar infers from the return annotation);
* :func:`operation`: an ``operation_class`` for handlers that read their own body
  (:func:`json_body`, :func:`multipart_body`), check a query parameter's presence
  themselves, or answer one status in two media types;
* :data:`PY_WHITESPACE`, :func:`any_case` and the key-invariant patterns: pieces of
  ``pattern`` s (given through ``QueryParameter(schema_extra=...)`` or ``msgspec.Meta``
  on a documentation Struct, which document without validating) that say exactly what a
  handler's own parsing accepts;
* :func:`document_handler`: the 401 of
  :func:`~lmcache_core.http.guard.require_admin` and the 503 of the ``engine``
  dependency, added by :class:`~lmcache_core.http.app.RoutesInitPlugin` to every
  handler that has them, so no plugin declares them; and :class:`QueryOperation`, which
  documents an optional query parameter as a string (never ``null``) that may be empty
  where its pattern says so.

Nothing here changes how a request is answered; ``tests/test_openapi_conformance.py``
checks the document against real answers with schemathesis.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, replace
from typing import Any

import msgspec
from litestar import MediaType
from litestar.handlers import HTTPRouteHandler
from litestar._openapi.schema_generation.plugins.struct import StructSchemaPlugin
from litestar.openapi.datastructures import ResponseSpec
from litestar.openapi.spec import (
    OpenAPIFormat,
    OpenAPIMediaType,
    OpenAPIResponse,
    OpenAPIType,
    Operation,
    RequestBody,
    Schema,
)
from litestar.typing import FieldDefinition

from lmcache_core.http.errors import (
    DETAIL,
    ENGINE_NOT_INITIALIZED,
    ERROR,
    TEXT as TEXT_ENVELOPE,
    UNAVAILABLE_OPT,
    Envelope,
    envelope_of_handler,
)
from lmcache_core.http.guard import require_admin
from lmcache_core.keys import MAX_CACHE_SALT_CHARS, MAX_CHUNK_HASH_BYTES

JSON = MediaType.JSON.value
TEXT = MediaType.TEXT.value
MULTIPART = "multipart/form-data"


# -- envelopes -----------------------------------------------------------------------------


class ErrorBody(msgspec.Struct):
    """``{"error": "<message>"}``: the seed's error envelope."""

    error: str


class DetailBody(msgspec.Struct):
    """``{"detail": "<message>"}``: the envelope of routes LMCache serves through FastAPI."""

    detail: str


class StatusReasonBody(msgspec.Struct):
    """``{"status": "<state>", "reason": "<message>"}``: ``/healthcheck`` and ``/clear-cache``."""

    status: str
    reason: str


class ValidationErrorItem(msgspec.Struct):
    """One entry of FastAPI's 422 ``detail`` list; ``loc`` starts at ``"body"``."""

    type: str
    loc: list[str | int]
    msg: str


class ValidationErrorBody(msgspec.Struct):
    """FastAPI's 422 envelope: ``{"detail": [{"type", "loc", "msg"}]}``."""

    detail: list[ValidationErrorItem]


_ENVELOPES: dict[frozenset[str], type[msgspec.Struct]] = {
    frozenset({"error"}): ErrorBody,
    frozenset({"detail"}): DetailBody,
    frozenset({"status", "reason"}): StatusReasonBody,
}


def envelope_of(body: Mapping[str, Any]) -> Any:
    """The envelope type a literal error body has (``dict[str, str]`` for a shape not listed here)."""
    return _ENVELOPES.get(frozenset(body), dict[str, str])


# -- responses -----------------------------------------------------------------------------


def json(data_container: Any, description: str) -> ResponseSpec:
    """A JSON answer of type ``data_container`` (a Struct, ``dict[str, Any]``, ``str``, ...)."""
    return ResponseSpec(data_container=data_container, description=description, generate_examples=False)


def error(description: str, envelope: Any = ErrorBody) -> ResponseSpec:
    """An error answer in ``envelope`` (default ``{"error": ...}``); ``description`` says when it happens."""
    return json(envelope, description)


def detail(description: str) -> ResponseSpec:
    """An error answer in FastAPI's ``{"detail": ...}`` envelope."""
    return json(DetailBody, description)


def failure(envelope: Envelope, description: str) -> ResponseSpec:
    """An error answer in ``envelope`` (:data:`~lmcache_core.http.errors.ERROR`, ``DETAIL``, ``TEXT``, ...)."""
    if envelope is TEXT_ENVELOPE or envelope.media_type == TEXT:
        return text(description)
    if envelope is DETAIL:
        return detail(description)
    if envelope is ERROR:
        return error(description)
    return json(_ENVELOPES.get(frozenset(envelope.keys), dict[str, str]), description)


def text(description: str) -> ResponseSpec:
    """A ``text/plain`` answer."""
    return ResponseSpec(data_container=str, description=description, media_type=TEXT, generate_examples=False)


ADMIN_TOKEN_REQUIRED = error("`--http-admin-token` is set and the request lacks `Authorization: Bearer <token>`")
"""The 401 of a route guarded by :func:`~lmcache_core.http.guard.require_admin`."""


def engine_unavailable(body: Mapping[str, Any]) -> ResponseSpec:
    """The 503 the ``engine`` dependency answers with ``body`` (the route group's envelope)."""
    return error("the engine is not initialized (before start, after stop)", envelope_of(body))


GENERATION_SEED, GENERATION_056, GENERATION_OURS = "generation:seed", "generation:0.5.6", "generation:lmcache-server"
"""The route generation tags: the seed document's API, LMCache 0.5.6's, and lmcache-server's own additions."""
_PATH_PARAM = re.compile(r"\{(\w+):[^}]+\}")
BOTH_GENERATIONS = frozenset({
    "/", "/healthcheck", "/status", "/version", "/lmc_version", "/commit_id", "/metrics", "/metrics/reset", "/quota",
    "/quota/{cache_salt}", "/loglevel", "/threads", "/periodic-threads", "/periodic-threads/{thread_name}",
    "/periodic-threads-health", "/env", "/run_script"})
"""Paths LMCache 0.5.6 still serves as the seed documents them."""
SEED_ONLY = frozenset({
    "/conf", "/clear-cache", "/kvcache/check", "/l2", "/l2/adapters", "/l2/keys", "/l2/prefetch",
    "/l2/prefetch/{request_id}", "/reconfigure/backends", "/reconfigure/{backend}/status",
    "/reconfigure/{backend}/{operation}"})
"""Paths LMCache 0.5.6 renamed or removed."""
ONLY_056 = frozenset({"/cache/checksums"})
"""0.5.6 paths served by a seed-generation plugin (the api056 plugin tags its own routes)."""


def generation_tags(handler: HTTPRouteHandler, path: str) -> list[str]:
    """The generation tags ``handler`` at ``path`` should carry: none when a layer already gives one."""
    if any(t.startswith("generation:") for layer in handler.ownership_layers for t in (layer.tags or ())):
        return []
    template = _PATH_PARAM.sub(r"{\1}", path)
    if template in BOTH_GENERATIONS:
        return [GENERATION_SEED, GENERATION_056]
    if template in SEED_ONLY:
        return [GENERATION_SEED]
    return [GENERATION_056] if template in ONLY_056 else [GENERATION_OURS]


def document_handler(handler: HTTPRouteHandler, path: str | None = None) -> None:
    """Complete ``handler``'s document with what every route group shares.

    Adds the 401 of the admin guard and the 503 of the ``engine`` dependency to its
    responses (a status the handler declares itself wins, so a route whose own 503 has
    more causes describes them all), gives a handler without its own
    ``operation_class`` :class:`QueryOperation`, and, given the route's ``path``, tags it
    with its API generation (:func:`generation_tags`). Called for every registered
    handler (guards and ``opt`` are resolved by then).
    """
    if path is not None and (tags := generation_tags(handler, path)):
        handler.tags = [*(handler.tags or []), *tags]
    shared: dict[int, ResponseSpec] = {}
    # resolve_guards() wraps each guard; the layers (app, routers, handler) hold them as written.
    if any(require_admin in (layer.guards or ()) for layer in handler.ownership_layers):
        shared[401] = ADMIN_TOKEN_REQUIRED
    if _validates_input(handler, path):
        shared[400] = failure(envelope_of_handler(handler.opt),
                              "a parameter or the body does not validate (the group's envelope, one line)")
    if "engine" in handler.parsed_fn_signature.parameters:
        envelope = envelope_of_handler(handler.opt)
        body = handler.opt.get(UNAVAILABLE_OPT, envelope.render(ENGINE_NOT_INITIALIZED))
        shared[503] = (engine_unavailable(body) if isinstance(body, Mapping)
                       else text("the engine is not initialized (before start, after stop)"))
    if shared:
        handler.responses = {**shared, **(handler.responses or {})}
    if handler.operation_class is Operation:
        handler.operation_class = QueryOperation


_NOT_VALIDATED = frozenset({"request", "state", "scope", "socket", "engine", "server", "body"})


def _validates_input(handler: HTTPRouteHandler, path: str | None) -> bool:
    """Whether Litestar validates anything of the request for ``handler`` (path parameters, a query
    parameter, a header, a ``data`` body): where its 400 can be answered."""
    return bool(path and "{" in path) or any(
        name not in _NOT_VALIDATED for name in handler.parsed_fn_signature.parameters)


class StrictStructSchemaPlugin(StructSchemaPlugin):
    """Litestar's schema of a msgspec Struct, plus ``additionalProperties: false`` for a Struct declared
    with ``forbid_unknown_fields=True`` (which refuses unknown keys); installed on every app."""

    def to_openapi_schema(self, field_definition: FieldDefinition, schema_creator: Any) -> Schema:
        schema = super().to_openapi_schema(field_definition, schema_creator)
        config = getattr(field_definition.type_, "__struct_config__", None)
        if config is not None and config.forbid_unknown_fields:
            schema.additional_properties = False
        return schema


# -- schemas -------------------------------------------------------------------------------

PY_WHITESPACE = r"[\u0009-\u000d\u001c-\u0020\u0085\u00a0\u1680\u2000-\u200a\u2028\u2029\u202f\u205f\u3000]"
"""A regex class of exactly the characters ``str.strip()`` removes (what ``\\s`` means differs between engines)."""

NOT_BLANK = "[^" + PY_WHITESPACE[1:]
"""A ``pattern`` (JSON Schema patterns search, unanchored) for text that is not blank once stripped."""


# The ObjectKey invariants (lmcache_core.keys) as patterns, for documents of bodies and paths that carry key parts.
CHUNK_HASH_HEX_PATTERN = f"^[\\t-\\r ]*([0-9a-fA-F]{{2}}[\\t-\\r ]*){{0,{MAX_CHUNK_HASH_BYTES}}}$"
"""What ``bytes.fromhex`` reads into at most 64 bytes: hex pairs, ASCII blanks between them."""
MODEL_NAME_PATTERN = "^[^@\\u0000]*$"
CACHE_SALT_PATTERN = f"^[^@/\\\\\\u0000]{{0,{MAX_CACHE_SALT_CHARS}}}$"


def any_case(word: str, *, folded_by: str = "lower") -> str:
    """A regex matching what ``text.lower() == word.lower()`` (or ``upper``) accepts; JSON Schema has no flags.

    ``upper()`` also folds ``ı`` to ``I`` and ``ſ`` to ``S`` (no other single character reaches ASCII;
    the ligatures that do, ``ß ﬀ ﬁ ﬂ ﬃ ﬄ ﬅ ﬆ``, expand to letter pairs the words used here lack);
    ``lower()`` folds the Kelvin sign to ``k``.
    """
    extra = {"i": "ı", "s": "ſ"} if folded_by == "upper" else {"k": "\u212a"}
    return "".join(f"[{c.lower()}{c.upper()}{extra.get(c.lower(), '')}]" if c.isalpha() else re.escape(c)
                   for c in word)


_SCHEMA_FIELDS = set(Schema.__dataclass_fields__)
_SUBSCHEMA = {"items", "additionalProperties", "not", "contains", "propertyNames"}
_SUBSCHEMA_LISTS = {"anyOf", "oneOf", "allOf", "prefixItems"}


def _field_name(key: str) -> str:
    name = Schema.field_aliases().get(key) or re.sub(r"(?<!^)([A-Z])", lambda m: "_" + m.group(1).lower(), key)
    if name not in _SCHEMA_FIELDS:
        raise ValueError(f"JSON Schema keyword {key!r} has no OpenAPI Schema field")
    return name


def _to_schema(node: dict[str, Any], defs: Mapping[str, Any]) -> Schema:
    if "$ref" in node:  # msgspec's "#/$defs/Name": inlined (request bodies here are not recursive)
        return _to_schema(defs[node["$ref"].rsplit("/", 1)[-1]], defs)
    fields: dict[str, Any] = {}
    for key, value in node.items():
        if key == "properties":
            value = {name: _to_schema(sub, defs) for name, sub in value.items()}
        elif key in _SUBSCHEMA and isinstance(value, dict):
            value = _to_schema(value, defs)
        elif key in _SUBSCHEMA_LISTS:
            value = [_to_schema(sub, defs) for sub in value]
        elif key == "type":
            value = [OpenAPIType(v) for v in value] if isinstance(value, list) else OpenAPIType(value)
        fields[_field_name(key)] = value
    return Schema(**fields)


def schema_of(tp: Any) -> Schema:
    """The OpenAPI schema of a Python type, from msgspec's JSON Schema (constraints included, refs inlined)."""
    doc = msgspec.json.schema(tp)
    return _to_schema({k: v for k, v in doc.items() if k != "$defs"}, doc.get("$defs", {}))


# -- request bodies and operation tweaks -------------------------------------------------------


@dataclass(frozen=True)
class BodySpec:
    """A request body to document: its media type, schema and description."""

    media_type: str
    schema: Schema
    description: str | None = None
    required: bool = True


def json_body(tp: Any, description: str | None = None, *, required: bool = True) -> BodySpec:
    """A JSON body of type ``tp``: the type the handler decodes its raw body into."""
    return BodySpec(JSON, schema_of(tp), description, required)


def multipart_body(files: Iterable[str], description: str | None = None) -> BodySpec:
    """A ``multipart/form-data`` body whose ``files`` are file fields."""
    names = list(files)
    schema = Schema(type=OpenAPIType.OBJECT, required=names,
                    properties={n: Schema(type=OpenAPIType.STRING, format=OpenAPIFormat.BINARY) for n in names})
    return BodySpec(MULTIPART, schema, description)


@dataclass
class QueryOperation(Operation):
    """The operation of every route: what Litestar says of query parameters, made true.

    Litestar documents an optional ``str | None`` query parameter as "string or null", but
    a query string has no null: ``?x=null`` reaches the handler as the string ``"null"``.
    And it says ``allowEmptyValue: false`` of every parameter; one whose ``pattern``
    matches the empty string (the handlers read ``?x=`` as "not given") allows it.
    """

    def __post_init__(self) -> None:
        for parameter in self.parameters or []:
            schema = getattr(parameter, "schema", None)
            if getattr(parameter, "param_in", None) != "query" or not isinstance(schema, Schema):
                continue
            if schema.one_of:
                kept = [s for s in schema.one_of if not (isinstance(s, Schema) and s.type == OpenAPIType.NULL)]
                if len(kept) == 1 and isinstance(kept[0], Schema):
                    # The union carries the parameter's description and schema_extra (a pattern): keep them.
                    outer = {f: v for f, v in vars(schema).items() if v is not None and f != "one_of"}
                    schema = parameter.schema = replace(kept[0], **outer)  # type: ignore[union-attr]
            if schema.pattern is not None and re.search(schema.pattern, ""):
                parameter.allow_empty_value = True  # type: ignore[union-attr]


def operation(
    *,
    body: BodySpec | None = None,
    required_query: Iterable[str] = (),
    also: Mapping[int, tuple[str, Any]] | None = None,
) -> type[Operation]:
    """An ``operation_class`` for a route handler, documenting what its signature cannot.

    ``body``: the request body the handler reads itself. ``required_query``: query
    parameters declared optional in the signature (so that the handler, not Litestar,
    answers their absence in the seed's envelope) but that every accepted request
    carries. ``also``: ``{status: (media_type, type)}``, a second media type one status
    answers with.
    """
    required = frozenset(required_query)
    extra = {status: (media_type, schema_of(tp)) for status, (media_type, tp) in (also or {}).items()}

    @dataclass
    class DocumentedOperation(QueryOperation):
        def __post_init__(self) -> None:
            super().__post_init__()
            if body is not None:
                self.request_body = RequestBody(content={body.media_type: OpenAPIMediaType(schema=body.schema)},
                                                description=body.description, required=body.required)
            for parameter in self.parameters or []:
                if getattr(parameter, "param_in", None) == "query" and getattr(parameter, "name", None) in required:
                    parameter.required = True  # type: ignore[union-attr]
            for status, (media_type, schema) in extra.items():
                response = (self.responses or {}).get(str(status))
                if isinstance(response, OpenAPIResponse):
                    response.content = {**(response.content or {}), media_type: OpenAPIMediaType(schema=schema)}

    return DocumentedOperation


__all__ = [
    "ADMIN_TOKEN_REQUIRED", "BOTH_GENERATIONS", "CACHE_SALT_PATTERN", "CHUNK_HASH_HEX_PATTERN", "GENERATION_056",
    "GENERATION_OURS", "GENERATION_SEED", "JSON", "MODEL_NAME_PATTERN", "MULTIPART", "NOT_BLANK", "ONLY_056",
    "PY_WHITESPACE", "SEED_ONLY", "TEXT", "BodySpec", "DetailBody", "ErrorBody", "QueryOperation", "StatusReasonBody",
    "StrictStructSchemaPlugin",
    "ValidationErrorBody", "ValidationErrorItem", "any_case", "detail", "document_handler", "engine_unavailable",
    "envelope_of", "error", "failure", "generation_tags", "json", "json_body", "multipart_body", "operation",
    "schema_of", "text",
]
