"""The third-party plugin author's kit (issue 16): options without internals, a repeated list flag,
failures that name the plugin, the read-only engine view and per-plugin state."""

from __future__ import annotations

import msgspec

from lmcache_core import api
from lmcache_core.testing import parse_options


class TagsConfig(msgspec.Struct, kw_only=True):
    tags: list[str] = []


class TagsPlugin:
    @staticmethod
    @api.hookimpl
    def lmcache_register_config(register: api.RegisterConfig) -> None:
        register("tagger", TagsConfig, prefix="tagger-")


def test_a_repeated_list_flag_appends_and_the_first_replaces_the_default():
    plugins = [("tagger", TagsPlugin())]
    assert parse_options(plugins, []).tagger_tags == []
    assert parse_options(plugins, ["--tagger-tags", "a", "--tagger-tags", "b,c", "d"]).tagger_tags == ["a", "b", "c", "d"]
    from_env = {"LMCACHE_TAGGER_TAGS": "e"}
    assert parse_options(plugins, [], from_env).tagger_tags == ["e"]
    assert parse_options(plugins, ["--tagger-tags", "a", "--tagger-tags", "b"], from_env).tagger_tags == ["a", "b"]
