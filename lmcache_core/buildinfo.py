"""Version and build commit, as ``/version``, ``/lmc_version`` and ``/commit_id`` report them.

The commit is baked in when the package is built or installed (``setup.py``
writes ``lmcache_core/_build_info.py`` from ``git rev-parse HEAD``); a build
outside git reports ``""``. An editable install records its source tree, and
the commit is that tree's HEAD when the server process first asks (read once,
then cached), so a development server reports the code it runs. The fallbacks follow the seed API document:
``""`` for an unknown part on its own, ``NA`` for it inside ``/version``.
"""

from __future__ import annotations

import functools
import importlib
import subprocess

from lmcache_core import __version__


def package_version() -> str:
    """The installed ``lmcache-core`` version, ``""`` if unknown."""
    return "" if __version__ == "0.0.0" else __version__


def commit_id() -> str:
    """The git commit the package was built from, ``""`` if unknown."""
    try:
        _build_info = importlib.import_module("lmcache_core._build_info")
    except ImportError:
        return ""
    baked = getattr(_build_info, "COMMIT_ID", "")
    tree = getattr(_build_info, "EDITABLE_SOURCE_TREE", None)
    if isinstance(tree, str):
        return _head_of(tree) or (baked if isinstance(baked, str) else "")
    return baked if isinstance(baked, str) else ""


@functools.lru_cache(maxsize=4)
def _head_of(tree: str) -> str:
    """``git rev-parse HEAD`` in ``tree`` (an editable install's source), ``""`` when it fails."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=tree, capture_output=True, text=True, timeout=5)
    except (OSError, subprocess.SubprocessError):
        return ""
    head = out.stdout.strip()
    return head if out.returncode == 0 and len(head) == 40 else ""


def full_version() -> str:
    """``"<version>-<commit>"`` with ``NA`` for a missing part (so ``"NA-NA"`` when both are)."""
    return f"{package_version() or 'NA'}-{commit_id() or 'NA'}"
