"""``POST /run_script`` over real HTTP: off by default (404 as in LMCache 0.5.6, nothing runs), 200 with ``result``, 400 without a
file, 413 past the size limit, 500 for a failing script (the seed's documented 500), the restricted builtins,
the allow-listed importer and the time limit."""

from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

TEXT = "text/plain; charset=utf-8"
DISABLED = "run_script is disabled (start the server with --run-script-api-enabled)"
ENABLED = ("--run-script-api-enabled",)


def creating(path: Path) -> str:
    """A script that creates ``path`` when it runs (needs ``pathlib`` on the allow-list)."""
    return f"import pathlib\npathlib.Path({str(path)!r}).write_text('ran')\nresult = 'created'\n"


def script_threads() -> list[threading.Thread]:
    return [t for t in threading.enumerate() if t.name == "lmcache-run-script"]


def failure(resp, reason: str) -> None:
    assert resp.status_code == 500, resp.text
    assert resp.headers["content-type"] == TEXT
    assert resp.text == f"Error executing script: {reason}"


# -- off by default ----------------------------------------------------------------------------


def test_disabled_by_default_it_answers_404_and_runs_nothing(diag, tmp_path):
    d = diag("--script-allowed-imports", "pathlib")
    marker = tmp_path / "created-by-script"
    for send in (lambda: d.script(creating(marker)),
                 lambda: d.post("/run_script"),  # no body at all: still 404, not 400
                 lambda: d.post("/run_script", data={"script": creating(marker)})):
        resp = send()
        assert resp.status_code == 404
        assert resp.headers["content-type"] == TEXT
        assert resp.text == DISABLED
    assert not marker.exists()
    assert script_threads() == []
    # The same script with the flag does create the file: the 404 above is what stopped it.
    enabled = diag(*ENABLED, "--script-allowed-imports", "pathlib")
    resp = enabled.script(creating(marker))
    assert (resp.status_code, resp.text) == (200, "created")
    assert marker.read_text() == "ran"


def test_disabled_through_the_environment_too(diag, tmp_path):
    marker = tmp_path / "env-created"
    off = diag(environ={"LMCACHE_RUN_SCRIPT_API_ENABLED": "false", "LMCACHE_SCRIPT_ALLOWED_IMPORTS": "pathlib"})
    assert off.script(creating(marker)).status_code == 404
    assert not marker.exists()
    on = diag(environ={"LMCACHE_RUN_SCRIPT_API_ENABLED": "1", "LMCACHE_SCRIPT_ALLOWED_IMPORTS": "json,pathlib"})
    assert on.script(creating(marker)).text == "created"
    assert marker.exists()


# -- 200 ---------------------------------------------------------------------------------------


def test_result_is_returned_as_text(diag):
    d = diag(*ENABLED)
    resp = d.script("x = [1, 2, 3]\nresult = {'sum': sum(x), 'n': len(x)}\n")
    assert resp.status_code == 200
    assert resp.headers["content-type"] == TEXT
    assert resp.text == "{'sum': 6, 'n': 3}"


def test_without_result_the_body_says_it_ran(diag):
    resp = diag(*ENABLED).script("print('hello from a script')\ny = 2\n")
    assert (resp.status_code, resp.text) == (200, "Script executed successfully")


def test_the_script_sees_app_and_server_in_process(diag):
    d = diag(*ENABLED)
    resp = d.script("result = (app.state.server is server, server.mp_config.chunk_size, server.ready)")
    assert resp.text == "(True, 256, True)"


def test_functions_see_top_level_names_and_try_except_works(diag):
    resp = diag(*ENABLED).script(
        "k = 3\n"
        "def f():\n    return k * 2\n"
        "try:\n    {}['missing']\nexcept KeyError as exc:\n    caught = repr(exc)\n"
        "result = (f(), caught, sorted({3, 1, 2}))\n")
    assert resp.text == "(6, \"KeyError('missing')\", [1, 2, 3])"


