"""templates/prometheusrule.yaml: one PrometheusRule from every files/alerts/*.yaml."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from chart_helpers import CHART, ci, render, render_error


def _alert_groups(chart: Path) -> list[dict[str, Any]]:
    groups: list[dict[str, Any]] = []
    for path in sorted((chart / "files" / "alerts").glob("*.yaml")):
        groups += yaml.safe_load(path.read_text())["groups"]
    return groups


def test_prometheus_rule_holds_the_chart_alert_files() -> None:
    r = render([ci("monitoring")])
    groups = _alert_groups(CHART)
    rule = r.maybe("PrometheusRule")
    if not groups:
        assert rule is None  # nothing synced yet: no empty PrometheusRule
        return
    assert rule is not None
    assert rule["metadata"]["labels"]["release"] == "kube-prometheus-stack"
    assert rule["spec"]["groups"] == groups
    for group in rule["spec"]["groups"]:
        for rule_ in group["rules"]:
            assert "alert" in rule_ or "record" in rule_


def test_prometheus_rule_concatenates_every_alert_file(chart_copy: Path) -> None:
    alerts = chart_copy / "files" / "alerts"
    for f in alerts.glob("*.yaml"):
        f.unlink()
    a = {
        "groups": [
            {
                "name": "a",
                "rules": [
                    {"alert": "A", "expr": "up == 0", "for": "5m", "annotations": {"summary": "{{ $labels.pod }} down"}}
                ],
            }
        ]
    }
    b = {
        "groups": [
            {"name": "b", "rules": [{"record": "x:y", "expr": "sum(up)"}]},
            {"name": "c", "rules": [{"alert": "C", "expr": "vector(1) > 0"}]},
        ]
    }
    (alerts / "10-a.yaml").write_text(yaml.safe_dump(a))
    (alerts / "20-b.yaml").write_text(yaml.safe_dump(b))
    (alerts / "notes.txt").write_text("not a rule file")
    rule = render([ci("monitoring")], chart=chart_copy).get("PrometheusRule")
    assert rule["spec"]["groups"] == a["groups"] + b["groups"]  # templates in annotations pass through untouched


def test_prometheus_rule_rejects_a_file_without_groups(chart_copy: Path) -> None:
    (chart_copy / "files" / "alerts" / "bad.yaml").write_text("rules: []\n")
    assert "bad.yaml has no `groups:` list" in render_error([ci("monitoring")], chart=chart_copy)
