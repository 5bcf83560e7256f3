"""Make the template importable when it is run in place, not installed.

A plugin you copied from here is normally installed (`pip install -e .`); then
this file is unnecessary and can go.
"""

import sys
from pathlib import Path

src = str(Path(__file__).resolve().parents[1] / "src")
if src not in sys.path:
    sys.path.insert(0, src)
