"""Value types for command-line options and ``LMCACHE_*`` variables: one module for every parser.

Each is an argparse ``type=``: it takes the text of a flag or variable and returns the value,
or raises ``argparse.ArgumentTypeError`` with a message that says what was wrong. The core
launcher, the config registration (:mod:`lmcache_core.config`) and plugins use the same ones.
:func:`for_type` derives a parser from a config field's annotation (``int``, ``float``,
``str``, ``bool``, ``Literal[...]``, ``X | None``, with ``msgspec.Meta`` bounds).
"""

from __future__ import annotations

import argparse
import json
import math
import types
import typing
from collections.abc import Callable
from typing import Any

import msgspec

TRUE_WORDS = frozenset({"1", "true", "yes", "on"})
FALSE_WORDS = frozenset({"0", "false", "no", "off", ""})


def number(kind: Callable[[str], Any], *, minimum: float | None = None, maximum: float | None = None,
           min_inclusive: bool = True) -> Callable[[str], Any]:
    """A parser of ``kind`` (``int`` or ``float``): finite, within ``[minimum, maximum]`` (or ``(minimum, ...``)."""
    def parse(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a valid {kind.__name__}") from None
        if isinstance(value, float) and not math.isfinite(value):
            raise argparse.ArgumentTypeError(f"{text!r} is not a finite number")
        if minimum is not None and (value < minimum or (not min_inclusive and value == minimum)):
            raise argparse.ArgumentTypeError(f"{value} must be {'>=' if min_inclusive else '>'} {minimum}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"{value} must be <= {maximum}")
        return value

    parse.__name__ = kind.__name__
    return parse


def power_of_two(text: str) -> int:
    """A positive power of two (an alignment)."""
    value = number(int, minimum=1)(text)
    if value & (value - 1):
        raise argparse.ArgumentTypeError(f"{value} is not a power of two")
    return value


def json_object(text: str) -> dict[str, Any]:
    """A JSON object with a non-empty ``"type"`` (an ``--l2-adapter`` spec)."""
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        shown = text if len(text) <= 80 else text[:77] + "..."
        raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg} at column {exc.colno}) in {shown!r}") from None
    if not isinstance(value, dict):
        raise argparse.ArgumentTypeError(f"must be a JSON object, got {text[:80]!r}")
    if not isinstance(value.get("type"), str) or not value["type"]:
        raise argparse.ArgumentTypeError('needs a "type" naming the adapter type')
    return value


def env_json_objects(text: str) -> list[dict[str, Any]]:
    """``LMCACHE_L2_ADAPTER``: one JSON object, or a JSON array of them."""
    stripped = text.strip()
    if stripped.startswith("["):
        try:
            items = json.loads(stripped)
        except json.JSONDecodeError as exc:
            raise argparse.ArgumentTypeError(f"not valid JSON ({exc.msg})") from None
        return [json_object(json.dumps(item)) for item in items]
    return [json_object(stripped)]


def boolean(text: str) -> bool:
    """true/false, 1/0, yes/no, on/off (any case); empty is false."""
    lowered = text.strip().lower()
    if lowered in TRUE_WORDS:
        return True
    if lowered in FALSE_WORDS:
        return False
    raise argparse.ArgumentTypeError(f"{text!r} is not a boolean (use true/false, 1/0, yes/no, on/off)")


def salt_quota(text: str) -> tuple[str, float]:
    """``SALT=GB`` (``--cache-salt-quota``): a cache salt and its quota in GiB (``=GB`` is the default salt)."""
    salt, sep, gb = text.rpartition("=")
    if not sep:
        raise argparse.ArgumentTypeError(f"expected SALT=GB, got {text!r}")
    from lmcache_core.keys import InvalidKeyError, validate_cache_salt

    try:
        validate_cache_salt(salt)
    except InvalidKeyError as exc:
        raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None
    return salt, NON_NEGATIVE_FLOAT(gb)


PORT = number(int, minimum=1, maximum=65535)
POSITIVE_INT = number(int, minimum=1)
NON_NEGATIVE_INT = number(int, minimum=0)
NON_NEGATIVE_FLOAT = number(float, minimum=0.0)
POSITIVE_FLOAT = number(float, minimum=0.0, min_inclusive=False)
FRACTION = number(float, minimum=0.0, maximum=1.0, min_inclusive=False)


# -- from annotations ------------------------------------------------------------------------------


def unwrap(tp: Any) -> tuple[Any, list[msgspec.Meta]]:
    """``Annotated[T, Meta(...), ...]`` → ``(T, [metas])``; any other type → ``(tp, [])``."""
    metas: list[msgspec.Meta] = []
    while typing.get_origin(tp) is typing.Annotated:
        tp, *extra = typing.get_args(tp)
        metas.extend(m for m in extra if isinstance(m, msgspec.Meta))
    return tp, metas


def optional_of(tp: Any) -> tuple[Any, bool]:
    """``X | None`` → ``(X, True)``; anything else → ``(tp, False)``."""
    args = typing.get_args(tp)
    if typing.get_origin(tp) in (typing.Union, types.UnionType) and type(None) in args:
        rest = [a for a in args if a is not type(None)]
        if len(rest) == 1:
            return rest[0], True
    return tp, False


def for_type(tp: Any) -> Callable[[str], Any]:
    """A parser for one value of type ``tp`` (``Annotated`` bounds checked by msgspec, floats finite)."""
    base, _ = unwrap(tp)
    base, _ = optional_of(base)
    base, _ = unwrap(base)
    if base is bool:
        return boolean
    name = getattr(base, "__name__", None) or str(base)

    def parse(text: str) -> Any:
        value: Any = text
        if base in (int, float):
            value = number(base)(text.strip())
        try:
            return msgspec.convert(value, tp, strict=False)
        except msgspec.ValidationError as exc:
            raise argparse.ArgumentTypeError(f"{text!r}: {exc}") from None

    parse.__name__ = name
    return parse


__all__ = [
    "FALSE_WORDS", "FRACTION", "NON_NEGATIVE_FLOAT", "NON_NEGATIVE_INT", "PORT", "POSITIVE_FLOAT", "POSITIVE_INT",
    "TRUE_WORDS", "boolean", "env_json_objects", "for_type", "json_object", "number", "optional_of", "power_of_two",
    "unwrap",
]
