"""The dashboards and rules against a real Prometheus that scraped the real service under load.

One scenario (conftest.build_live_stack), shared by every test here:
service up (demo corpus) -> Prometheus scraping it every second, with `namespace`/`pod` attached by
relabeling as Kubernetes discovery would -> bounded load (single queries, batches that overfill the
queue, deliberate client errors) -> the service restarted (a not-ready window, a process start)
-> the same load again -> two more scrapes.

Then every query of every dashboard panel, every recording rule and every alert's signal is run through
Prometheus' HTTP API (range query over the scenario): each must parse and return finite data, except the
few that only read kube-state-metrics, listed in EXTERNAL_ONLY_PANELS and EXTERNAL_ONLY_RULES with the reason.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from typing import Any

import obs_harness as h
import pytest

pytestmark = pytest.mark.slow

QUERIES = h.dashboard_queries()
RULES = h.load_rules()
RECORDS = [r for r in RULES if "record" in r]
ALERTS = [r for r in RULES if "alert" in r]


def panel_expr(stack: h.LiveStack, q: h.PanelQuery) -> str:
    return h.substitute(q.expr, rate_interval="1m", range_=stack.window, interval="15s")


def labels_of(data: dict[str, Any], label: str) -> set[str]:
    return {series["metric"].get(label, "") for series in data["result"]}


def test_scenario_ran_as_planned(live_stack: h.LiveStack) -> None:
    """The load itself: the scenario must have produced what the later assertions rely on."""
    total = h.LoadReport()
    for report in live_stack.loads:
        total.merge(report)
    print(f"\nload: {total.sent} requests in {total.seconds:.1f}s, statuses {dict(total.statuses)}")
    print(f"timings: {live_stack.timings}")
    assert total.transport_errors == 0
    assert total.statuses[200] >= 10
    assert total.statuses[422] >= 12  # limits and invalid bodies: three probes, twice per phase
    assert total.statuses[503] >= 4  # each burst (two per phase) overfills the queue
    assert live_stack.service.starts == 2


def test_promtool_check_metrics(live_stack: h.LiveStack, promtool: str) -> None:
    """`promtool check metrics` on the service's /metrics (exposition format and naming lint)."""
    text = live_stack.service.metrics_text()
    assert "retriever_queries_total" in text
    proc = subprocess.run([promtool, "check", "metrics"], input=text, capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_target_carries_namespace_and_pod(live_stack: h.LiveStack) -> None:
    (target,) = live_stack.prometheus.targets_state()
    assert target["health"] == "up", target
    assert target["labels"]["namespace"] == h.TEST_NAMESPACE
    assert target["labels"]["pod"] == h.TEST_POD


def test_template_variables_resolve(live_stack: h.LiveStack) -> None:
    """The namespace/pod variables' label_values() queries, as Grafana runs them (series API)."""
    prom = live_stack.prometheus
    dash = h.load_json(h.DASHBOARD_DIR / "retriever.json")
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    k6_variables = {v["name"]: v for v in h.load_json(h.DASHBOARD_DIR / "k6.json")["templating"]["list"]}
    variables["testid"] = k6_variables["testid"]
    if live_stack.k6_error:
        pytest.fail(f"k6 did not run: {live_stack.k6_error}")
    for name, expected in (("namespace", h.TEST_NAMESPACE), ("pod", h.TEST_POD), ("testid", h.TEST_K6_TESTID)):
        query = h.substitute(variables[name]["query"]["query"])
        inner = query[len("label_values(") : -1]
        match, label = inner.rsplit(",", 1)
        resp = prom.client.get(f"/api/v1/label/{label.strip()}/values", params={"match[]": match.strip()})
        assert resp.json()["data"] == [expected], (query, resp.json())


def test_every_used_service_metric_was_scraped(live_stack: h.LiveStack) -> None:
    used = {n for q in QUERIES for n in h.metric_names(q.expr)} | {n for r in RULES for n in h.metric_names(r["expr"])}
    own = used - set(h.EXTERNAL_METRICS) - h.K6_METRICS - {r["record"] for r in RECORDS}
    data = live_stack.query_range(f'count by (__name__) ({{__name__=~"{"|".join(sorted(own))}"}})')
    scraped = labels_of(data, "__name__")
    assert own == scraped, f"used but not exported by the service: {sorted(own - scraped)}"


def test_k6_pushed_every_metric_the_k6_dashboard_reads(live_stack: h.LiveStack) -> None:
    if live_stack.k6_error:
        pytest.fail(f"k6 did not run: {live_stack.k6_error}")
    data = live_stack.query_range(f'count by (__name__) ({{__name__=~"k6_.*", testid="{h.TEST_K6_TESTID}"}})')
    assert labels_of(data, "__name__") >= h.K6_METRICS


def test_k6_ran_the_bounded_scenario(live_stack: h.LiveStack) -> None:
    """3 iterations/s for 8 s (k6_traffic.js as run_k6 sets it): not an unbounded loop."""
    if live_stack.k6_error:
        pytest.fail(f"k6 did not run: {live_stack.k6_error}")
    data = live_stack.query_range(f'sum(k6_iterations_total{{testid="{h.TEST_K6_TESTID}"}})')
    iterations = max(h.finite_values(data))
    assert 12 <= iterations <= 3 * 8 + 3, iterations


@pytest.mark.parametrize("q", QUERIES, ids=lambda q: q.test_id)
def test_panel_query_returns_data(live_stack: h.LiveStack, q: h.PanelQuery) -> None:
    if q.dashboard == "k6.json" and live_stack.k6_error:
        pytest.fail(f"k6 did not run: {live_stack.k6_error}")
    expr = panel_expr(live_stack, q)
    data = live_stack.query_range(expr)  # raises on a parse or evaluation error
    if (q.panel_title, q.ref_id) in h.EXTERNAL_ONLY_PANELS:
        # Parsed and evaluated; nothing can come back without kube-state-metrics. If something does,
        # the test Prometheus scrapes more than we think: take it off the list.
        assert data["result"] == [], "external-only query returned data: update EXTERNAL_ONLY_PANELS"
        return
    values = h.finite_values(data)
    assert values, f"no finite data for {expr}: {data['result'][:2]}"
    check = PLAUSIBLE.get((q.panel_title, q.ref_id))
    if check is not None:
        check(data, values)


# What the scenario must show beyond "some data", per panel query.
def _positive(_: dict[str, Any], values: list[float]) -> None:
    assert max(values) > 0


def _ratio(_: dict[str, Any], values: list[float]) -> None:
    assert 0 < max(values) <= 1


def _statuses(data: dict[str, Any], values: list[float]) -> None:
    assert {"2xx", "4xx", "5xx"} <= labels_of(data, "status")
    assert max(values) > 0


def _stages(data: dict[str, Any], values: list[float]) -> None:
    assert labels_of(data, "stage") == {"queue_wait", "encode", "search", "fetch"}
    assert 0 < max(values) < 30


def _latency(_: dict[str, Any], values: list[float]) -> None:
    assert 0 < max(values) < 30


def _reasons(data: dict[str, Any], values: list[float]) -> None:
    assert {"queue_full", "too_many_queries", "topk", "invalid"} <= labels_of(data, "reason")
    assert max(values) > 0


def _batches(_: dict[str, Any], values: list[float]) -> None:
    assert max(values) > 1  # batches of several queries happened


def _ready_flapped(_: dict[str, Any], values: list[float]) -> None:
    assert min(values) == 0 and max(values) == 1  # the restart's loading window, then ready


def _k6_statuses(data: dict[str, Any], values: list[float]) -> None:
    assert {"200", "422"} <= labels_of(data, "status")
    assert max(values) > 0


def _k6_checks(data: dict[str, Any], values: list[float]) -> None:
    assert labels_of(data, "check") == {"bad topk refused with 422", "answered or refused for overload"}
    assert min(values) == 1  # every check passed


def _memory(_: dict[str, Any], values: list[float]) -> None:
    assert min(values) > 50e6  # a worker with torch and a model is far above 50 MB


PLAUSIBLE: dict[tuple[str, str], Callable[[dict[str, Any], list[float]], None]] = {
    ("Ready pods", "A"): lambda _, v: None if max(v) == 1 else pytest.fail(f"ready pods {v}"),
    ("Requests/s", "A"): _positive,
    ("5xx ratio", "A"): _ratio,
    ("p99 latency", "A"): _latency,
    ("Index vectors", "A"): _positive,
    ("Throughput", "A"): _statuses,
    ("Throughput", "B"): _positive,
    ("Error ratio", "A"): _ratio,
    ("Error ratio", "B"): _ratio,
    ("Latency percentiles", "A"): _latency,
    ("Latency percentiles", "C"): _latency,
    ("Stage latency p95", "A"): _stages,
    ("Stage latency mean", "A"): _stages,
    ("Batch size", "A"): _batches,
    ("Batch size", "C"): _batches,
    ("Queue depth and in-flight", "A"): _positive,
    ("Queue depth and in-flight", "B"): _positive,
    ("Queue depth and in-flight", "C"): _positive,
    ("Rejections by reason", "A"): _reasons,
    ("Memory against request and limit", "A"): _memory,
    ("Memory against request and limit", "B"): _memory,
    ("CPU", "A"): _positive,
    ("Readiness", "A"): _ready_flapped,
    ("Uptime", "A"): _positive,
    ("Index and corpus size", "A"): _positive,
    ("Index and corpus size", "B"): _positive,
    ("k6 requests/s", "A"): _positive,
    ("k6 failed requests", "A"): lambda _, v: None if 0 < max(v) < 0.5 else pytest.fail(f"{v}"),  # 1 in 4 bad
    ("k6 p95 duration", "A"): _latency,  # seconds, not milliseconds
    ("k6 requests/s by status", "A"): _k6_statuses,
    ("k6 request duration", "C"): _latency,
    ("k6 checks passing", "A"): _k6_checks,
    ("k6 VUs and iterations", "C"): _positive,
    ("k6 data transfer", "B"): _positive,
}


def test_plausibility_checks_name_real_queries() -> None:
    names = {(q.panel_title, q.ref_id) for q in QUERIES}
    assert set(PLAUSIBLE) <= names, set(PLAUSIBLE) - names


def test_latency_percentiles_are_ordered(live_stack: h.LiveStack) -> None:
    by_ref = {q.ref_id: q for q in QUERIES if q.panel_title == "Latency percentiles"}
    series = {}
    for ref in ("A", "B", "C"):
        (result,) = live_stack.query_range(panel_expr(live_stack, by_ref[ref]))["result"]
        series[ref] = {ts: float(v) for ts, v in result["values"] if float(v) == float(v)}
    common = set(series["A"]) & set(series["B"]) & set(series["C"])
    assert common
    for ts in common:
        assert series["A"][ts] <= series["B"][ts] <= series["C"][ts]


# ---------------------------------------------------------------------------------------------- rules
def test_prometheus_loaded_every_rule_healthy(live_stack: h.LiveStack) -> None:
    state = live_stack.prometheus.rules_state()
    names = sorted(r["name"] for r in state)
    assert names == sorted(r.get("record") or r["alert"] for r in RULES)
    for rule in state:
        assert rule["health"] == "ok", rule


@pytest.mark.parametrize("rule", RECORDS, ids=lambda r: r["record"])
def test_recording_rule_returns_data(live_stack: h.LiveStack, rule: dict[str, str]) -> None:
    # the expression itself, and the series Prometheus recorded from it
    for expr in (rule["expr"], rule["record"]):
        data = live_stack.query_range(expr)
        if rule["record"] in h.EXTERNAL_ONLY_RULES:
            assert data["result"] == [], "external-only rule returned data: update EXTERNAL_ONLY_RULES"
            continue
        assert h.finite_values(data), f"no data for {expr}"
        assert labels_of(data, "namespace") == {h.TEST_NAMESPACE}


@pytest.mark.parametrize("alert", ALERTS, ids=lambda a: a["alert"])
def test_alert_signal_returns_data(live_stack: h.LiveStack, alert: dict[str, str]) -> None:
    split = h.split_alert(alert["expr"])
    assert split
    signal, _op, _threshold = split
    live_stack.query_range(alert["expr"])  # the full expression parses and evaluates
    data = live_stack.query_range(signal)
    if alert["alert"] in h.EXTERNAL_ONLY_RULES:
        assert data["result"] == []
        return
    assert h.finite_values(data), f"no data for the signal {signal}"


def test_alerts_stay_quiet_on_a_healthy_scenario(live_stack: h.LiveStack) -> None:
    """No alert may be firing after a short, mostly healthy run (the `for` clauses are minutes)."""
    firing = [r for r in live_stack.prometheus.rules_state() if r.get("state") == "firing"]
    assert not firing, firing


def test_uptime_shows_the_one_restart(live_stack: h.LiveStack) -> None:
    """Before the restart the youngest worker is as old as the scenario; after it, younger than the restart."""
    q = next(q for q in QUERIES if q.panel_title == "Uptime")
    prom = live_stack.prometheus
    expr = panel_expr(live_stack, q)
    before = h.finite_values(prom.query(expr, at=live_stack.restart_at - 0.5))
    after = h.finite_values(prom.query(expr, at=live_stack.end))
    assert len(before) == 1 and before[0] >= live_stack.restart_at - 0.5 - live_stack.start, before
    assert len(after) == 1 and after[0] <= live_stack.end - live_stack.restart_at, after


def test_readiness_shows_the_restart(live_stack: h.LiveStack) -> None:
    q = next(q for q in QUERIES if q.panel_title == "Readiness")
    expr = panel_expr(live_stack, q)
    before = h.finite_values(live_stack.query_range(expr, end=live_stack.restart_at - 1))
    after = h.finite_values(live_stack.query_range(expr, start=live_stack.restart_at))
    assert set(before) == {1.0}, "ready all along before the restart"
    assert 0.0 in after and after[-1] == 1.0, "not ready while reloading, then ready"
