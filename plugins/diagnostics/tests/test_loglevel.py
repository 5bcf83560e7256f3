"""``GET /loglevel`` over real HTTP: list, read and set modes, the 400 for a bad level, the null body,
and the admin token on the set mode only. Every test restores logger levels (``restore_logging``)."""

from __future__ import annotations

import logging

import pytest

TEXT = "text/plain; charset=utf-8"


@pytest.fixture(autouse=True)
def _restore(restore_logging: None) -> None:
    """Every test here changes levels; put them back."""


def levels_of(*names: str) -> dict[str, int]:
    return {name: logging.getLogger(name).level for name in names}


def test_list_mode_names_every_logger_with_its_own_level(diag):
    d = diag()
    logging.getLogger("diagtest.listed").setLevel(logging.WARNING)
    logging.getLogger("diagtest.listed.child")  # level unset: NOTSET
    resp = d.get("/loglevel")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == TEXT
    lines = resp.text.split("\n")
    assert lines[0] == "=== Loggers and Levels ==="
    assert lines[1] == f"root: {logging.getLevelName(logging.getLogger().level)}"
    assert "diagtest.listed: WARNING" in lines
    assert "diagtest.listed.child: NOTSET" in lines
    names = [line.split(": ")[0] for line in lines[2:]]
    assert names == sorted(names)
    # Placeholders (``diagtest`` was never created itself) are not loggers and are not listed.
    assert "diagtest" not in names


def test_read_mode_answers_the_logger_s_own_level(diag):
    d = diag()
    logging.getLogger("diagtest.read").setLevel(logging.ERROR)
    resp = d.get("/loglevel", params={"logger_name": "diagtest.read"})
    assert (resp.status_code, resp.headers["content-type"], resp.text) == (200, TEXT, "diagtest.read: ERROR")
    # A logger without its own level reports NOTSET, not the effective level (LMCache does the same).
    logging.getLogger("diagtest.read.child")
    assert d.get("/loglevel", params={"logger_name": "diagtest.read.child"}).text == "diagtest.read.child: NOTSET"
    logging.getLogger().setLevel(logging.INFO)
    assert d.get("/loglevel", params={"logger_name": "root"}).text == "root: INFO"


def test_reading_an_unknown_logger_does_not_create_it(diag):
    d = diag()
    resp = d.get("/loglevel", params={"logger_name": "diagtest.never.created"})
    assert (resp.status_code, resp.text) == (200, "diagtest.never.created: NOTSET")
    assert "diagtest.never.created" not in logging.Logger.manager.loggerDict


def test_set_mode_sets_the_logger_and_its_handlers(diag):
    d = diag()
    target = logging.getLogger("diagtest.set")
    target.setLevel(logging.WARNING)
    handler = logging.NullHandler()
    handler.setLevel(logging.ERROR)
    target.addHandler(handler)
    try:
        resp = d.get("/loglevel", params={"logger_name": "diagtest.set", "level": "debug"})
        assert resp.status_code == 200
        assert resp.headers["content-type"] == TEXT
        assert resp.text == "Set diagtest.set level to DEBUG (including all handlers)"
        assert target.level == logging.DEBUG and handler.level == logging.DEBUG
        assert target.isEnabledFor(logging.DEBUG)
        # The read mode sees the change.
        assert d.get("/loglevel", params={"logger_name": "diagtest.set"}).text == "diagtest.set: DEBUG"
    finally:
        target.removeHandler(handler)


@pytest.mark.parametrize("given, expected", [("WARN", logging.WARNING), ("fatal", logging.CRITICAL),
                                             ("Notset", logging.NOTSET), (" info ", logging.INFO)])
def test_every_level_name_is_accepted_in_any_case(diag, given, expected):
    d = diag()
    resp = d.get("/loglevel", params={"logger_name": "diagtest.names", "level": given})
    assert resp.status_code == 200
    assert resp.text == f"Set diagtest.names level to {logging.getLevelName(expected)} (including all handlers)"
    assert logging.getLogger("diagtest.names").level == expected


