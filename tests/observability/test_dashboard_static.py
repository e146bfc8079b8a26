"""Dashboards without a Prometheus: Grafana's own schema, and our conventions.

The schema is generated at test time from the pinned npm package @grafana/schema (type `Dashboard`)
with ts-json-schema-generator; see conftest.grafana_dashboard_schema.
"""

from __future__ import annotations

import copy
import re
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsonschema
import obs_harness as h
import pytest

DASHBOARDS = h.dashboard_files()
# Grafana unit ids our panels may use (a typo such as "second" would silently show raw numbers).
KNOWN_UNITS = {"s", "ms", "reqps", "percentunit", "short", "none", "bytes", "decbytes", "ops", "cps", "Bps"}
ALLOWED_RANGES = re.compile(r"^\$__rate_interval$|^\$__range(:(\$__interval)?)?$")


def test_dashboards_exist() -> None:
    assert [p.name for p in DASHBOARDS] == sorted(h.DASHBOARD_SCOPES)


def test_generated_json_is_up_to_date() -> None:
    proc = subprocess.run(
        [sys.executable, str(h.DASHBOARD_DIR / "generate.py"), "--check"], capture_output=True, text=True
    )
    assert proc.returncode == 0, proc.stderr


# ---------------------------------------------------------------------------------------------- schema
def schema_errors(schema: dict[str, Any], doc: dict[str, Any]) -> list[str]:
    validator = jsonschema.Draft7Validator(schema)
    return [
        f"{'/'.join(str(p) for p in err.absolute_path)}: {err.message[:200]}"
        for err in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))
    ]


@pytest.mark.parametrize("path", DASHBOARDS, ids=lambda p: p.name)
def test_validates_against_grafana_schema(path: Path, grafana_dashboard_schema: dict[str, Any]) -> None:
    errors = schema_errors(grafana_dashboard_schema, h.load_json(path))
    assert not errors, "\n".join(errors)


def test_grafana_schema_rejects_broken_dashboards(grafana_dashboard_schema: dict[str, Any]) -> None:
    """Negative controls: the generated schema is strict enough to catch real mistakes."""
    good = h.load_json(h.DASHBOARD_DIR / "retriever.json")
    first_panel = next(i for i, p in enumerate(good["panels"]) if p["type"] != "row")
    mutations = {
        "panel with unknown key": lambda d: d["panels"][first_panel].__setitem__("datasourse", {}),
        "panel without type": lambda d: d["panels"][first_panel].pop("type"),
        "gridPos as string": lambda d: d["panels"][first_panel].__setitem__("gridPos", "0,0,12,8"),
        "unknown variable type": lambda d: d["templating"]["list"][0].__setitem__("type", "promql"),
        "no schemaVersion": lambda d: d.pop("schemaVersion"),
        "threshold without color": lambda d: d["panels"][first_panel]["fieldConfig"]["defaults"].__setitem__(
            "thresholds", {"mode": "absolute", "steps": [{"value": None}]}
        ),
    }
    for name, mutate in mutations.items():
        bad = copy.deepcopy(good)
        mutate(bad)
        assert schema_errors(grafana_dashboard_schema, bad), f"schema accepted a dashboard with {name}"


# ---------------------------------------------------------------------------------------------- our rules
@pytest.fixture(params=DASHBOARDS, ids=lambda p: p.name)
def dashboard(request: pytest.FixtureRequest) -> dict[str, Any]:
    return h.load_json(request.param) | {"_file": request.param.name}


def test_datasource_and_scope_variables(dashboard: dict[str, Any]) -> None:
    variables = {v["name"]: v for v in dashboard["templating"]["list"]}
    ds = variables.get("datasource")
    assert ds is not None and ds["type"] == "datasource" and ds["query"] == "prometheus"
    for name in h.DASHBOARD_SCOPES[dashboard["_file"]]:
        var = variables.get(name)
        assert var is not None, f"missing ${name} variable"
        assert var["type"] == "query"
        assert var["datasource"] == {"type": "prometheus", "uid": "${datasource}"}
        query = var["query"]["query"] if isinstance(var["query"], dict) else var["query"]
        assert re.fullmatch(rf"label_values\((\w+)(\{{.*\}})?, ?{name}\)", query), query
    if dashboard["_file"] == "retriever.json":
        assert variables["pod"]["includeAll"] and variables["pod"]["allValue"] == ".*"
        pod_query = variables["pod"]["query"]["query"]
        assert 'namespace="$namespace"' in pod_query, "pod list must follow the chosen namespace"


def test_every_panel_uses_the_datasource_variable(dashboard: dict[str, Any]) -> None:
    for panel in h.iter_panels(dashboard):
        assert panel.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]
        assert panel.get("targets"), f"panel {panel['title']!r} has no query"
        for t in panel["targets"]:
            assert t.get("datasource") == {"type": "prometheus", "uid": "${datasource}"}, panel["title"]


