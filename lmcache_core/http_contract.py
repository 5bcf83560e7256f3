"""The route-plugin testing kit: guards read off the routes, and the OpenAPI conformance check.

A route plugin's tests use these (through :mod:`lmcache_core.testing`, which re-exports them)
instead of the core's own test lists, so an installed third-party plugin never breaks the
core's tests and a plugin checks its own routes the way the core checks its own:

:func:`route_table`
    Every route of an app, ``(method, path template) -> guarded``, where *guarded* means
    :func:`~lmcache_core.http.guard.require_admin` sits on the handler or on a router above it
    (the same reading the OpenAPI document's 401 comes from). ``/schema`` is left out.
:func:`check_openapi`
    The served document against real answers: schemathesis generates schema-valid and
    schema-violating requests for each operation chosen and runs its checks on every answer
    (no 5xx, only documented status codes and content types, bodies that match their
    schemas, valid requests accepted, invalid ones refused). Raises ``AssertionError``
    naming each operation that failed, with schemathesis's reason.

schemathesis and hypothesis are test dependencies (``lmcache-core[test]``); this module imports
them only when :func:`check_openapi` runs.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Mapping
from typing import Any

from litestar import Litestar
from litestar.handlers import HTTPRouteHandler

from lmcache_core.http.guard import require_admin

_CONVERTER = re.compile(r"\{(\w+):[^}]+\}")


def path_template(path: str) -> str:
    """``/quota/{cache_salt:str}`` → ``/quota/{cache_salt}`` (the OpenAPI document's spelling)."""
    return _CONVERTER.sub(r"{\1}", path)


def is_admin_guarded(handler: HTTPRouteHandler) -> bool:
    """True when ``require_admin`` guards ``handler`` (on it, its router or the app)."""
    return any(require_admin in (layer.guards or ()) for layer in handler.ownership_layers)


def route_table(app: Litestar) -> dict[tuple[str, str], bool]:
    """``(method, path template) -> guarded`` for every HTTP route of ``app`` (not HEAD, OPTIONS or ``/schema``)."""
    table: dict[tuple[str, str], bool] = {}
    for route in app.routes:
        if route.path.startswith("/schema"):
            continue
        for handler in getattr(route, "route_handlers", []):
            for method in handler.http_methods:
                if method not in ("HEAD", "OPTIONS"):
                    table[(method, path_template(route.path))] = is_admin_guarded(handler)
    return table


def _run_cases(strategy: Any, base_url: str, headers: dict[str, str], skip: list[Any], max_examples: int) -> None:
    import hypothesis
    from hypothesis import HealthCheck, settings

    @settings(max_examples=max_examples, deadline=None, suppress_health_check=list(HealthCheck),
              database=None, derandomize=True, phases=[hypothesis.Phase.generate])
    @hypothesis.given(strategy)
    def run(case: Any) -> None:
        case.call_and_validate(base_url=base_url, headers=headers, excluded_checks=skip)

    run()


def check_openapi(
    base_url: str,
    *,
    paths: Iterable[str] | Callable[[str], bool] | None = None,
    excluded: Mapping[tuple[str, str], Iterable[Any]] | None = None,
    headers: Mapping[str, str] | None = None,
    max_examples: int = 25,
) -> dict[str, str]:
    """Run schemathesis over the operations of ``base_url``'s ``/schema/openapi.json``.

    ``paths``: the path templates to check (an iterable, or a predicate such as
    ``lambda p: p.startswith("/mine")``); default every operation. ``excluded``:
    ``{(METHOD, path): [schemathesis check, ...]}``, checks that do not apply to an operation
    (say why next to it). ``headers`` go with every request (an admin token).
    ``max_examples`` requests per operation and generation mode. Returns ``{label: "passed"}``;
    raises ``AssertionError`` naming every failed operation, or when no operation was chosen.
    """
    import schemathesis
    from hypothesis import strategies as st
    from schemathesis import GenerationMode

    wanted = paths if callable(paths) or paths is None else set(paths).__contains__
    schema = schemathesis.openapi.from_url(f"{base_url}/schema/openapi.json")
    report: dict[str, str] = {}
    failures: dict[str, str] = {}
    for result in schema.get_all_operations():
        operation = result.ok()
        if wanted is not None and not wanted(operation.path):
            continue
        skip = list((excluded or {}).get((operation.method.upper(), operation.path), []))
        strategy = st.one_of(operation.as_strategy(GenerationMode.POSITIVE),
                             operation.as_strategy(GenerationMode.NEGATIVE))

        try:
            _run_cases(strategy, base_url, dict(headers or {}), skip, max_examples)
        except (KeyboardInterrupt, SystemExit):
            raise
        except BaseException as exc:  # schemathesis's failure groups (BaseExceptionGroup) and hypothesis errors alike
            failures[operation.label] = " ".join(str(exc).split())[:2000]
            report[operation.label] = "failed"
        else:
            report[operation.label] = "passed"
    if not report:
        raise AssertionError("no operation of the document was chosen by `paths`")
    if failures:
        raise AssertionError("OpenAPI conformance failed:\n" + "\n".join(f"{k}: {v}" for k, v in failures.items()))
    return report


__all__ = ["check_openapi", "is_admin_guarded", "path_template", "route_table"]
