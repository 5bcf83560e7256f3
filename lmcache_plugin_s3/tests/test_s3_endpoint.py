"""``parse_endpoint``: LMCache's endpoint forms, both addressing styles, and no secret in any error."""

from __future__ import annotations

import string

import msgspec
import pytest
from hypothesis import given
from hypothesis import strategies as st
from lmcache_plugin_s3.adapter import Endpoint, S3AdapterConfig, parse_endpoint

BUCKET = st.from_regex(r"[a-z0-9][a-z0-9-]{1,20}[a-z0-9]", fullmatch=True)
HOST = st.from_regex(r"[a-z][a-z0-9-]{0,10}(\.[a-z][a-z0-9-]{0,10}){0,2}(:[1-9][0-9]{0,4})?", fullmatch=True)


def config(**fields: object) -> S3AdapterConfig:
    return msgspec.convert({"s3_region": "us-east-1", **fields}, S3AdapterConfig)


@given(BUCKET, HOST, st.sampled_from(["", "s3://", "https://"]))
def test_virtual_and_path_forms_name_the_same_bucket_and_service(bucket: str, host: str, scheme: str) -> None:
    virtual = parse_endpoint(config(s3_endpoint=f"{scheme}{bucket}.{host}"))
    assert virtual == Endpoint(f"https://{host}", bucket, "virtual")
    path = parse_endpoint(config(s3_endpoint=f"{scheme}{host}", s3_addressing_style="path", s3_bucket=bucket))
    assert path == Endpoint(f"https://{host}", bucket, "path")
    assert virtual.display == f"https://{bucket}.{host}" and path.display == f"https://{host}/{bucket}"


@given(st.text(max_size=40))
def test_any_endpoint_string_parses_or_is_refused_as_invalid_config(text: str) -> None:
    try:
        cfg = config(s3_endpoint=text)
    except msgspec.ValidationError:
        return  # a ValueError from the parser, as the launcher reports it (exit 2); nothing else escapes
    assert parse_endpoint(cfg).bucket


@given(st.text(max_size=30), st.text(string.ascii_letters + string.digits, min_size=6, max_size=12))
def test_credentials_in_an_endpoint_never_reach_the_error(rest: str, secret: str) -> None:
    with pytest.raises(msgspec.ValidationError) as info:
        config(s3_endpoint=f"https://user:{secret}@{rest}")
    assert secret not in str(info.value)


def test_bucket_names_with_dots_are_taken_from_s3_bucket() -> None:
    e = parse_endpoint(config(s3_endpoint="my.dotted.bucket.s3.example.com", s3_bucket="my.dotted.bucket"))
    assert e == Endpoint("https://s3.example.com", "my.dotted.bucket", "virtual")


def test_disable_tls_selects_http() -> None:
    assert parse_endpoint(config(s3_endpoint="bkt.localhost:9000", disable_tls=True)).url == "http://localhost:9000"


@pytest.mark.parametrize("endpoint", ["bkt.localhost:9000/path", "", "   ", "bkt.host name"])
def test_malformed_endpoints_are_refused(endpoint: str) -> None:
    with pytest.raises((ValueError, msgspec.ValidationError), match="s3_endpoint"):
        config(s3_endpoint=endpoint)
