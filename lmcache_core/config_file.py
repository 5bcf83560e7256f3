"""``lmcache-server --config FILE``: options from a TOML file.

The file holds the same options as the command line, keyed by their ``dest`` names (the flag
without its leading dashes, ``-`` written ``_``)::

    # lmcache-server.toml
    port = 5555
    l1_size_gb = 8
    eviction_policy = "LRU"
    disable_metrics = false
    l2_adapter = [                       # the repeated --l2-adapter, in priority order
        { type = "fs", base_path = "/data/lmcache" },
        '{"type": "s3", "bucket": "kv"}',  # a JSON string works too, as on the command line
    ]

``[[l2_adapter]]`` array-of-tables sections are the same list. Plugin options (those a plugin
adds to ``--help``) are keys too, once the plugin is loaded.

Precedence, highest first: a flag on the command line, its ``LMCACHE_*`` environment
variable, the file, the built-in default. The file is named by ``--config FILE`` or, without
the flag, by ``LMCACHE_CONFIG``; without either no file is read (``make run`` needs none).

Every value goes through the option's own parser, so the file accepts exactly what the flag
accepts (numbers may be written as TOML numbers or strings; a switch takes ``true`` or
``false``). A TOML syntax error, an unknown key or a bad value is a :class:`ConfigFileError`
naming the file, the key and its line; ``lmcache-server`` prints it and exits 2. TOML (the
standard library's ``tomllib``) was chosen over YAML: no extra dependency, and no implicit
typing (``no`` stays a string).
"""

from __future__ import annotations

import argparse
import difflib
import json
import re
import sys
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - Python 3.10 has no tomllib
    tomllib = None

CONFIG_ENV = "LMCACHE_CONFIG"
PRECEDENCE = ("Precedence, highest first: a command-line flag, its LMCACHE_* environment variable, "
              "the --config file, the built-in default (the defaults shown include the file and the environment).")
_NOT_KEYS = frozenset({"help", "version", "config"})
_STRING_TYPES = (None, str, str.upper, str.lower)


class ConfigFileError(ValueError):
    """A config file that cannot be used; the message names the file, the key and the line."""


@dataclass(frozen=True)
class ConfigFile:
    """A parsed config file: its top-level values and the line each key is on."""

    path: Path
    values: Mapping[str, Any]
    text: str

    def line_of(self, key: str) -> int | None:
        """The 1-based line where top-level ``key`` is set (``key =``, ``key.x =``, ``[key]``, ``[[key]]``)."""
        return key_line(self.text, key)

    def error(self, key: str, message: str) -> ConfigFileError:
        line = self.line_of(key)
        where = f"{self.path}, line {line}" if line is not None else str(self.path)
        return ConfigFileError(f"config file {where}: key {key!r}: {message}")

    def apply(self, parser: argparse.ArgumentParser, *, known_only: bool = False) -> None:
        """Make each key the default of the option with that ``dest`` in ``parser``.

        Call it before the environment defaults are applied, so that a variable wins over the
        file and a flag over both. ``known_only`` skips keys ``parser`` has no option for (for
        the small parser that reads the plugin selection before plugins are loaded).
        """
        actions = options_by_dest(parser)
        for key, value in self.values.items():
            action = actions.get(key)
            if action is None:
                if known_only:
                    continue
                raise self.error(key, _unknown(key, actions))
            try:
                action.default = option_value(action, value)
            except (argparse.ArgumentTypeError, ValueError, TypeError) as exc:
                raise self.error(key, str(exc)) from None


def options_by_dest(parser: argparse.ArgumentParser) -> dict[str, argparse.Action]:
    """``parser``'s options that a file may set, by ``dest``."""
    return {a.dest: a for a in parser._actions
            if a.option_strings and a.dest not in _NOT_KEYS and a.dest != argparse.SUPPRESS}


def _unknown(key: str, actions: Mapping[str, argparse.Action]) -> str:
    message = "no such option"
    guess = key.replace("-", "_").lstrip("_")
    if guess in actions:
        return f"{message} (keys are option names with '_': {guess!r})"
    close = difflib.get_close_matches(key, list(actions), n=1)
    hint = f"did you mean {close[0]!r}? " if close else ""
    return f"{message} ({hint}a plugin's options are keys only while the plugin is loaded)"


def _describe(value: Any) -> str:
    shown = repr(value)
    return shown if len(shown) <= 60 else shown[:57] + "..."


def _scalar_text(action: argparse.Action, value: Any) -> str:
    """The text the flag would have carried for ``value``, refusing TOML types the option cannot mean."""
    if isinstance(value, str):
        return value
    if isinstance(value, bool) or not isinstance(value, (int, float)) or action.type in _STRING_TYPES:
        wanted = "a string" if action.type in _STRING_TYPES else "a number or a string"
        raise argparse.ArgumentTypeError(f"expected {wanted}, got {_describe(value)}")
    return repr(value) if isinstance(value, float) else str(value)


def _one(action: argparse.Action, value: Any) -> Any:
    text = _scalar_text(action, value)
    parsed = action.type(text) if action.type is not None else text
    if action.choices is not None and parsed not in action.choices:
        raise argparse.ArgumentTypeError(f"{parsed!r} is not one of {', '.join(map(str, action.choices))}")
    return parsed


def option_value(action: argparse.Action, value: Any) -> Any:
    """``value`` from the file, parsed and checked as ``action``'s flag would be."""
    if isinstance(action, (argparse._StoreTrueAction, argparse._StoreFalseAction, argparse.BooleanOptionalAction)):
        if not isinstance(value, bool):
            raise argparse.ArgumentTypeError(f"expected true or false, got {_describe(value)}")
        return value
    if isinstance(action, argparse._AppendAction):
        items = value if isinstance(value, list) else [value]
        # A table is the JSON object a flag would carry; the option's own parser checks it.
        return [_one(action, json.dumps(item) if isinstance(item, dict) else item) for item in items]
    if isinstance(value, (list, dict)):
        raise argparse.ArgumentTypeError(f"expected one value, got {_describe(value)}")
    return _one(action, value)


