"""``masked`` / ``mask_url_credentials``: secret fields by name, and URL userinfo in any string, at any depth."""

from __future__ import annotations

import msgspec
from hypothesis import given
from hypothesis import strategies as st

from lmcache_core.config import mask_url_credentials, masked

# Userinfo as people write it: anything but the authority's delimiters and blanks (a password may hold "@").
USERINFO = st.text(st.characters(blacklist_characters="/?#", blacklist_categories=("Zs", "Cc", "Cs")),
                   min_size=1, max_size=30)
HOST = st.from_regex(r"[a-z0-9]([a-z0-9.-]{0,20}[a-z0-9])?(:[0-9]{1,5})?", fullmatch=True)
SCHEME = st.sampled_from(["http", "https", "s3", "redis", "postgresql+psycopg", "mongodb"])
PATH = st.from_regex(r"(/[A-Za-z0-9._~%@-]{0,12}){0,3}(\?[a-z]=[a-z@]{0,5})?", fullmatch=True)


@given(SCHEME, USERINFO, HOST, PATH)
def test_url_userinfo_is_replaced_and_the_rest_kept(scheme: str, userinfo: str, host: str, path: str) -> None:
    url = f"{scheme}://{userinfo}@{host}{path}"
    out = mask_url_credentials(url)
    assert out == f"{scheme}://***@{host}{path}"
    assert mask_url_credentials(out) == out  # idempotent


@given(SCHEME, USERINFO, HOST, st.text(max_size=20), st.text(max_size=20))
def test_urls_inside_longer_text_are_masked(scheme: str, userinfo: str, host: str, before: str,
                                            after: str) -> None:
    text = f"{before} {scheme}://{userinfo}@{host} {after}"
    out = mask_url_credentials(text)
    assert f"{scheme}://***@{host} " in out
    assert f"{userinfo}@{host}" not in out


@given(st.text(max_size=60).filter(lambda s: "://" not in s))
def test_text_without_a_url_is_unchanged(text: str) -> None:
    assert mask_url_credentials(text) == text


def test_urls_without_userinfo_are_unchanged() -> None:
    for url in ("https://host:9000/bucket", "http://host/path@not-userinfo", "s3://bucket.host",
                "mailto:user@example.com", "https://host/?q=a@b"):
        assert mask_url_credentials(url) == url


class Section(msgspec.Struct):
    endpoint: str
    aws_secret_access_key: str | None = None
    adapters: list[dict] = msgspec.field(default_factory=list)


def test_masked_hides_secret_fields_and_url_credentials_at_any_depth() -> None:
    doc = Section(endpoint="https://AKID:hunter2@s3.example.com", aws_secret_access_key="sk",
                  adapters=[{"type": "s3", "s3_endpoint": "http://u:p@bucket.localhost:9000",
                             "nested": {"urls": ["redis://:pw@cache:6379/0", ("x", "https://a:b@h")],
                                        "sentry_dsn": "https://key@sentry.example/1"},
                             "aws_session_token": "tok", "disable_tls": True, "max_capacity_gb": 1.5}])
    out = masked(doc)
    assert out == {
        "endpoint": "https://***@s3.example.com",
        "aws_secret_access_key": "***",
        "adapters": [{"type": "s3", "s3_endpoint": "http://***@bucket.localhost:9000",
                      "nested": {"urls": ["redis://***@cache:6379/0", ["x", "https://***@h"]],
                                 "sentry_dsn": "***"},  # a secret-named field is hidden whole
                      "aws_session_token": "***", "disable_tls": True, "max_capacity_gb": 1.5}],
    }


def test_unset_secret_fields_stay_visible_as_unset() -> None:
    assert masked({"api_token": None, "password": ""}) == {"api_token": None, "password": ""}