def test_allowed_imports_from_the_command_line(diag):
    d = diag(*ENABLED, "--script-allowed-imports", "json", "math,os.path")
    assert d.script("import json\nresult = json.dumps({'a': [1]})").text == '{"a": [1]}'
    assert d.script("import math\nresult = math.sqrt(16)").text == "4.0"
    assert d.script("from math import floor\nresult = floor(2.5)").text == "2"
    assert d.script("import os.path\nresult = os.path.join('a', 'b')").text == "a/b"
    assert d.script("from os.path import basename\nresult = basename('/x/y')").text == "y"


def test_safe_getattr_and_hasattr_work_on_plain_names(diag):
    resp = diag(*ENABLED).script("result = (getattr('abc', 'upper')(), hasattr([], 'append'), getattr(1, 'x', 7))")
    assert resp.text == "('ABC', True, 7)"


def test_the_event_loop_keeps_serving_while_a_script_runs(diag):
    d = diag(*ENABLED, "--run-script-timeout-seconds", "20")
    gate = threading.Event()
    d.server.diag_test_gate = gate  # the script reaches it through the injected ``server``
    answers: list[str] = []

    def post() -> None:
        answers.append(d.script("result = server.diag_test_gate.wait(20)").text)

    worker = threading.Thread(target=post, daemon=True)
    worker.start()
    try:
        deadline = time.monotonic() + 10
        while not script_threads() and time.monotonic() < deadline:
            time.sleep(0.01)
        assert script_threads(), "the script never started"
        # The script is blocked; other routes still answer (it runs on its own thread, not the event loop).
        assert d.get("/periodic-threads-health").status_code == 200
        assert d.get("/loglevel", params={"logger_name": "root"}).status_code == 200
        assert answers == []
    finally:
        gate.set()
        worker.join(30)
    assert answers == ["True"]


# -- 400 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("send", [
    pytest.param(lambda d: d.post("/run_script"), id="no-body"),
    pytest.param(lambda d: d.post("/run_script", files={"other": ("s.py", b"result = 1")}), id="other-field"),
    pytest.param(lambda d: d.post("/run_script", data={"script": "result = 1"}), id="text-field-multipart"),
    pytest.param(lambda d: d.post("/run_script", data={"script": "result = 1"},
                                  headers={"Content-Type": "application/x-www-form-urlencoded"}), id="urlencoded"),
    pytest.param(lambda d: d.post("/run_script", json={"script": "result = 1"}), id="json"),
    pytest.param(lambda d: d.post("/run_script", content=b"garbage",
                                  headers={"Content-Type": "multipart/form-data; boundary=xyz"}), id="bad-multipart"),
    pytest.param(lambda d: d.post("/run_script", content=b"--xyz--",
                                  headers={"Content-Type": "multipart/form-data"}), id="no-boundary"),
])
def test_no_script_file_is_400_text(diag, send):
    resp = send(diag(*ENABLED))
    assert resp.status_code == 400
    assert resp.headers["content-type"] == TEXT
    assert resp.text == "No script file provided"


def test_an_empty_script_file_runs_and_says_so(diag):
    assert diag(*ENABLED).script(b"").text == "Script executed successfully"


# -- 413 ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("size", [(1 << 20) + 1, 3 << 20])
def test_a_script_over_one_mib_is_413(diag, size, tmp_path):
    d = diag(*ENABLED, "--script-allowed-imports", "pathlib")
    marker = tmp_path / "big"
    source = creating(marker).encode() + b"#" * size
    resp = d.script(source)
    assert resp.status_code == 413
    assert resp.headers["content-type"] == TEXT
    assert resp.text == "Script larger than 1048576 bytes"
    assert not marker.exists()
    # Exactly the limit is accepted.
    exact = creating(marker).encode()
    exact += b"#" * ((1 << 20) - len(exact))
    assert d.script(exact).text == "created"


