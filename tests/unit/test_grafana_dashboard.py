"""deploy/grafana/mailtalk.json: valid JSON whose every query names metrics that the
services expose (mailtalk/metrics.py), so a renamed metric cannot leave a blank panel."""

from __future__ import annotations

import json
import re
from pathlib import Path

from prometheus_client import REGISTRY

import mailtalk.metrics  # noqa: F401  (registers the metrics)

DASHBOARD = Path(__file__).resolve().parents[2] / "deploy" / "grafana" / "mailtalk.json"


def exposed() -> set[str]:
    """The sample names of every metric family (labelled ones too, before any sample)."""
    names = set()
    for family in REGISTRY.collect():
        if family.type == "counter":
            names.add(f"{family.name}_total")
        elif family.type == "histogram":
            names.update(f"{family.name}_{x}" for x in ("bucket", "count", "sum"))
        else:
            names.add(family.name)
    return names


def test_every_panel_queries_metrics_that_exist() -> None:
    doc = json.loads(DASHBOARD.read_text())
    exprs = [t["expr"] for p in doc["panels"] for t in p["targets"]]
    assert exprs
    have = exposed()
    for expr in exprs:
        used = set(re.findall(r"\bmailtalk_[a-z_]+", expr))
        assert used and used <= have, (expr, used - have)
    ours = {n for n in have if n.startswith("mailtalk_")}
    shown = {m for e in exprs for m in re.findall(r"\bmailtalk_[a-z_]+", e)}
    families = {re.sub(r"_(total|bucket|count|sum)$", "", n) for n in shown}
    for name in ours:       # every metric family has a panel
        assert re.sub(r"_(total|bucket|count|sum|created)$", "", name) in families, name
