"""The served OpenAPI document against real answers: schemathesis over every operation.

A live server with every installed plugin (an FS L2 under ``tmp_path``) is served
over real HTTP; its ``/schema/openapi.json`` is loaded from the URL, and schemathesis
generates requests for each operation (schema-valid and schema-violating ones) and
runs its default checks on the answers: no 5xx, only documented status codes and
content types, bodies that match their schemas, valid requests accepted, invalid
ones refused, ``Allow`` headers that match the documented methods. Each operation is
its own subtest. No hand-written test checks the document itself; this one does.

A second, smaller run goes against a server started with ``--http-admin-token``:
guarded operations answer 401, which the document must declare.

Checks excluded, each for the operations named and only those (the reasons are
facts of the routes, not of the document):

``positive_data_acceptance``
    ``GET /kvcache/check``: ``block_ids`` is a grammar with ascending ranges and at
    most 2**20 ids, which no pattern bounds. ``GET /l2/keys``: ``page_token`` is
    opaque, only tokens a page handed out are valid. ``POST
    /reconfigure/{backend}/{operation}``: the body an operation takes depends on the
    path (dax's bodies are strict, other backends' free). The 0.5.6 generation's ``GET /cache/objects``
    (opaque ``page_token``), ``DELETE /cache/objects`` (a key's rank may be a decimal string, whose range
    no pattern bounds), ``POST /cache/prefetches`` (a registered layout is server state) and ``POST
    /reconfigure/{backend}/l2/{operation}`` (as the seed's), for the same reasons.
``not_a_server_error``
    ``POST /cache/prefetches``: 503 for a model no worker registered a layout for is LMCache 0.5.6's
    documented answer (the state of the node, not a fault of the server).
``negative_data_rejection``
    ``GET /loglevel``: a ``level`` without ``logger_name`` is ignored (200 ``null``,
    as in LMCache), which a per-parameter schema cannot say.
``allow_header_conformance``
    ``/quota/{cache_salt}``: Litestar 2.x answers ``OPTIONS`` on a path served by
    several handlers with the methods of the first one registered only
    (litestar-org/litestar#4169, fixed in 3.0); the document lists the path's
    three methods correctly. The same for ``/cache/objects`` (GET and DELETE).
"""

from __future__ import annotations

import logging
import re
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import schemathesis
from hypothesis import HealthCheck, settings
from schemathesis.checks import (
    allow_header_conformance,
    negative_data_rejection,
    not_a_server_error,
    positive_data_acceptance,
)

from lmcache_core.cli import build_parser
from lmcache_core.http import openapi
from lmcache_core.plugins import PluginHost
from lmcache_core.testing import make_server, serving

TOKEN = "conformance-admin-token"

EXCLUDED: dict[tuple[str, str], list[Any]] = {
    ("GET", "/kvcache/check"): [positive_data_acceptance],
    ("GET", "/l2/keys"): [positive_data_acceptance],
    ("POST", "/reconfigure/{backend}/{operation}"): [positive_data_acceptance],
    ("GET", "/loglevel"): [negative_data_rejection],
    ("GET", "/quota/{cache_salt}"): [allow_header_conformance],
    ("PUT", "/quota/{cache_salt}"): [allow_header_conformance],
    ("DELETE", "/quota/{cache_salt}"): [allow_header_conformance],
    ("GET", "/cache/objects"): [positive_data_acceptance, allow_header_conformance],
    ("DELETE", "/cache/objects"): [positive_data_acceptance, allow_header_conformance],
    ("POST", "/cache/prefetches"): [positive_data_acceptance, not_a_server_error],
    ("POST", "/reconfigure/{backend}/l2/{operation}"): [positive_data_acceptance],
}
"""(method, path) -> checks that do not apply to that operation; the module docstring says why."""


@pytest.fixture(autouse=True)
def _node_id_for_schemathesis(request: pytest.FixtureRequest) -> None:
    # schemathesis 4.32's from_fixture reads and renames request.node._nodeid, which pytest 9.2 no
    # longer has (the id lives in node._id); an attribute of the same name is all it needs.
    if not hasattr(request.node, "_nodeid"):
        request.node._nodeid = request.node.nodeid


