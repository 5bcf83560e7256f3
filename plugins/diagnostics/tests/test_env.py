"""``GET /env`` over real HTTP: sorted, indented JSON served as text/plain, secret-looking values masked
unless ``--env-show-secrets`` (the option also read from ``LMCACHE_ENV_SHOW_SECRETS``)."""

from __future__ import annotations

import json
import os

import pytest

TEXT = "text/plain; charset=utf-8"
SECRETS = {
    "DIAG_API_KEY": "key-value-1",
    "DIAG_CLIENT_SECRET": "secret-value-2",
    "DIAG_SESSION_TOKEN": "token-value-3",
    "DIAG_DB_PASSWORD": "password-value-4",
    "DIAG_LDAP_PASSWD": "passwd-value-5",
    "DIAG_GCP_CREDENTIALS": "credential-value-6",
    "diag_lower_apikey": "key-value-7",
}
PLAIN = {"DIAG_PLAIN": "visible-value", "DIAG_UNICODE": "ünï ✓", "DIAG_QUOTES": 'say "hi"\n'}


@pytest.fixture
def environment(monkeypatch: pytest.MonkeyPatch) -> None:
    for name, value in {**SECRETS, **PLAIN, "DIAG_EMPTY_TOKEN": ""}.items():
        monkeypatch.setenv(name, value)


def test_env_is_sorted_pretty_json_as_text_with_secrets_masked(diag, environment):
    d = diag()
    resp = d.get("/env")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == TEXT
    assert resp.text.startswith('{\n  "')  # indented by 2
    doc = json.loads(resp.text)
    assert list(doc) == sorted(doc)
    assert set(doc) == set(os.environ)
    for name, value in PLAIN.items():
        assert doc[name] == value
    for name, value in SECRETS.items():
        assert doc[name] == "***"
        assert value not in resp.text
    assert doc["DIAG_EMPTY_TOKEN"] == ""  # nothing to hide
    assert doc["PATH"] == os.environ["PATH"]


def test_the_admin_token_itself_is_masked(diag, monkeypatch):
    monkeypatch.setenv("LMCACHE_HTTP_ADMIN_TOKEN", "diag-s3cret")
    d = diag("--http-admin-token", "diag-s3cret")
    resp = d.get("/env", auth=True)
    assert json.loads(resp.text)["LMCACHE_HTTP_ADMIN_TOKEN"] == "***"
    assert "diag-s3cret" not in resp.text


def test_env_show_secrets_shows_them(diag, environment):
    doc = json.loads(diag("--env-show-secrets").get("/env").text)
    assert {name: doc[name] for name in SECRETS} == SECRETS


def test_env_show_secrets_from_the_environment(diag, environment):
    on = diag(environ={"LMCACHE_ENV_SHOW_SECRETS": "1"})
    assert json.loads(on.get("/env").text)["DIAG_API_KEY"] == "key-value-1"
    off = diag(environ={"LMCACHE_ENV_SHOW_SECRETS": "false"})
    assert json.loads(off.get("/env").text)["DIAG_API_KEY"] == "***"


def test_env_answers_before_the_engine_starts(diag, environment):
    resp = diag(start=False).get("/env")
    assert resp.status_code == 200 and json.loads(resp.text)["DIAG_API_KEY"] == "***"