_STRINGS = re.compile(r'"(?:[^"\\]|\\.)*"|\'[^\']*\'')


def _top_key(text: str) -> str | None:
    """The first key of a ``key = ...`` or ``key.sub = ...`` line (bare or quoted), else None."""
    match = re.match(r'\s*("(?:[^"\\]|\\.)*"|\'[^\']*\'|[A-Za-z0-9_-]+)\s*[.=]', text)
    if match is None:
        return None
    token = match.group(1)
    if token[0] == '"':
        return json.loads(token)
    return token.strip("'")


def key_line(text: str, key: str) -> int | None:
    """The 1-based line of the top-level ``key`` in TOML ``text`` (tomllib reports no key lines).

    Top-level assignments come before the first table header; a table header ``[key]``,
    ``[key.sub]`` or ``[[key]]`` also counts as ``key``'s line. Lines inside multi-line strings
    or arrays are skipped by tracking brackets and triple quotes roughly, which is enough to
    point a person at the right place.
    """
    depth = 0
    in_table = False
    in_multiline: str | None = None
    for number, line in enumerate(text.splitlines(), 1):
        if in_multiline is not None:
            if line.count(in_multiline) % 2 == 1:
                in_multiline = None
            continue
        if depth == 0:
            stripped = line.strip()
            if stripped.startswith("["):  # at the top level only a table header starts with "["
                in_table = True
                if _top_key(stripped.lstrip("[").split("]", 1)[0] + " =") == key:
                    return number
                continue
            if not in_table and _top_key(line) == key:
                return number
        for quote in ('"""', "'''"):
            if line.count(quote) % 2 == 1:
                in_multiline = quote
        code = _STRINGS.sub("", line).split("#", 1)[0]
        depth = max(0, depth + code.count("[") + code.count("{") - code.count("]") - code.count("}"))
    return None


def load(path: str | Path) -> ConfigFile:
    """Read and parse the TOML file at ``path``."""
    path = Path(path)
    try:
        text = path.read_bytes().decode("utf-8")
    except OSError as exc:
        raise ConfigFileError(f"config file {path}: cannot read it: {exc.strerror or exc}") from None
    except UnicodeDecodeError as exc:
        raise ConfigFileError(f"config file {path}: not UTF-8 text ({exc.reason} at byte {exc.start})") from None
    if tomllib is None:  # pragma: no cover
        raise ConfigFileError(f"config file {path}: reading TOML needs Python 3.11 or later")
    try:
        values = tomllib.loads(text)
    except tomllib.TOMLDecodeError as exc:
        raise ConfigFileError(f"config file {path}: not valid TOML: {exc}") from None
    return ConfigFile(path, values, text)


def config_path(argv: Sequence[str], environ: Mapping[str, str]) -> str | None:
    """The file ``--config`` names in ``argv`` (the last one wins), else ``LMCACHE_CONFIG``, else None."""
    pre = argparse.ArgumentParser(add_help=False)
    pre.add_argument("--config", default=None)
    args, _ = pre.parse_known_args(list(argv))
    return args.config or environ.get(CONFIG_ENV) or None


def load_from(argv: Sequence[str], environ: Mapping[str, str]) -> ConfigFile | None:
    """The config file ``argv`` or the environment names, parsed; None when none is named."""
    path = config_path(argv, environ)
    return None if path is None else load(path)


class FileEnviron(dict):
    """The environment, plus the config file it was read beside (see :func:`environ_with_file`)."""

    def __init__(self, environ: Mapping[str, str], config: ConfigFile) -> None:
        super().__init__(environ)
        self.config = config


def environ_with_file(argv: Sequence[str], environ: Mapping[str, str]) -> Mapping[str, str]:
    """``environ`` carrying the config file that ``argv`` or ``environ`` names (``environ`` itself when none).

    The launcher passes this mapping wherever it passes the environment; :func:`apply_file_defaults`,
    called at the start of the environment-defaults step, applies the file beneath the variables.
    """
    config = load_from(argv, environ)
    return environ if config is None else FileEnviron(environ, config)


def apply_file_defaults(parser: argparse.ArgumentParser, environ: Mapping[str, str]) -> None:
    """Apply the file ``environ`` carries, if any, as ``parser``'s defaults (before the variables).

    A parser that offers ``--config`` (the full one) takes every key and refuses unknown ones; a
    parser without it (the plugin-selection pre-parser) takes only the keys it has options for.
    """
    config = getattr(environ, "config", None)
    if isinstance(config, ConfigFile):
        full = any(a.dest == "config" for a in parser._actions)
        config.apply(parser, known_only=not full)


def add_config_option(parser: argparse.ArgumentParser) -> None:
    """The ``--config FILE`` option, with the precedence rule in its group's description."""
    group = parser.add_argument_group("configuration file", PRECEDENCE)
    action = group.add_argument(
        "--config", metavar="FILE", default=None,
        help="read options from this TOML file: keys are option names with '_' "
             "(l1_size_gb = 8; l2_adapter = [{type = \"fs\", base_path = \"/data\"}])")
    action.env_var = CONFIG_ENV  # type: ignore[attr-defined]


__all__ = ["CONFIG_ENV", "ConfigFile", "ConfigFileError", "FileEnviron", "add_config_option", "apply_file_defaults",
           "config_path", "environ_with_file", "key_line", "load", "load_from", "option_value", "options_by_dest"]