def test_every_panel_has_a_known_unit(dashboard: dict[str, Any]) -> None:
    for panel in h.iter_panels(dashboard):
        unit = panel.get("fieldConfig", {}).get("defaults", {}).get("unit")
        assert unit, f"panel {panel['title']!r} has no unit"
        assert unit in KNOWN_UNITS, f"panel {panel['title']!r}: unknown unit {unit!r}"


def test_uids_ids_and_titles_are_unique() -> None:
    uids = [h.load_json(p)["uid"] for p in DASHBOARDS]
    assert all(uids) and len(set(uids)) == len(uids), uids
    for path in DASHBOARDS:
        dash = h.load_json(path)
        all_panels = [p for p in dash["panels"]] + [c for p in dash["panels"] for c in p.get("panels", [])]
        ids = [p["id"] for p in all_panels]
        assert len(set(ids)) == len(ids), f"{path.name}: duplicate panel ids"
        titles = [p["title"] for p in h.iter_panels(dash)]
        assert len(set(titles)) == len(titles), f"{path.name}: duplicate panel titles"
        for panel in h.iter_panels(dash):
            refs = [t["refId"] for t in panel["targets"]]
            assert len(set(refs)) == len(refs), f"{panel['title']!r}: duplicate refIds"


def test_layout_fits_the_grid_without_overlap(dashboard: dict[str, Any]) -> None:
    cells: dict[tuple[int, int], str] = {}
    for panel in dashboard["panels"]:
        pos = panel["gridPos"]
        assert pos["x"] >= 0 and pos["x"] + pos["w"] <= 24, panel["title"]
        for x in range(pos["x"], pos["x"] + pos["w"]):
            for y in range(pos["y"], pos["y"] + pos["h"]):
                assert (x, y) not in cells, f"{panel['title']!r} overlaps {cells[(x, y)]!r}"
                cells[(x, y)] = panel["title"]


QUERIES = h.dashboard_queries()


@pytest.mark.parametrize("q", QUERIES, ids=lambda q: q.test_id)
def test_query_conventions(q: h.PanelQuery) -> None:
    info = h.analyse(q.expr)
    assert info.selectors, "query reads no metric"
    for sel in info.selectors:
        assert sel.metric, f"selector without a metric name: {sel.matchers}"
        for variable, matcher in h.DASHBOARD_SCOPES[q.dashboard].items():
            assert matcher in sel.matchers, f"{sel.metric} not scoped to ${variable}"
    for inner in info.ranges:
        assert ALLOWED_RANGES.match(inner), f"hard-coded range [{inner}]: use $__rate_interval"
    for func, inner in info.range_functions:
        if func in ("rate", "irate"):
            assert inner == "$__rate_interval", f"{func}() over [{inner}]"
    # every variable used is one Grafana or our templating defines
    h.substitute(q.expr)


def test_metrics_are_the_services_or_declared_external() -> None:
    allowed = {
        "retriever.json": h.service_series() | set(h.EXTERNAL_METRICS),
        "k6.json": h.K6_METRICS,
    }
    for q in QUERIES:
        unknown = h.metric_names(q.expr) - allowed[q.dashboard]
        assert not unknown, f"{q.test_id} reads metrics nobody exports: {sorted(unknown)}"


def test_every_contract_metric_is_on_the_dashboard() -> None:
    used = {name for q in QUERIES if q.dashboard == "retriever.json" for name in h.metric_names(q.expr)}
    missing = [
        metric
        for metric in sorted(h.contract_metrics())
        if not any(series in used for series in h.exported_series_names(metric, "histogram") | {metric})
    ]
    assert not missing, f"metrics in docs/CONTRACT.md no panel shows: {missing}"


def test_every_external_metric_has_a_panel_fallback_or_is_listed() -> None:
    """A query that reads only external metrics shows nothing without kube-state-metrics/cAdvisor.

    Those queries must be listed, with the reason, in EXTERNAL_ONLY_PANELS (app.devtools.observability);
    nothing else may be.
    """
    external_only = {(q.panel_title, q.ref_id) for q in QUERIES if h.metric_names(q.expr) <= set(h.EXTERNAL_METRICS)}
    assert external_only == set(h.EXTERNAL_ONLY_PANELS), external_only


def test_analyser_sees_what_it_must() -> None:
    """The lexer behind the checks above, on cases it must not get wrong."""
    info = h.analyse(
        'sum by (pod, le) (rate(a_bucket{x="1"}[$__rate_interval])) / on (pod) group_left (b) '
        'max(b{y=~"2"}) or changes(max by (pod) (c)[$__range:]) > bool 3'
    )
    assert [s.metric for s in info.selectors] == ["a_bucket", "b", "c"]
    assert info.ranges == ["$__rate_interval", "$__range:"]
    assert ("rate", "$__rate_interval") in info.range_functions
    assert ("changes", "$__range:") in info.range_functions
    assert h.analyse("rate(x[5m])").range_functions[0] == ("rate", "5m")
    with pytest.raises(KeyError):
        h.substitute("rate(x[$__rate_intervl])")
