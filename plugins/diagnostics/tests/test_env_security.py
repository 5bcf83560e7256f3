"""Issue 13 (lower findings): ``GET /env`` masks URL credentials in every value and the secret names
the name-only masking missed (``DB_PASS``, ``MYSQL_PWD``, ``SENTRY_DSN``, ``GITHUB_PAT``)."""

from __future__ import annotations

import json

LEAKED_BEFORE = {
    "DATABASE_URL": ("postgres://admin:hunter2@db.internal:5432/app", "postgres://***@db.internal:5432/app"),
    "HTTPS_PROXY": ("http://u:p4ss@proxy.internal:3128", "http://***@proxy.internal:3128"),
    "DIAG_DB_PASS": ("pass-value-1", "***"),
    "MYSQL_PWD": ("pwd-value-2", "***"),
    "SENTRY_DSN": ("https://abc123@o1.ingest.sentry.io/42", "***"),
    "GITHUB_PAT": ("ghp_value3", "***"),
}
STILL_SHOWN = {"DIAG_COMPASS": "north", "DIAG_URL_NO_CREDS": "https://example.invalid/x@y"}


def test_env_masks_url_credentials_and_the_wider_secret_names(diag, monkeypatch):
    for name, (value, _) in LEAKED_BEFORE.items():
        monkeypatch.setenv(name, value)
    for name, value in STILL_SHOWN.items():
        monkeypatch.setenv(name, value)
    resp = diag().get("/env")
    assert resp.status_code == 200
    doc = json.loads(resp.text)
    for name, (value, shown) in LEAKED_BEFORE.items():
        assert doc[name] == shown
    for secret in ("hunter2", "p4ss", "pass-value-1", "pwd-value-2", "abc123", "ghp_value3"):
        assert secret not in resp.text
    for name, value in STILL_SHOWN.items():
        assert doc[name] == value


def test_env_show_secrets_shows_everything(diag, monkeypatch):
    monkeypatch.setenv("DATABASE_URL", "postgres://admin:hunter2@db/app")
    doc = json.loads(diag("--env-show-secrets").get("/env").text)
    assert doc["DATABASE_URL"] == "postgres://admin:hunter2@db/app"
