"""With ``--http-admin-token``, each guarded diagnostic route is refused (401) without the token and served
with it; ``/loglevel`` reads and ``/periodic-threads-health`` stay open. Without a token all are open."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

TOKEN = "diag-s3cret"
UNAUTHORIZED = {"error": "admin token required"}
BAD_HEADERS = [{}, {"Authorization": "Bearer wrong"}, {"Authorization": f"Basic {TOKEN}"},
               {"Authorization": TOKEN}, {"Authorization": f"Bearer {TOKEN}x"}]


@pytest.fixture(autouse=True)
def _restore(restore_logging: None) -> None:
    """The set mode below changes a level; put it back."""


def guarded_requests(marker: Path) -> dict[str, tuple[str, str, dict]]:
    """name → (method, path, httpx kwargs) of every guarded request, each of which would change or reveal something."""
    script = f"import pathlib\npathlib.Path({str(marker)!r}).write_text('ran')\nresult = 'ran'"
    return {
        "loglevel-set": ("GET", "/loglevel", {"params": {"logger_name": "diagtoken.target", "level": "DEBUG"}}),
        "threads": ("GET", "/threads", {}),
        "periodic-threads": ("GET", "/periodic-threads", {}),
        "periodic-thread": ("GET", "/periodic-threads/SessionManager-cleanup-thread", {}),
        "env": ("GET", "/env", {}),
        "run_script": ("POST", "/run_script", {"files": {"script": ("s.py", script.encode())}}),
    }


@pytest.mark.parametrize("name", ["loglevel-set", "threads", "periodic-threads", "periodic-thread", "env",
                                  "run_script"])
def test_each_guarded_route_is_refused_without_the_token_and_served_with_it(diag, tmp_path, name):
    d = diag("--http-admin-token", TOKEN, "--run-script-api-enabled", "--script-allowed-imports", "pathlib")
    target = logging.getLogger("diagtoken.target")
    target.setLevel(logging.WARNING)
    marker = tmp_path / "marker"
    method, path, kwargs = guarded_requests(marker)[name]
    for headers in BAD_HEADERS:
        resp = d.http.request(method, path, headers=headers, **kwargs)
        assert resp.status_code == 401, (name, headers)
        assert resp.json() == UNAUTHORIZED
        assert resp.headers["www-authenticate"].startswith("Bearer")
    # Refused requests did nothing.
    assert target.level == logging.WARNING and not marker.exists()
    resp = d.http.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"}, **kwargs)
    assert resp.status_code == 200, resp.text
    if name == "loglevel-set":
        assert target.level == logging.DEBUG
    if name == "run_script":
        assert resp.text == "ran" and marker.exists()


def test_run_script_with_the_token_but_not_enabled_is_404(diag, tmp_path):
    d = diag("--http-admin-token", TOKEN, "--script-allowed-imports", "pathlib")
    marker = tmp_path / "marker"
    method, path, kwargs = guarded_requests(marker)["run_script"]
    assert d.http.request(method, path, **kwargs).status_code == 401  # the guard answers first
    resp = d.http.request(method, path, headers={"Authorization": f"Bearer {TOKEN}"}, **kwargs)
    assert (resp.status_code, resp.text) == (404, "run_script is disabled (start the server with "
                                                  "--run-script-api-enabled)")
    assert not marker.exists()


def test_reads_and_the_health_probe_stay_open_with_a_token(diag):
    d = diag("--http-admin-token", TOKEN)
    assert d.get("/loglevel").status_code == 200
    assert d.get("/loglevel", params={"logger_name": "root"}).status_code == 200
    assert d.get("/loglevel", params={"level": "DEBUG"}).status_code == 200  # the null-body mode changes nothing
    resp = d.get("/periodic-threads-health")
    assert (resp.status_code, resp.json()["healthy"]) == (200, True)


def test_without_a_token_every_route_is_open(diag, tmp_path):
    d = diag("--run-script-api-enabled", "--script-allowed-imports", "pathlib")
    for name, (method, path, kwargs) in guarded_requests(tmp_path / "marker").items():
        assert d.http.request(method, path, **kwargs).status_code == 200, name
