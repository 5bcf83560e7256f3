"""``lmcache-server --version``: the core's version and every installed plugin distribution's.

All distributions in the repository take their version from its ``VERSION`` file, so a
consistent install prints one version on every line; a line that differs shows a plugin
installed from another release. Plugins are the distributions that expose an ``lmcache``
entry point, whether or not the plugin selection would load them.
"""

from __future__ import annotations

import argparse
import sys
from importlib.metadata import entry_points
from typing import Any

from lmcache_core import PROJECT_NAME, __version__


def installed_plugin_versions() -> dict[str, str]:
    """``{distribution name: version}`` for each installed distribution with an ``lmcache`` entry point."""
    found: dict[str, str] = {}
    for ep in entry_points(group=PROJECT_NAME):
        dist = getattr(ep, "dist", None)
        if dist is not None and dist.metadata["Name"]:
            found[dist.metadata["Name"]] = dist.version
    return dict(sorted(found.items()))


def version_text() -> str:
    """One line per distribution: ``lmcache-server <version> (lmcache-core)``, then each plugin's."""
    lines = [f"lmcache-server {__version__} (lmcache-core)"]
    lines += [f"{name} {version}" for name, version in installed_plugin_versions().items()]
    return "\n".join(lines) + "\n"


class VersionAction(argparse.Action):
    """``--version``: prints :func:`version_text` unwrapped (argparse's own action reflows it) and exits 0."""

    def __init__(self, option_strings: list[str], dest: str = argparse.SUPPRESS, **kwargs: Any) -> None:
        kwargs.setdefault("help", "print the core's and each installed plugin's version and exit")
        super().__init__(option_strings, dest=dest, default=argparse.SUPPRESS, nargs=0, **kwargs)

    def __call__(self, parser: argparse.ArgumentParser, namespace: argparse.Namespace, values: Any,
                 option_string: str | None = None) -> None:
        sys.stdout.write(version_text())
        parser.exit(0)


__all__ = ["VersionAction", "installed_plugin_versions", "version_text"]
