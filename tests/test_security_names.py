"""Which names count as secret (``/conf`` and ``/env`` mask their values): issue 13's wider list."""

from __future__ import annotations

import pytest

from lmcache_core.config import is_secret_name, mask_url_credentials


@pytest.mark.parametrize("name", ["DB_PASS", "MYSQL_PWD", "SENTRY_DSN", "GITHUB_PAT", "dbPass", "SMTP_PASSPHRASE",
                                  "AWS_SECRET_ACCESS_KEY", "api_token", "LDAP_PASSWD", "SESSION_COOKIE"])
def test_secret_names(name):
    assert is_secret_name(name)


@pytest.mark.parametrize("name", ["PATH", "PYTHONPATH", "LD_LIBRARY_PATH", "COMPASS", "HOME", "PASSENGER",
                                  "session_ttl_seconds", "l2_prefetch_max_in_flight", "DATABASE_URL"])
def test_plain_names(name):
    assert not is_secret_name(name)


def test_url_credentials_are_masked_anywhere_in_a_value():
    assert mask_url_credentials("postgres://admin:pw@db:5432/x") == "postgres://***@db:5432/x"
    assert mask_url_credentials("a http://u:p@h b https://h/c@d") == "a http://***@h b https://h/c@d"
