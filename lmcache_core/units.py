"""Byte sizes written by people: ``parse_size("100GiB")`` and its inverse :func:`format_size`.

One parser for every place a size arrives as text or JSON (the reconfigure
routes' ``size``, adapter configs). The grammar is LMCache's
(its "base-1024 unit suffix"):

* a JSON/Python integer: a byte count (``bool`` is not an integer here);
* a string of at most 64 characters (after stripping surrounding whitespace):
  ASCII digits with an optional ``.digits`` fraction (both sides non-empty),
  optional whitespace, then an optional case-insensitive unit from ``b``,
  ``k``/``kb``/``kib``, ``m``/``mb``/``mib``, ``g``/``gb``/``gib``,
  ``t``/``tb``/``tib``. Every unit is binary: ``"1GB"`` is 2**30 bytes, like
  ``"1GiB"`` (LMCache's choice, kept so the same request means the same size).

A fractional result is truncated to whole bytes (``"1.5KiB"`` is 1536,
``"0.3b"`` is 0). The result must be positive (or zero with ``allow_zero``) and
at most :data:`MAX_SIZE_BYTES` (a signed 64-bit byte count: what ``mmap``,
``ftruncate`` and file offsets can take). Everything else — negatives, floats,
NaN, infinities, exponents, signs, non-ASCII digits, unknown units, overflow,
other types — raises ``ValueError`` whose message starts with
:data:`SIZE_ERROR` and says what was wrong.

Departure from LMCache: its parser accepted any Unicode digit (``str.isdigit``),
so some inputs (``"²"``) escaped as a non-``ValueError`` exception (a 500); this
one is ASCII-only and exact (integer arithmetic, no 28-digit ``Decimal``
rounding), so a long number is never silently rounded.
"""

from __future__ import annotations

import re
from typing import Any

__all__ = ["KIB", "MIB", "GIB", "TIB", "MAX_SIZE_BYTES", "MAX_SIZE_TEXT", "SIZE_ERROR", "UNITS",
           "format_size", "parse_size"]

KIB = 1 << 10
MIB = 1 << 20
GIB = 1 << 30
TIB = 1 << 40

MAX_SIZE_BYTES = (1 << 63) - 1
"""The largest size accepted: a signed 64-bit byte count."""

MAX_SIZE_TEXT = 64
"""The longest size string accepted (after stripping surrounding whitespace), as LMCache."""

SIZE_ERROR = "size must be a positive integer byte count or a string like '100GiB'"
"""LMCache's message for a bad ``size``; every :func:`parse_size` error starts with it."""

UNITS: dict[str, int] = {
    "": 1, "b": 1,
    "k": KIB, "kb": KIB, "kib": KIB,
    "m": MIB, "mb": MIB, "mib": MIB,
    "g": GIB, "gb": GIB, "gib": GIB,
    "t": TIB, "tb": TIB, "tib": TIB,
}
"""Unit suffix (lower case) → bytes. All binary."""

_SIZE_TEXT = re.compile(r"([0-9]+)(?:\.([0-9]+))?\s*([a-z]*)", re.ASCII | re.IGNORECASE)
_FORMAT_UNITS = (("TiB", TIB), ("GiB", GIB), ("MiB", MIB), ("KiB", KIB))


def _bad(detail: str) -> ValueError:
    return ValueError(f"{SIZE_ERROR} ({detail})")


def _check_range(size: int, allow_zero: bool, shown: str) -> int:
    if size < 0:
        raise _bad(f"{shown} is negative")
    if size == 0 and not allow_zero:
        raise _bad(f"{shown} is less than one byte")
    if size > MAX_SIZE_BYTES:
        raise _bad(f"{shown} is larger than {MAX_SIZE_BYTES} bytes")
    return size


def parse_size(value: Any, *, allow_zero: bool = False) -> int:
    """The byte count that ``value`` (an ``int`` or a string like ``"100GiB"``) stands for.

    ``ValueError`` for anything the module docstring does not allow; ``allow_zero``
    accepts a size of zero bytes (default: sizes must be positive, as the seed says).
    """
    if isinstance(value, bool):  # before int: True is an int to Python, not a size to a person
        raise _bad("got a boolean")
    if isinstance(value, int):
        return _check_range(value, allow_zero, str(value) if abs(value) < 10**30 else "the integer")
    if not isinstance(value, str):
        kind = type(value).__name__
        raise _bad(f"got {kind}; write an integer or a string such as '1.5GiB'" if kind == "float" else f"got {kind}")
    text = value.strip(" \t\r\n\f\v")
    if not text:
        raise _bad("empty string")
    if len(text) > MAX_SIZE_TEXT:
        raise _bad(f"longer than {MAX_SIZE_TEXT} characters")
    match = _SIZE_TEXT.fullmatch(text)
    if match is None and text[0] == "-" and _SIZE_TEXT.fullmatch(text[1:].lstrip()):
        raise _bad(f"{text!r} is negative")
    if match is None:
        raise _bad(f"{text!r} is not a number with an optional unit")
    whole, fraction, unit = match.group(1), match.group(2) or "", match.group(3).lower()
    multiplier = UNITS.get(unit)
    if multiplier is None:
        raise _bad(f"unknown unit {match.group(3)!r}; units: b, k, kb, kib, m, mb, mib, g, gb, gib, t, tb, tib")
    scale = 10 ** len(fraction)
    size = (int(whole) * scale + int(fraction or "0")) * multiplier // scale  # exact, truncated to bytes
    return _check_range(size, allow_zero, repr(text))


def format_size(size: int) -> str:
    """``size`` bytes in the largest binary unit that holds it exactly (``"100GiB"``, ``"1536B"``).

    The inverse of :func:`parse_size`: ``parse_size(format_size(n)) == n`` for every
    accepted ``n``. ``ValueError`` for a negative or non-integer ``size``.
    """
    if isinstance(size, bool) or not isinstance(size, int) or size < 0:
        raise ValueError(f"a size to format must be a non-negative integer, got {size!r:.40}")
    for suffix, multiplier in _FORMAT_UNITS:
        if size and size % multiplier == 0:
            return f"{size // multiplier}{suffix}"
    return f"{size}B"
