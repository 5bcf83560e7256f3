"""Request validation with FastAPI's 422 envelope, as LMCache 0.5.6's clients receive it.

LMCache 0.5.6 declares its request bodies as dataclasses and lets FastAPI (pydantic 2,
lax mode) validate them. A client sees every failure at once, as
``{"detail": [{"type", "loc", "msg", "input"[, "ctx"]}, ...]}``. This module
reproduces that for the few shapes the 0.5.6 routes take: strings (strict), integers
and booleans (lax: ``"3"`` is 3, ``"yes"`` is true), string enums, lists and objects
with defaults. Messages and ``type`` names are pydantic's, so scripts that match on
them keep working; pydantic's ``url`` field (it names pydantic's version) is left out.

Pure functions: nothing here touches the engine, so a refused body changes nothing.
"""

from __future__ import annotations

import json
import math
import re
from collections.abc import Callable, Sequence
from typing import Any

Issue = dict[str, Any]
Loc = tuple[str | int, ...]
Parser = Callable[[Any, Loc, list[Issue]], Any]

REQUIRED = object()
"""Default of a field that must be present."""
INVALID = object()
"""What a parser returns for a value it reported an issue for."""

_INT_TEXT = re.compile(r"[+-]?[0-9]+(_[0-9]+)*(\.0*)?")
_MAX_INT_DIGITS = 4300  # Python's int() conversion limit; pydantic stops earlier, with the same type
_TRUE = frozenset({"1", "on", "t", "true", "y", "yes"})
_FALSE = frozenset({"0", "off", "f", "false", "n", "no"})


class Invalid(Exception):
    """A request that fails validation; :attr:`body` is the 422 answer."""

    def __init__(self, issues: list[Issue]) -> None:
        super().__init__(issues)
        self.issues = issues

    @property
    def body(self) -> dict[str, Any]:
        return {"detail": self.issues}


def issue(kind: str, loc: Loc, msg: str, value: Any, ctx: dict[str, Any] | None = None) -> Issue:
    """One entry of the ``detail`` list."""
    entry: Issue = {"type": kind, "loc": list(loc), "msg": msg, "input": value}
    if ctx is not None:
        entry["ctx"] = ctx
    return entry


def as_str(value: Any, loc: Loc, issues: list[Issue]) -> Any:
    if isinstance(value, str):
        return value
    issues.append(issue("string_type", loc, "Input should be a valid string", value))
    return INVALID


def as_optional_str(value: Any, loc: Loc, issues: list[Issue]) -> Any:
    return None if value is None else as_str(value, loc, issues)


def as_int(value: Any, loc: Loc, issues: list[Issue]) -> Any:
    """pydantic's lax int: ints and bools, integral finite floats, decimal strings (blanks, ``_``, ``.0``)."""
    if isinstance(value, int):
        return int(value)
    if isinstance(value, float):
        if not math.isfinite(value):
            issues.append(issue("finite_number", loc, "Input should be a finite number", value))
        elif not value.is_integer():
            issues.append(issue("int_from_float", loc,
                                "Input should be a valid integer, got a number with a fractional part", value))
        elif abs(value) >= 2**63:
            issues.append(issue("int_parsing_size", loc,
                                "Unable to parse input string as an integer, exceeded maximum size", value))
        else:
            return int(value)
        return INVALID
    if isinstance(value, str):
        text = value.strip(" \t\n\r\f\v")
        if _INT_TEXT.fullmatch(text):
            digits = text.split(".", 1)[0].replace("_", "")
            if len(digits.lstrip("+-")) > _MAX_INT_DIGITS:
                issues.append(issue("int_parsing_size", loc,
                                    "Unable to parse input string as an integer, exceeded maximum size", value))
                return INVALID
            return int(digits)
        issues.append(issue("int_parsing", loc,
                            "Input should be a valid integer, unable to parse string as an integer", value))
        return INVALID
    issues.append(issue("int_type", loc, "Input should be a valid integer", value))
    return INVALID


def as_bool(value: Any, loc: Loc, issues: list[Issue]) -> Any:
    """pydantic's lax bool: bools, 0/1 (int or float), and yes/no words in any case."""
    if isinstance(value, bool):
        return value
    if isinstance(value, (int, float)) and value in (0, 1):
        return bool(value)
    if isinstance(value, str):
        word = value.lower()
        if word in _TRUE or word in _FALSE:
            return word in _TRUE
    if isinstance(value, (int, str)):
        issues.append(issue("bool_parsing", loc, "Input should be a valid boolean, unable to interpret input", value))
    else:
        issues.append(issue("bool_type", loc, "Input should be a valid boolean", value))
    return INVALID


