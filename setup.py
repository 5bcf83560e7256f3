"""Bakes the git commit into ``lmcache_core/_build_info.py`` when the package is built or installed.

``GET /commit_id`` and ``GET /version`` report it. Outside a git checkout
(building from an sdist) the file already in the tree is kept; without one
the commit is unknown (``""``). An editable install (``pip install -e``, what
``make`` does) records its source tree instead, and the server reads that
tree's HEAD when asked, so a developer's server reports the code it runs, not
the commit it was first installed at. An sdist (``make dist``) carries the
commit it was made from and never a source tree, so the wheel built from it
(which is built outside git) reports that commit.
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py
from setuptools.command.sdist import sdist

HERE = Path(__file__).resolve().parent
BUILD_INFO = HERE / "lmcache_core" / "_build_info.py"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


def _render(commit: str, source_tree: str | None) -> str:
    return ('"""Generated at build/install time by setup.py; not in git."""\n\n'
            f"COMMIT_ID = {commit!r}\nEDITABLE_SOURCE_TREE = {source_tree!r}\n")


class BuildPyWithCommit(build_py):
    """``build_py`` that writes the commit id into the package: into the built wheel's copy for a
    wheel, into the source tree (with the tree's path) for an editable install."""

    def run(self) -> None:
        commit = _git_commit()
        editable = bool(getattr(self, "editable_mode", False))
        if commit is not None and editable:
            BUILD_INFO.write_text(_render(commit, str(HERE)))
        super().run()
        if commit is not None and not editable:
            target = Path(self.build_lib) / "lmcache_core" / "_build_info.py"
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_text(_render(commit, None))


class SdistWithCommit(sdist):
    """``sdist`` whose ``_build_info.py`` names the commit and no source tree: the developer's
    editable-install copy (with this checkout's path) must not travel in the archive."""

    def make_release_tree(self, base_dir: str, files: list[str]) -> None:
        super().make_release_tree(base_dir, files)
        target = Path(base_dir) / "lmcache_core" / "_build_info.py"
        if target.exists() or target.is_symlink():
            target.unlink()  # may be a hard link to the source tree's copy
        target.write_text(_render(_git_commit() or "", None))


setup(cmdclass={"build_py": BuildPyWithCommit, "sdist": SdistWithCommit})