@pytest.fixture(scope="module")
def logging_levels() -> Iterator[None]:
    """Put back every logger's level: the fuzzed ``/loglevel`` sets levels in this process."""
    def levels() -> dict[str, tuple[int, list[int]]]:
        loggers = [logging.getLogger(), *(lg for lg in list(logging.Logger.manager.loggerDict.values())
                                          if isinstance(lg, logging.Logger))]
        return {lg.name: (lg.level, [h.level for h in lg.handlers]) for lg in loggers}

    before = levels()
    yield
    for name in levels():
        lg = logging.getLogger() if name == "root" else logging.getLogger(name)
        level, handler_levels = before.get(name, (logging.NOTSET, [h.level for h in lg.handlers]))
        lg.setLevel(level)
        for handler, handler_level in zip(lg.handlers, handler_levels, strict=False):
            handler.setLevel(handler_level)


def _served(tmp_path_factory: pytest.TempPathFactory, *extra: str) -> Iterator[str]:
    fs = tmp_path_factory.mktemp("fs-l2")
    options = build_parser(PluginHost(), environ={}).parse_args(
        ["--l1-size-gb", "0.05", "--l2-adapter", f'{{"type":"fs","base_path":"{fs}"}}', *extra])
    server = make_server(entry_points=True, options=options)
    try:
        with serving(server) as url:
            yield url
    finally:
        server.stop()


@pytest.fixture(scope="module")
def open_url(tmp_path_factory: pytest.TempPathFactory, logging_levels: None) -> Iterator[str]:
    yield from _served(tmp_path_factory)


@pytest.fixture(scope="module")
def guarded_url(tmp_path_factory: pytest.TempPathFactory, logging_levels: None) -> Iterator[str]:
    yield from _served(tmp_path_factory, "--http-admin-token", TOKEN)


@pytest.fixture(scope="module")
def open_api(open_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{open_url}/schema/openapi.json")


@pytest.fixture(scope="module")
def guarded_api(guarded_url: str) -> Any:
    return schemathesis.openapi.from_url(f"{guarded_url}/schema/openapi.json")


def _call_and_validate(case: Any, base_url: str) -> None:
    # Keyed by the operation: a probe of an undocumented method (OPTIONS, TRACE) belongs to it too.
    operation = (case.operation.method.upper(), case.operation.path)
    case.call_and_validate(base_url=base_url, excluded_checks=EXCLUDED.get(operation, []))


open_schema = schemathesis.pytest.from_fixture("open_api")
guarded_schema = schemathesis.pytest.from_fixture("guarded_api").include(
    lambda ctx: "401" in ctx.operation.definition.raw.get("responses", {}))


@open_schema.parametrize()
@settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck))
def test_every_answer_matches_the_document(case: Any, open_url: str) -> None:
    _call_and_validate(case, open_url)


@guarded_schema.parametrize()
@settings(max_examples=5, deadline=None, suppress_health_check=list(HealthCheck))
def test_guarded_answers_without_the_token_match_the_document(case: Any, guarded_url: str) -> None:
    _call_and_validate(case, guarded_url)


def test_every_excluded_operation_is_in_the_document(open_api: Any) -> None:
    """An exclusion outliving its route (renamed, removed) would hide nothing but mislead."""
    documented = {(method.upper(), path) for path, item in open_api.raw_schema["paths"].items() for method in item}
    assert set(EXCLUDED) <= documented, sorted(set(EXCLUDED) - documented)


# -- the pattern pieces the document uses, against what the handlers' parsing does ----------


def test_py_whitespace_is_what_str_strip_removes() -> None:
    pattern = re.compile(openapi.PY_WHITESPACE)
    matched = {c for c in map(chr, range(sys.maxunicode + 1)) if pattern.fullmatch(c)}
    assert matched == {c for c in map(chr, range(sys.maxunicode + 1)) if c.isspace()}


@pytest.mark.parametrize("folded_by", ["lower", "upper"])
def test_any_case_matches_what_case_folding_accepts(folded_by: str) -> None:
    fold = str.lower if folded_by == "lower" else str.upper
    # Only a character that is ASCII or folds to ASCII can stand for a letter of an ASCII word.
    candidates = [c for c in map(chr, range(sys.maxunicode + 1)) if c.isascii() or fold(c).isascii()]
    for word in ["critical", "warning", "notset", "info", "true", "false", "yes", "off"]:
        pattern = re.compile(openapi.any_case(word, folded_by=folded_by))
        for i in range(len(word)):
            for c in candidates:
                candidate = word[:i] + c + word[i + 1:]
                assert bool(pattern.fullmatch(candidate)) == (fold(candidate) == fold(word)), (word, hex(ord(c)))