def _choices_text(choices: Sequence[str]) -> str:
    quoted = [f"'{c}'" for c in choices]
    return quoted[0] if len(quoted) == 1 else f"{', '.join(quoted[:-1])} or {quoted[-1]}"


def choice(choices: Sequence[str], kind: str = "enum") -> Parser:
    """A parser for one of ``choices`` (a str enum: ``kind`` ``enum``; a ``Literal``: ``literal_error``)."""
    expected = _choices_text(choices)

    def parse(value: Any, loc: Loc, issues: list[Issue]) -> Any:
        if isinstance(value, str) and value in choices:
            return value
        issues.append(issue(kind, loc, f"Input should be {expected}", value, {"expected": expected}))
        return INVALID

    return parse


TIERS = ("l1", "l2", "all")
as_tier = choice(TIERS)
"""LMCache's ``Tier`` enum: ``l1``, ``l2`` or ``all``."""


def list_of(item: Parser) -> Parser:
    def parse(value: Any, loc: Loc, issues: list[Issue]) -> Any:
        if not isinstance(value, list):
            issues.append(issue("list_type", loc, "Input should be a valid list", value))
            return INVALID
        items = [item(v, (*loc, i), issues) for i, v in enumerate(value)]
        return INVALID if any(v is INVALID for v in items) else items

    return parse


Fields = Sequence[tuple[str, Parser, Any]]
"""``(name, parser, default)``; ``default`` :data:`REQUIRED` for a required field."""


def fields_of(value: dict[str, Any], fields: Fields, loc: Loc, issues: list[Issue]) -> dict[str, Any]:
    """The declared fields of the object ``value`` (unknown ones are ignored), defaults filled in."""
    out: dict[str, Any] = {}
    for name, parse, default in fields:
        if name in value:
            out[name] = parse(value[name], (*loc, name), issues)
        elif default is REQUIRED:
            issues.append(issue("missing", (*loc, name), "Field required", value))
        else:
            out[name] = default
    return out


def dataclass_of(class_name: str, fields: Fields) -> Parser:
    """A parser for a dataclass body or body part: a JSON object, unknown fields ignored."""

    def parse(value: Any, loc: Loc, issues: list[Issue]) -> Any:
        if not isinstance(value, dict):
            issues.append(issue("dataclass_type", loc, f"Input should be a dictionary or an instance of {class_name}",
                                value, {"class_name": class_name}))
            return INVALID
        return fields_of(value, fields, loc, issues)

    return parse


def run(parser: Parser, value: Any, loc: Loc = ()) -> Any:
    """``parser`` on ``value``; raises :class:`Invalid` with every issue found."""
    issues: list[Issue] = []
    result = parser(value, loc, issues)
    if issues:
        raise Invalid(issues)
    return result


MISSING = object()
"""What :func:`json_body` returns for an absent body (empty, or JSON ``null``)."""


def json_body(raw: bytes) -> Any:
    """The JSON request body as FastAPI reads it; :data:`MISSING` when there is none.

    Raises :class:`Invalid` (``json_invalid`` at ``["body", <offset>]``) for text that is
    not JSON.
    """
    if not raw.strip():
        return MISSING
    try:
        value = json.loads(raw)
    except json.JSONDecodeError as exc:
        raise Invalid([issue("json_invalid", ("body", exc.pos), "JSON decode error", {}, {"error": exc.msg})]) from None
    except (UnicodeDecodeError, RecursionError) as exc:
        raise Invalid([issue("json_invalid", ("body", 0), "JSON decode error", {}, {"error": str(exc)[:200]})]) \
            from None
    return MISSING if value is None else value


def body_of(raw: bytes, parser: Parser, *, optional: bool = False) -> Any:
    """A FastAPI body parameter: ``parser``'s result, issues located under ``"body"``.

    An absent body is ``None`` when ``optional``, else the 422 ``missing`` at ``["body"]``.
    """
    value = json_body(raw)
    if value is MISSING:
        if optional:
            return None
        raise Invalid([issue("missing", ("body",), "Field required", None)])
    return run(parser, value, ("body",))
