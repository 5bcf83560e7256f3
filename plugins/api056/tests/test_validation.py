"""The 422 validation of the 0.5.6 bodies: pydantic's lax rules, every issue reported, nothing else accepted."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from lmcache_plugin_api056.validation import (
    INVALID,
    Invalid,
    as_bool,
    as_int,
    as_str,
    body_of,
    dataclass_of,
    list_of,
    REQUIRED,
)


def parse(parser, value):
    issues: list = []
    result = parser(value, ("x",), issues)
    return result, [i["type"] for i in issues]


@pytest.mark.parametrize(("value", "expected"), [
    (3, 3), (True, 1), ("3", 3), (" 7\n", 7), ("+3", 3), ("-3", -3), ("1_000", 1000), ("3.0", 3), (2.0, 2)])
def test_int_accepts_what_pydantic_lax_accepts(value, expected):
    assert parse(as_int, value) == (expected, [])


@pytest.mark.parametrize(("value", "kind"), [
    ("3.5", "int_parsing"), ("0x10", "int_parsing"), ("", "int_parsing"), ("\uff13", "int_parsing"),
    (1.5, "int_from_float"), (float("nan"), "finite_number"), (1e20, "int_parsing_size"),
    ("9" * 5000, "int_parsing_size"), (None, "int_type"), ([1], "int_type")])
def test_int_refuses_with_pydantics_type(value, kind):
    assert parse(as_int, value) == (INVALID, [kind])


@pytest.mark.parametrize(("value", "expected"), [
    (True, True), (0, False), (1.0, True), ("YES", True), ("off", False), ("t", True), ("n", False)])
def test_bool_accepts_what_pydantic_lax_accepts(value, expected):
    assert parse(as_bool, value) == (expected, [])


@pytest.mark.parametrize(("value", "kind"), [
    (2, "bool_parsing"), ("maybe", "bool_parsing"), (" yes", "bool_parsing"), (0.5, "bool_type"),
    (None, "bool_type"), ([], "bool_type")])
def test_bool_refuses_with_pydantics_type(value, kind):
    assert parse(as_bool, value) == (INVALID, [kind])


def test_every_issue_is_reported_with_its_location():
    parser = dataclass_of("Body", [("name", as_str, REQUIRED), ("ids", list_of(as_int), REQUIRED),
                                   ("flag", as_bool, False)])
    with pytest.raises(Invalid) as caught:
        body_of(b'{"ids": [1, "x", 2.5], "flag": "no", "other": 1}', parser)
    assert [(i["type"], i["loc"]) for i in caught.value.issues] == [
        ("missing", ["body", "name"]), ("int_parsing", ["body", "ids", 1]), ("int_from_float", ["body", "ids", 2])]
    assert body_of(b'{"name": "n", "ids": ["1"]}', parser) == {"name": "n", "ids": [1], "flag": False}
    assert body_of(b" ", parser, optional=True) is None
    assert body_of(b"null", parser, optional=True) is None


@given(st.one_of(st.integers(-(2**62), 2**62), st.booleans(), st.floats(), st.text(max_size=12), st.none()))
def test_int_is_int_or_exactly_one_issue(value):
    result, kinds = parse(as_int, value)
    assert (result is INVALID) == (len(kinds) == 1)
    if result is not INVALID:
        assert isinstance(result, int) and not isinstance(result, bool)
