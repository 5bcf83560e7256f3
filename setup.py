"""Bakes the git commit into ``lmcache_core/_build_info.py`` when the package is built or installed.

``GET /commit_id`` and ``GET /version`` report it. Outside a git checkout
(building from an sdist) the file already in the tree is kept; without one
the commit is unknown (``""``).
"""

from __future__ import annotations

import subprocess
from pathlib import Path

from setuptools import setup
from setuptools.command.build_py import build_py

HERE = Path(__file__).resolve().parent
BUILD_INFO = HERE / "lmcache_core" / "_build_info.py"


def _git_commit() -> str | None:
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=HERE, capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.SubprocessError):
        return None
    commit = out.stdout.strip()
    return commit if out.returncode == 0 and len(commit) == 40 else None


class BuildPyWithCommit(build_py):
    """``build_py`` that first writes the commit id into the package (wheel and editable builds)."""

    def run(self) -> None:
        commit = _git_commit()
        if commit is not None:
            BUILD_INFO.write_text(
                '"""Generated at build/install time by setup.py; not in git."""\n\n'
                f"COMMIT_ID = {commit!r}\n")
        super().run()


setup(cmdclass={"build_py": BuildPyWithCommit})
