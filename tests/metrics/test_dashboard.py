"""The shipped Grafana dashboard: a valid dashboard model, panels for what docs/metrics.md
promises, and every query accepted by Prometheus' own parser (promtool) and naming only
metrics hpcray exports. (The live-run test evaluates the same queries against a real
Prometheus scraping a run.)"""

from __future__ import annotations

import json
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from hpcray.metrics.prometheus import METRICS

pytestmark = pytest.mark.timeout(60)

DASHBOARD = Path(__file__).parents[2] / "docs" / "metrics" / "grafana-dashboard.json"


def dashboard_queries(rate_interval: str = "1m", service: str = ".*") -> list[tuple[str, str]]:
    """(panel title, PromQL) of every target, Grafana's variables filled in."""
    model = json.loads(DASHBOARD.read_text())
    return [(p["title"], t["expr"].replace("$__rate_interval", rate_interval)
             .replace("$service", service))
            for p in model["panels"] if p["type"] != "row" for t in p["targets"]]


def test_dashboard_model():
    model = json.loads(DASHBOARD.read_text())
    assert model["schemaVersion"] >= 36 and model["uid"] and model["title"]
    ids = [p["id"] for p in model["panels"]]
    assert len(ids) == len(set(ids))
    for p in model["panels"]:
        assert set(p["gridPos"]) == {"x", "y", "w", "h"} and p["gridPos"]["x"] + \
            p["gridPos"]["w"] <= 24
        if p["type"] != "row":
            assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
            assert p["targets"] and all(t["refId"] and t["expr"] for t in p["targets"])
    titles = " ".join(p["title"].lower() for p in model["panels"])
    for wanted in ("request rate", "error rate", "p50", "p99", "replicas", "queue depth",
                   "cpu", "memory", "gpu", "stage tasks"):
        assert wanted in titles, wanted
    variables = {v["name"] for v in model["templating"]["list"]}
    assert variables == {"datasource", "service"}


def test_queries_parse_and_name_only_hpcrays_metrics(tmp_path):
    promtool = shutil.which("promtool")
    if promtool is None:
        pytest.skip("promtool (Debian's prometheus) is not installed")
    queries = dashboard_queries()
    names = {n for _, q in queries for n in re.findall(r"\b(hpcray_[a-z0-9_]+)", q)}
    known = {m for m in METRICS} | {f"{m}_{s}" for m, (kind, _) in METRICS.items()
                                    if kind == "histogram" for s in ("bucket", "sum", "count")}
    assert names and names <= known, names - known
    rules = {"groups": [{"name": "dashboard", "rules": [
        {"record": f"dashboard:q{i}", "expr": q} for i, (_, q) in enumerate(queries)]}]}
    path = tmp_path / "rules.yml"
    path.write_text(json.dumps(rules))  # JSON is YAML
    out = subprocess.run([promtool, "check", "rules", str(path)], capture_output=True,
                         text=True, timeout=30)
    assert out.returncode == 0, out.stdout + out.stderr
