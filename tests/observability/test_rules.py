"""Alerting and recording rules: promtool check/test, our conventions, and mutation controls."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import obs_harness as h
import pytest
import yaml

RULES = h.load_rules()
ALERTS = [r for r in RULES if "alert" in r]
RECORDS = [r for r in RULES if "record" in r]
# The alerts an operator needs, by what they watch.
REQUIRED_ALERTS = {
    "RetrieverHighLatencyP99": "p99 latency",
    "RetrieverHighErrorRatio": "error ratio",
    "RetrieverNotReady": "not ready",
    "RetrieverQueueSaturated": "queue saturation",
    "RetrieverMemoryNearLimit": "memory close to limit",
}


def promtool_run(promtool: str, *args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run([promtool, *args], capture_output=True, text=True, timeout=60, cwd=cwd)


def test_promtool_check_rules(promtool: str) -> None:
    proc = promtool_run(promtool, "check", "rules", str(h.RULES_FILE))
    assert proc.returncode == 0, proc.stdout + proc.stderr
    assert f"SUCCESS: {len(RULES)} rules found" in proc.stdout


def test_promtool_unit_tests(promtool: str) -> None:
    assert h.RULE_TEST_FILES, "no promtool unit tests in dashboards/alerts/tests"
    proc = promtool_run(promtool, "test", "rules", *map(str, h.RULE_TEST_FILES))
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_required_alerts_exist() -> None:
    assert set(REQUIRED_ALERTS) <= {a["alert"] for a in ALERTS}


def test_every_alert_is_unit_tested() -> None:
    tested: set[str] = set()
    for path in h.RULE_TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("alert_rule_test", []):
                if check.get("exp_alerts"):  # a case where it must fire, not only stay quiet
                    tested.add(check["alertname"])
    assert {a["alert"] for a in ALERTS} <= tested


def test_every_recording_rule_is_unit_tested_or_used() -> None:
    """Each recording rule is checked by a promql_expr_test or feeds an alert that is."""
    checked: set[str] = set()
    for path in h.RULE_TEST_FILES:
        for case in yaml.safe_load(path.read_text())["tests"]:
            for check in case.get("promql_expr_test", []):
                checked |= h.metric_names(check["expr"])
    used_by_alerts = {name for a in ALERTS for name in h.metric_names(a["expr"])}
    for rule in RECORDS:
        record = rule["record"]
        feeds = {r["record"] for r in RECORDS if record in h.metric_names(r["expr"])}
        assert record in checked or record in used_by_alerts or feeds & checked, record


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a["alert"])
def test_alert_conventions(alert: dict[str, str]) -> None:
    assert h.split_alert(alert["expr"]), "alert must read `<signal> <comparison> <number>`"
    assert alert.get("labels", {}).get("severity") in {"warning", "critical"}
    assert alert.get("for"), "alerts must not fire on one bad evaluation"
    annotations = alert.get("annotations", {})
    assert annotations.get("summary") and annotations.get("description")


@pytest.mark.parametrize("rule", RECORDS, ids=lambda r: r["record"])
def test_recording_rule_names(rule: dict[str, str]) -> None:
    # level:metric:operations (Prometheus naming practice)
    assert re.fullmatch(r"[a-z_]+:retriever_[a-z0-9_]+:[a-z0-9_]+", rule["record"]), rule["record"]


def test_rules_use_fixed_windows_and_known_metrics() -> None:
    known = h.service_series() | set(h.EXTERNAL_METRICS) | {r["record"] for r in RECORDS}
    for rule in RULES:
        info = h.analyse(rule["expr"])
        assert "$" not in rule["expr"], "Grafana variables do not exist in rules"
        assert h.metric_names(rule["expr"]) <= known, rule
        for func, inner in info.range_functions:
            if func in ("rate", "irate", "increase"):
                assert inner == "5m", f"{rule}: {func} over [{inner}]"


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a["alert"])
def test_unit_tests_catch_a_broken_threshold(alert: dict[str, str], promtool: str, tmp_path: Path) -> None:
    """Mutation control: flip the comparison of one alert and the unit tests must fail."""
    split = h.split_alert(alert["expr"])
    assert split
    signal, op, threshold = split
    flipped = {">": "<=", "<": ">=", ">=": "<", "<=": ">", "==": "!=", "!=": "=="}[op]
    doc = yaml.safe_load(h.RULES_FILE.read_text())
    for group in doc["groups"]:
        for rule in group["rules"]:
            if rule.get("alert") == alert["alert"]:
                rule["expr"] = f"{signal} {flipped} {threshold}"
    (tmp_path / "alerts" / "tests").mkdir(parents=True)
    (tmp_path / "alerts" / h.RULES_FILE.name).write_text(yaml.safe_dump(doc, sort_keys=False))
    for test_file in h.RULE_TEST_FILES:
        shutil.copy(test_file, tmp_path / "alerts" / "tests" / test_file.name)
    tests = [str(tmp_path / "alerts" / "tests" / f.name) for f in h.RULE_TEST_FILES]
    proc = promtool_run(promtool, "test", "rules", *tests)
    assert proc.returncode != 0, f"unit tests still pass with {alert['alert']} flipped to {flipped}"
    assert alert["alert"] in proc.stdout + proc.stderr
