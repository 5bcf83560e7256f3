"""Version and build commit, as ``/version``, ``/lmc_version`` and ``/commit_id`` report them.

The commit is baked in when the package is built or installed (``setup.py``
writes ``lmcache_core/_build_info.py`` from ``git rev-parse HEAD``); an
editable install therefore reports the commit it was installed at, and a
build outside git reports ``""``. The fallbacks follow the seed API document:
``""`` for an unknown part on its own, ``NA`` for it inside ``/version``.
"""

from __future__ import annotations

from lmcache_core import __version__


def package_version() -> str:
    """The installed ``lmcache-core`` version, ``""`` if unknown."""
    return "" if __version__ == "0.0.0" else __version__


def commit_id() -> str:
    """The git commit the package was built from, ``""`` if unknown."""
    try:
        from lmcache_core._build_info import COMMIT_ID  # type: ignore[import-not-found]
    except ImportError:
        return ""
    return COMMIT_ID if isinstance(COMMIT_ID, str) else ""


def full_version() -> str:
    """``"<version>-<commit>"`` with ``NA`` for a missing part (so ``"NA-NA"`` when both are)."""
    return f"{package_version() or 'NA'}-{commit_id() or 'NA'}"
