"""``lmcache_core.units``: the shared size parser (base 1024, LMCache's grammar) and its inverse."""

from __future__ import annotations

import math
import re
from typing import Any

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from lmcache_core.units import (
    GIB,
    KIB,
    MAX_SIZE_BYTES,
    MAX_SIZE_TEXT,
    MIB,
    SIZE_ERROR,
    TIB,
    UNITS,
    format_size,
    parse_size,
)

sizes = st.integers(1, MAX_SIZE_BYTES)
unit_names = st.sampled_from(sorted(UNITS))
spaces = st.text(" \t", max_size=2)


def random_case(draw: Any, text: str) -> str:
    flips = draw(st.lists(st.booleans(), min_size=len(text), max_size=len(text)))
    return "".join(c.upper() if f else c for c, f in zip(text, flips))


@pytest.mark.parametrize(("text", "expected"), [
    ("100GiB", 100 * GIB), ("512MiB", 512 * MIB), ("1.5GB", 3 * GIB // 2), ("1.5gb", 3 * GIB // 2),
    ("4096", 4096), ("1b", 1), ("1k", KIB), ("2KB", 2 * KIB), ("3kib", 3 * KIB), ("1m", MIB), ("1t", TIB),
    ("2TiB", 2 * TIB), ("  8 GiB \n", 8 * GIB), ("1.5KiB", 1536), ("0.5KiB", 512), ("1.0009765625k", 1025),
    ("1.9b", 1), ("007MiB", 7 * MIB), ("0.001KiB", 1), ("8388607TiB", 8388607 * TIB),
])
def test_documented_strings(text: str, expected: int) -> None:
    assert parse_size(text) == expected


@pytest.mark.parametrize("value", [
    "", "   ", "GiB", "-1", "-1GiB", "- 5", "+5", "0", "0GiB", "0.0001KiB", "0.4b", ".5G", "5.", "5.G", "1.2.3",
    "1e9", "1E3", "nan", "NaN", "inf", "-inf", "Infinity", "0x10", "1_000", "1,000", "10 GiB B", "10 XiB", "10PiB",
    "10EiB", "10 g i b", "1\u00a0GiB", "\u0661\u0660", "\u00b2", "\uff11GiB", "1GiB\x00", "1" * (MAX_SIZE_TEXT + 1),
    "8388608TiB", "9223372036854775808", 0, -1, -(2**70), 2**63, 2**200, True, False, 1.0, 1.5, math.nan,
    math.inf, -math.inf, None, [1], {"size": 1}, b"1GiB", 1j,
])
def test_rejections_are_value_errors_with_the_documented_message(value: Any) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(value)
    assert str(info.value).startswith(SIZE_ERROR + " (")


def test_the_message_says_what_was_wrong() -> None:
    cases = {"-1GiB": "negative", "0": "less than one byte", "0.3b": "less than one byte", "1XB": "unknown unit 'XB'",
             True: "boolean", 1.5: "float", "9" * 30: "larger than", "": "empty", "x" * 65: "longer than 64"}
    for value, fragment in cases.items():
        with pytest.raises(ValueError, match=re.escape(fragment)):
            parse_size(value)


def test_zero_only_when_allowed() -> None:
    assert parse_size(0, allow_zero=True) == 0
    assert parse_size("0GiB", allow_zero=True) == 0
    assert parse_size("0.3b", allow_zero=True) == 0
    with pytest.raises(ValueError):
        parse_size(-1, allow_zero=True)


def test_the_longest_allowed_string_is_accepted_after_stripping() -> None:
    text = "1" * (MAX_SIZE_TEXT - 1) + "b"
    with pytest.raises(ValueError, match="larger than"):  # accepted by length, refused by range
        parse_size("   " + text + "   ")
    assert parse_size("  " + "0" * (MAX_SIZE_TEXT - 2) + "1b  ") == 1


@settings(max_examples=300, deadline=None)
@given(sizes)
def test_integers_are_byte_counts(n: int) -> None:
    assert parse_size(n) == n


@settings(max_examples=300, deadline=None)
@given(sizes)
@example(1)
@example(1023)
@example(KIB)
@example(3 * TIB)
@example(MAX_SIZE_BYTES)
def test_format_then_parse_round_trips(n: int) -> None:
    text = format_size(n)
    assert parse_size(text) == n
    match = re.fullmatch(r"[1-9][0-9]*(B|KiB|MiB|GiB|TiB)", text)
    assert match
    ladder = [("B", 1), ("KiB", KIB), ("MiB", MIB), ("GiB", GIB), ("TiB", TIB)]
    step = [name for name, _ in ladder].index(match.group(1))
    if step + 1 < len(ladder):  # the largest exact unit: the next one up does not divide
        assert n % ladder[step + 1][1] != 0


@settings(max_examples=300, deadline=None)
@given(st.data(), st.integers(0, 10**12), unit_names, spaces, spaces, spaces)
def test_integer_with_any_unit(data: Any, n: int, unit: str, lead: str, mid: str, tail: str) -> None:
    text = f"{lead}{n}{mid}{random_case(data.draw, unit)}{tail}"
    expected = n * UNITS[unit]
    if 0 < expected <= MAX_SIZE_BYTES:
        assert parse_size(text) == expected
    else:
        with pytest.raises(ValueError):
            parse_size(text)


@settings(max_examples=300, deadline=None)
@given(st.integers(0, 10**9), st.text("0123456789", min_size=1, max_size=12), unit_names)
def test_fractions_truncate_exactly(whole: int, fraction: str, unit: str) -> None:
    # exact rational arithmetic as the oracle: no float, no Decimal rounding
    expected = (whole * 10 ** len(fraction) + int(fraction)) * UNITS[unit] // 10 ** len(fraction)
    text = f"{whole}.{fraction}{unit}"
    if 0 < expected <= MAX_SIZE_BYTES:
        assert parse_size(text) == expected
    else:
        with pytest.raises(ValueError):
            parse_size(text)


GRAMMAR = re.compile(r"[ \t\r\n\f\v]*[0-9]+(\.[0-9]+)?[ \t\r\n\f\v]*(b|kb?|kib|mb?|mib|gb?|gib|tb?|tib)?[ \t\r\n\f\v]*",
                     re.IGNORECASE | re.ASCII)


@settings(max_examples=500, deadline=None)
@given(st.one_of(st.text(max_size=20), st.text("0123456789.-+ eEkKmMgGtTiIbBxX\u00a0\u0661", max_size=12)))
def test_any_text_is_a_valid_size_or_a_value_error(text: str) -> None:
    """Garbage never escapes as another exception, and only the grammar's strings are accepted."""
    try:
        size = parse_size(text)
    except ValueError as exc:
        assert str(exc).startswith(SIZE_ERROR)
        return
    assert GRAMMAR.fullmatch(text), text
    assert 0 < size <= MAX_SIZE_BYTES


@settings(max_examples=200, deadline=None)
@given(st.one_of(st.none(), st.booleans(), st.floats(), st.integers(max_value=0), st.integers(min_value=2**63),
                 st.binary(max_size=8), st.lists(st.integers(), max_size=2), st.dictionaries(st.text(), st.integers())))
def test_other_values_are_refused(value: Any) -> None:
    with pytest.raises(ValueError) as info:
        parse_size(value)
    assert str(info.value).startswith(SIZE_ERROR)


@pytest.mark.parametrize("value", [-1, 1.0, True, "1GiB", None])
def test_format_size_refuses_what_is_not_a_byte_count(value: Any) -> None:
    with pytest.raises(ValueError):
        format_size(value)


def test_format_size_examples() -> None:
    assert [format_size(n) for n in (0, 1, 1536, KIB, 100 * GIB, 512 * MIB, TIB + KIB)] == [
        "0B", "1B", "1536B", "1KiB", "100GiB", "512MiB", f"{TIB // KIB + 1}KiB"]
    assert parse_size(format_size(0), allow_zero=True) == 0