def test_set_mode_creates_a_logger_that_does_not_exist_yet(diag):
    d = diag()
    assert d.get("/loglevel", params={"logger_name": "diagtest.later", "level": "ERROR"}).status_code == 200
    assert logging.getLogger("diagtest.later").level == logging.ERROR


def test_set_mode_on_root(diag):
    d = diag()
    resp = d.get("/loglevel", params={"logger_name": "root", "level": "ERROR"})
    assert (resp.status_code, resp.text) == (200, "Set root level to ERROR (including all handlers)")
    assert logging.getLogger().level == logging.ERROR


@pytest.mark.parametrize("bad", ["bogus", "BASIC_FORMAT", "getLogger", "10", "DEBUGX", "Ｄｅｂｕｇ"])
def test_a_bad_level_is_400_text_and_changes_nothing(diag, bad):
    d = diag()
    target = logging.getLogger("diagtest.bad")
    target.setLevel(logging.WARNING)
    resp = d.get("/loglevel", params={"logger_name": "diagtest.bad", "level": bad})
    assert resp.status_code == 400
    assert resp.headers["content-type"] == TEXT
    assert resp.text == f"Invalid log level: {bad}"
    assert target.level == logging.WARNING
    # Nor does a bad level create the logger it names.
    assert d.get("/loglevel", params={"logger_name": "diagtest.bad.new", "level": bad}).status_code == 400
    assert "diagtest.bad.new" not in logging.Logger.manager.loggerDict


def test_level_without_logger_name_is_a_null_body_and_changes_nothing(diag):
    d = diag()
    before = levels_of("", "lmcache_core", "diagtest.null")
    for params in ({"level": "DEBUG"}, {"level": "bogus"}, {"logger_name": "", "level": "DEBUG"}):
        resp = d.get("/loglevel", params=params)
        assert resp.status_code == 200
        assert resp.headers["content-type"] == "application/json"
        assert resp.content == b"null"
    assert levels_of("", "lmcache_core", "diagtest.null") == before


def test_empty_parameters_mean_absent(diag):
    d = diag()
    assert d.get("/loglevel", params={"logger_name": ""}).text.startswith("=== Loggers and Levels ===\n")
    logging.getLogger("diagtest.empty").setLevel(logging.INFO)
    assert d.get("/loglevel", params={"logger_name": "diagtest.empty", "level": ""}).text == "diagtest.empty: INFO"
    assert logging.getLogger("diagtest.empty").level == logging.INFO


def test_with_a_token_only_the_set_mode_is_guarded(diag):
    d = diag("--http-admin-token", "diag-s3cret")
    target = logging.getLogger("diagtest.guarded")
    target.setLevel(logging.WARNING)
    # Reads stay open.
    assert d.get("/loglevel").status_code == 200
    assert d.get("/loglevel", params={"logger_name": "diagtest.guarded"}).text == "diagtest.guarded: WARNING"
    assert d.get("/loglevel", params={"level": "DEBUG"}).content == b"null"
    # Setting needs the token; refused requests change nothing and learn nothing (401 before the 400).
    for params in ({"logger_name": "diagtest.guarded", "level": "DEBUG"},
                   {"logger_name": "diagtest.guarded", "level": "bogus"}):
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": "Basic diag-s3cret"}):
            resp = d.get("/loglevel", params=params, headers=headers)
            assert resp.status_code == 401
            assert resp.json() == {"error": "admin token required"}
            assert resp.headers["www-authenticate"].startswith("Bearer")
    assert target.level == logging.WARNING
    resp = d.get("/loglevel", auth=True, params={"logger_name": "diagtest.guarded", "level": "DEBUG"})
    assert (resp.status_code, resp.text) == (200, "Set diagtest.guarded level to DEBUG (including all handlers)")
    assert target.level == logging.DEBUG
    assert d.get("/loglevel", auth=True, params={"logger_name": "diagtest.guarded", "level": "x"}).status_code == 400


def test_loglevel_answers_before_the_engine_starts(diag):
    d = diag(start=False)
    assert d.get("/loglevel").status_code == 200
    assert d.get("/loglevel", params={"logger_name": "diagtest.early", "level": "INFO"}).status_code == 200
    assert logging.getLogger("diagtest.early").level == logging.INFO
