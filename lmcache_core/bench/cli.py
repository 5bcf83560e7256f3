"""``lmcache-server bench [NAME ...]``: benchmarks, printed as JSON lines.

Each row carries its baseline measured in the same run, and the ratio.
Names: ``startup`` and every other module of this package that defines
``run() -> list[dict]``; ``all`` (the default) runs every one.
"""

from __future__ import annotations

import argparse
import importlib
import json
import pkgutil
import sys
from collections.abc import Sequence

import lmcache_core.bench as bench_pkg

NOT_BENCHES = {"cli", "peer", "chaos_kv", "chaos_server", "chaos_worker"}
NOT_IN_ALL = {"chaos", "realclient"}  # chaos: a campaign of minutes (``make soak``); realclient: part of datapath
GROUPS = {
    # issue 3's figures: hashing, L1 operations and metadata, eviction (policy and end to end)
    "storage": ["hashing", "l1", "eviction", "eviction_tick"],
}


def available() -> list[str]:
    return sorted(m.name for m in pkgutil.iter_modules(bench_pkg.__path__)
                  if m.name not in NOT_BENCHES and not m.name.startswith("_"))


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="lmcache-server bench", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("names", nargs="*", default=["all"],
                        help=f"benchmarks: all, {', '.join(GROUPS)}, {', '.join(available())}")
    args, extra = parser.parse_known_args(argv)
    if extra and len(args.names) != 1:
        parser.error(f"options {' '.join(extra)} need exactly one benchmark name")
    everything = [n for n in available() if n not in NOT_IN_ALL]
    names = everything if "all" in args.names else [n for name in args.names for n in GROUPS.get(name, [name])]
    unknown = [n for n in names if n not in available()]
    if unknown:
        parser.error(f"unknown benchmark(s) {', '.join(unknown)}; available: {', '.join(available())}")
    for name in names:
        module = importlib.import_module(f"lmcache_core.bench.{name}")
        for row in module.run(extra) if extra else module.run():
            sys.stdout.write(json.dumps(row) + "\n")
            sys.stdout.flush()
    return 0


if __name__ == "__main__":
    sys.exit(main())
