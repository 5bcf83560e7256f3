"""Real ``lmcache-server`` processes with the s3 L2 on a real S3 server (moto): a fleet on one bucket, both
addressing styles, outages (S3 down, S3 hung) survived, and bad configurations refused at startup."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
import urllib.request
from pathlib import Path
from typing import Any

import pytest
import torch
from lmcache_plugin_s3.testing import (
    ACCESS_KEY,
    SECRET_KEY,
    HungEndpoint,
    MotoS3,
    Worker,
    clean_env,
    hosts_namespace_cmd,
    stable_port,
)

from s3_support import bucket_objects, flushed, http_json, our_server, s3_status, until

from lmcache_core.cli import main as cli_main
from lmcache_core.testing import free_port

def test_two_servers_on_one_bucket_behave_as_one_cache(moto_s3: MotoS3, bucket: str, tmp_path: Path) -> None:
    """A (virtual-hosted, through a hosts file in a private mount namespace) stores; B (path style) hits with
    equal bytes; A deletes through ``DELETE /l2``; B misses cleanly."""
    virtual = moto_s3.adapter_config(bucket, style="virtual")
    path = moto_s3.adapter_config(bucket)
    wrap = lambda cmd: hosts_namespace_cmd(cmd, tmp_path / "hosts", [f"{bucket}.localhost"])  # noqa: E731
    with our_server(virtual, tmp_path / "a.log", wrap=wrap) as (a_zmq, a_http, _), \
            our_server(path, tmp_path / "b.log") as (b_zmq, b_http, _):
        a, b = Worker(a_zmq, 11, "fleet/model"), Worker(b_zmq, 12, "fleet/model")
        try:
            ok, stored = a.store(seq=1, chunks=3)
            assert ok
            until("A's write-behind", lambda: flushed(a_http, 3))
            assert len(bucket_objects(moto_s3, bucket)) == 3  # the virtual-hosted writes reached the bucket
            hits, ok, got = b.lookup_retrieve(seq=1, chunks=3)
            assert (hits, ok) == (3, True)
            assert all(torch.equal(x, y) for x, y in zip(stored, got))
            # A deletes every object (it lists them from the bucket); B then misses cleanly.
            status, page = http_json("GET", f"{a_http}/l2/keys")
            assert status == 200 and len(page["entries"]) == 3
            status, answer = http_json("DELETE", f"{a_http}/l2", {"keys": [e["key"] for e in page["entries"]]})
            assert (status, answer["ok"], answer["requested"]) == (200, True, 3)
            assert bucket_objects(moto_s3, bucket) == []
            assert http_json("POST", f"{b_http}/clear-cache")[0] == 200  # B's L1 copy is not what is tested
            assert b.lookup(seq=1, chunks=3) == 0
            s3_b = s3_status(b_http)
            assert s3_b["failures"]["load"] == 0 and s3_b["is_healthy"] is True
        finally:
            a.close()
            b.close()


def test_outages_and_a_hung_s3_are_survived(tmp_path: Path) -> None:
    """S3 stopped, then hung (accepts, never answers): the server stays healthy, L1 serves, STORE answers;
    the breaker opens, and closes again once S3 is back, with stores resuming, without a restart."""
    moto = MotoS3(stable_port(), log=tmp_path / "moto.log").start()
    bucket = "outage"
    moto.create_bucket(bucket)
    adapter = moto.adapter_config(bucket, connect_timeout_s=0.5, read_timeout_s=1.0, lookup_timeout_s=0.5,
                                  retries=0, breaker_backoff_s=0.2, breaker_max_backoff_s=1.0)
    try:
        with our_server(adapter, tmp_path / "server.log") as (zmq, http, proc):
            w = Worker(zmq, 21, "outage/model", timeout_s=10.0)
            try:
                assert w.store(seq=1, chunks=2)[0]
                until("the first write-behind", lambda: flushed(http, 2))
                for phase, outage in enumerate(("stopped", "hung")):
                    first = 10 + 10 * phase  # new sequences: what L1 holds already is not stored again
                    moto.stop()
                    with contextlib.ExitStack() as stack:
                        if outage == "hung":
                            hung = stack.enter_context(HungEndpoint(moto.port))
                        # STORE keeps answering (the write-behind meets the outage, not the worker) ...
                        for seq in range(first, first + 6):
                            assert w.store(seq=seq, chunks=2)[0]
                        until(f"the breaker to open ({outage})",
                               lambda: s3_status(http)["breaker"]["state"] != "closed", context=lambda: s3_status(http))
                        # ... the server stays ready, L1 keeps serving, and the lookup of a missing prefix
                        # answers (a miss from S3, at once while the breaker is open).
                        assert http_json("GET", f"{http}/healthcheck") == (200, {"status": "healthy"})
                        hits, ok, _ = w.lookup_retrieve(seq=first, chunks=2)
                        assert (hits, ok) == (2, True)
                        assert w.lookup(seq=999, chunks=2) == 0
                        status = s3_status(http)
                        assert status["is_healthy"] is False and status["connection_disabled"] is True
                        health = http_json("GET", f"{http}/l2/adapters")[1]["adapters"][0]["health"]
                        assert health["breaker"] != "closed" and health["is_healthy"] is False
                        if outage == "hung":
                            assert hung.accepted > 0
                            assert status["failures_by_reason"].get("read_timeout", 0) > 0
                        else:
                            assert status["failures_by_reason"].get("connect", 0) > 0
                        metrics = urllib.request.urlopen(f"{http}/metrics", timeout=10).read().decode()
                        assert 'lmcache_mp_l2_s3_breaker_state{l2_name="s3:0"} 2.0' in metrics or \
                            'lmcache_mp_l2_s3_breaker_state{l2_name="s3:0"} 1.0' in metrics
                    # S3 is back on the same port (empty: moto keeps nothing across a restart).
                    moto.start()
                    moto.create_bucket(bucket)
                    until("the breaker to close", lambda: s3_status(http)["breaker"]["state"] == "closed")
                    before = len(bucket_objects(moto, bucket))
                    assert w.store(seq=100 + phase, chunks=2)[0]
                    until("stores to resume", lambda: len(bucket_objects(moto, bucket)) >= before + 2)
                    assert s3_status(http)["is_healthy"] is True
                    health = http_json("GET", f"{http}/l2/adapters")[1]["adapters"][0]["health"]
                    assert (health["breaker"], health["is_healthy"]) == ("closed", True)
                    assert health["latency_ms"]["put"]["count"] > 0
                assert proc.poll() is None
                skipped = s3_status(http)["skipped"]
                assert skipped["store"] > 0 or skipped["lookup"] > 0
            finally:
                w.close()
    finally:
        moto.stop()


def test_an_unreachable_s3_at_startup_does_not_stop_the_server(tmp_path: Path) -> None:
    port = stable_port()
    adapter = MotoS3(port).adapter_config("later", connect_timeout_s=0.5, lookup_timeout_s=0.5,
                                          breaker_backoff_s=0.2, breaker_max_backoff_s=0.5)
    with our_server(adapter, tmp_path / "server.log") as (_, http, _):
        assert s3_status(http)["breaker"]["state"] != "closed"
        with MotoS3(port, log=tmp_path / "moto.log") as moto:
            moto.create_bucket("later")
            until("the breaker to close", lambda: s3_status(http)["breaker"]["state"] == "closed")


BAD_CONFIGS = [
    ({"s3_endpoint": "127.0.0.1:9", "s3_addressing_style": "path"}, "s3_bucket is required"),
    ({"s3_endpoint": "one.localhost:9", "s3_bucket": "two"}, "s3_bucket 'two' contradicts"),
    ({"s3_endpoint": "bk1.localhost:9", "s3_bucket": "bk1", "s3_addressing_style": "path"}, "s3_endpoint names bucket"),
    ({"s3_endpoint": "bkt.localhost:9", "aws_access_key_id": "AKIDONLY"}, "aws_access_key_id and aws_secret_access_key"),
    ({"s3_endpoint": "bkt.localhost:9", "max_capacity_gb": -1}, "max_capacity_gb"),
    ({"s3_endpoint": "localhost:9"}, "s3_endpoint must be <bucket>.<host>"),
    ({"s3_endpoint": "bkt.localhost:9", "s3_addressing_style": "dns"}, "s3_addressing_style"),
    ({"s3_endpoint": "bkt.localhost:9", "s3_num_io_threads": 0}, "s3_num_io_threads"),
    ({"s3_endpoint": "https://bkt.localhost:9", "disable_tls": True}, "contradicts disable_tls"),
    ({"s3_region": None, "s3_endpoint": "bkt.localhost:9"}, "s3_region"),
    ({"s3_endpoint": "bkt.localhost:9", "no_such_key": 1}, "no_such_key"),
]


@pytest.mark.parametrize(("fields", "named"), BAD_CONFIGS)
def test_bad_config_fails_startup_with_exit_2_naming_the_field(fields: dict[str, Any], named: str,
                                                                capsys: pytest.CaptureFixture[str]) -> None:
    adapter = {"type": "s3", "s3_region": "us-east-1", "disable_tls": True, **fields}
    adapter = {k: v for k, v in adapter.items() if v is not None}
    assert cli_main(["--l2-adapter", json.dumps(adapter), "--port", str(free_port())]) == 2
    err = capsys.readouterr().err
    assert "--l2-adapter #0 (s3): invalid config" in err and named in err


def test_credentials_in_the_endpoint_url_are_refused_without_echoing_them() -> None:
    adapter = {"type": "s3", "s3_region": "us-east-1", "s3_endpoint": "https://AKID:hunter2@b.example.com"}
    done = subprocess.run([sys.executable, "-m", "lmcache_core.cli", "--l2-adapter", json.dumps(adapter)],
                          capture_output=True, text=True, timeout=120, env=clean_env())
    assert done.returncode == 2
    assert "s3_endpoint: credentials in the URL are not accepted" in done.stderr
    assert "hunter2" not in done.stderr + done.stdout


def test_secrets_never_reach_conf_status_or_metrics(moto_s3: MotoS3, bucket: str, tmp_path: Path) -> None:
    adapter = moto_s3.adapter_config(bucket, aws_session_token="session-token-value")
    with our_server(adapter, tmp_path / "server.log") as (zmq, http, _):
        w = Worker(zmq, 31, "secret/model")
        try:
            assert w.store(seq=1, chunks=1)[0]
            until("the write-behind", lambda: flushed(http, 1))
        finally:
            w.close()
        texts = [json.dumps(http_json("GET", f"{http}/{path}")[1]) for path in ("conf", "status", "l2/adapters")]
        texts.append(urllib.request.urlopen(f"{http}/metrics", timeout=10).read().decode())
    texts.append((tmp_path / "server.log").read_text())
    for text in texts:
        for secret in (SECRET_KEY, ACCESS_KEY, "session-token-value"):
            assert secret not in text
