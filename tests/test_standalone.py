"""The repository stands alone: nothing tracked points at a folder beside the clone.

The project grew next to a folder of design notes beside the clone; a clone, an sdist or a wheel has
nothing beside it, so every tracked file is searched for that path, and every relative link in
the Markdown pages must land on a tracked file.
"""

from __future__ import annotations

import re
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
# Spelled in parts so that this file does not match itself: the folder, and the documents in it
# that code and docs used to cite by path (their contracts are stated in docs/ now).
SIBLING = "../" + "shared"
OUTSIDE_DOCUMENTS = ["protocol/" + "README.md", "http-api-" + "seed", "lmcache-http-" + "l2.md",
                     "lmcache-mp-" + "core.md", "DESIGN" + ".md", "STYLE" + ".md"]
LINK = re.compile(r"\]\(([^)\s]+)\)")


def tracked_files() -> list[str]:
    out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True, timeout=60)
    return [p for p in out.stdout.decode().split("\0") if p]


def _text(path: Path) -> str | None:
    try:
        data = path.read_bytes()
    except (FileNotFoundError, IsADirectoryError):  # deleted in the working tree, or a submodule
        return None
    if b"\0" in data[:8192]:
        return None
    return data.decode("utf-8", errors="replace")


def test_the_tree_is_a_git_checkout_with_files():
    files = tracked_files()
    assert "Makefile" in files and "interop/install-peer.sh" in files


def tracked_lines() -> Iterator[tuple[str, int, str]]:
    """``(path, line number, line)`` of every tracked text file."""
    for rel in tracked_files():
        text = _text(ROOT / rel)
        if text is not None:
            for number, line in enumerate(text.splitlines(), 1):
                yield rel, number, line


def test_no_tracked_file_refers_to_the_sibling_folder():
    assert [f"{rel}:{n}: {line.strip()}" for rel, n, line in tracked_lines() if SIBLING in line] == []


def test_no_tracked_file_cites_a_document_that_is_not_in_the_repository():
    hits = [f"{rel}:{n}: {name}" for rel, n, line in tracked_lines() for name in OUTSIDE_DOCUMENTS if name in line]
    assert hits == []


def test_the_interop_target_installs_its_peer_with_the_projects_script():
    makefile = (ROOT / "Makefile").read_text()
    interop = makefile[makefile.index("\ninterop:"):]
    recipe = interop[: interop.find("\n\n")]
    assert "bash interop/install-peer.sh" in recipe
    script = ROOT / "interop" / "install-peer.sh"
    assert subprocess.run(["bash", "-n", str(script)], timeout=30).returncode == 0
    text = script.read_text()
    assert "LMCACHE_PEER_VENV" in text and "lmcache==$version" in text and "version=0.5.6" in text


def _markdown_links() -> list[tuple[str, str]]:
    links = []
    for rel in tracked_files():
        if not rel.endswith(".md"):
            continue
        for target in LINK.findall((ROOT / rel).read_text()):
            if re.match(r"^[a-z]+:", target) or target.startswith("#"):
                continue  # a URL or an anchor on the same page
            links.append((rel, target.split("#", 1)[0]))
    return links


@pytest.mark.parametrize(("page", "target"), _markdown_links())
def test_relative_markdown_links_land_on_tracked_files(page, target):
    resolved = (ROOT / page).parent.joinpath(target).resolve()
    assert resolved.is_relative_to(ROOT), f"{page} links outside the repository: {target}"
    rel = resolved.relative_to(ROOT).as_posix()
    files = tracked_files()
    assert rel in files or any(f.startswith(rel + "/") for f in files), f"{page}: {target} is not tracked"
