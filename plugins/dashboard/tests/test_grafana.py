"""``docs/grafana/lmcache-server.json``: every metric it queries exists — registered in the default
registry once every installed plugin is loaded, and named in the catalogue, ``docs/metrics.md`` —
and the dashboard is well formed (unique panel ids, panels that do not overlap, every query
filtered by the ``$instance`` variable)."""

from __future__ import annotations

import json
import re
from pathlib import Path
from typing import Any

from prometheus_client import REGISTRY

from lmcache_core.plugins import PluginHost

ROOT = Path(__file__).resolve().parents[3]
DASHBOARD = ROOT / "docs" / "grafana" / "lmcache-server.json"
CATALOGUE = ROOT / "docs" / "metrics.md"
METRIC = re.compile(r"\blmcache_mp_[A-Za-z0-9_]+")
SERIES_SUFFIXES = ("_bucket", "_count", "_sum")


def _panels(doc: dict[str, Any]) -> list[dict[str, Any]]:
    out = []
    for panel in doc["panels"]:
        out.append(panel)
        out.extend(panel.get("panels", []))
    return out


def _queries(doc: dict[str, Any]) -> list[str]:
    return [t["expr"] for p in _panels(doc) for t in p.get("targets", [])]


def _base(name: str) -> str:
    """The name as registered and catalogued: histogram series lose their suffix."""
    for suffix in SERIES_SUFFIXES:
        if name.endswith(suffix):
            return name[: -len(suffix)]
    return name


def registered_names() -> set[str]:
    """Every metric and sample name of the default registry, with every installed plugin imported."""
    PluginHost(load_entry_points=True)  # imports each plugin module, which registers its metrics
    names: set[str] = set()
    for family in REGISTRY.collect():
        names.add(family.name)
        names.update(s.name for s in family.samples)
    # families that have no child yet still show their declared names through describe()
    for collector in list(REGISTRY._collector_to_names):  # noqa: SLF001 (the registry's own index)
        names.update(REGISTRY._collector_to_names[collector])  # noqa: SLF001
    return names


def test_every_queried_metric_is_registered_and_catalogued() -> None:
    doc = json.loads(DASHBOARD.read_text())
    queried = {m for expr in _queries(doc) for m in METRIC.findall(expr)}
    assert len(queried) >= 20  # the page's panels: usage, hits, latency, traffic, workers, quotas, threads, errors
    registered = registered_names()
    catalogue = CATALOGUE.read_text()
    for name in sorted(queried):
        assert name in registered or _base(name) in registered, f"{name} is not a registered metric"
        short = _base(name).removeprefix("lmcache_mp_")
        assert re.search(rf"`{re.escape(short)}`", catalogue), f"{name} is not in docs/metrics.md"


def test_dashboard_is_well_formed() -> None:
    doc = json.loads(DASHBOARD.read_text())
    panels = _panels(doc)
    ids = [p["id"] for p in panels]
    assert len(ids) == len(set(ids))
    variables = {v["name"] for v in doc["templating"]["list"]}
    assert {"datasource", "instance"} <= variables
    cells: set[tuple[int, int]] = set()
    for p in panels:
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24, p["title"]
        mine = {(g["x"] + dx, g["y"] + dy) for dx in range(g["w"]) for dy in range(g["h"])}
        assert not cells & mine, f"panel {p['title']!r} overlaps another"
        cells |= mine
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
            assert p["targets"], p["title"]
    for expr in _queries(doc):
        selectors = re.findall(r"lmcache_mp_[A-Za-z0-9_]+(\{[^}]*\})?", expr)
        assert selectors and all('instance=~"$instance"' in s for s in selectors), expr