# -- 500: the restrictions and failures --------------------------------------------------------


@pytest.mark.parametrize("source, reason", [
    ("x = (", "'(' was never closed (<run_script>, line 1)"),
    ("raise ValueError('boom')", "boom"),
    ("raise ValueError()", "ValueError"),
    ("result = 1 / 0", "division by zero"),
    ("import os", "Import of 'os' is not allowed"),
    ("import json", "Import of 'json' is not allowed"),
    ("from os import system", "Import of 'os' is not allowed"),
    ("__import__('subprocess')", "Import of 'subprocess' is not allowed"),
    ("from . import x", "relative imports are not allowed in run_script"),
    ("open('/etc/passwd')", "name 'open' is not defined"),
    ("exec('result = 1')", "name 'exec' is not defined"),
    ("eval('1')", "name 'eval' is not defined"),
    ("compile('1', 'x', 'eval')", "name 'compile' is not defined"),
    ("globals()", "name 'globals' is not defined"),
    ("locals()", "name 'locals' is not defined"),
    ("vars()", "name 'vars' is not defined"),
    ("setattr(server, 'x', 1)", "name 'setattr' is not defined"),
    ("type(1)", "name 'type' is not defined"),
    ("getattr(server, '__class__')", "access to attribute '__class__' is not allowed in run_script"),
    ("getattr(app, '__dict__', None)", "access to attribute '__dict__' is not allowed in run_script"),
    ("hasattr(app, '__init__')", "access to attribute '__init__' is not allowed in run_script"),
    ("class A:\n    pass", "__build_class__ not found"),
    ("result = undefined_name", "name 'undefined_name' is not defined"),
])
def test_a_failing_script_is_500_with_the_reason(diag, source, reason):
    failure(diag(*ENABLED, "--script-allowed-imports", "math").script(source), reason)


def test_a_script_that_is_not_utf8_is_a_500_not_a_crash(diag):
    resp = diag(*ENABLED).script(b"result = '\xff\xfe'")
    assert resp.status_code == 500
    assert resp.text.startswith("Error executing script: ")


@pytest.mark.parametrize("source", [
    "while True:\n    pass",
    # ``except Exception`` does not swallow the time limit (it is a BaseException) ...
    "while True:\n    try:\n        while True:\n            pass\n    except Exception:\n        pass",
    # ... and a bare ``except`` that swallows it once is interrupted again.
    "n = 0\nwhile n < 3:\n    try:\n        while True:\n            pass\n    except:\n        n += 1",
])
def test_a_script_past_its_time_limit_is_stopped_and_500(diag, source):
    d = diag(*ENABLED, "--run-script-timeout-seconds", "0.3")
    started = time.monotonic()
    failure(d.script(source), "script exceeded the time limit of 0.3 s")
    assert time.monotonic() - started < 10
    deadline = time.monotonic() + 10
    while script_threads() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert script_threads() == []
    # The server still runs scripts afterwards.
    assert d.script("result = 'alive'").text == "alive"


def test_a_failed_script_changes_nothing_it_did_not_reach(diag, tmp_path):
    marker = tmp_path / "never"
    d = diag(*ENABLED, "--script-allowed-imports", "pathlib")
    failure(d.script(f"raise RuntimeError('stop')\n{creating(marker)}"), "stop")
    assert not marker.exists()


# -- options -----------------------------------------------------------------------------------


def test_options_are_registered_for_conf(diag):
    d = diag(*ENABLED, "--script-allowed-imports", "json,math", "--run-script-timeout-seconds", "5")
    conf = d.server.configs["diagnostics"]
    assert json.loads(json.dumps({f: getattr(conf, f) for f in conf.__struct_fields__})) == {
        "run_script_api_enabled": True, "script_allowed_imports": ["json", "math"],
        "run_script_timeout_seconds": 5.0, "env_show_secrets": False}
