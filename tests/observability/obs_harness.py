"""What the observability tests read besides the live scenario.

- the contract's metric table, the series only a cluster has, the dashboards' scoping rules;
- the dashboards' queries, and a small PromQL lexer to find the metrics and range selectors an
  expression uses (enough for our own conventions, not a full parser: Prometheus parses for real);
- the alert rules.

The live scenario (the real service, a real Prometheus, bounded load, k6) and the dashboard readers it
shares with `bench/dashboard_preview.py` are the dev harness's: `app.devtools.observability`. They are
imported here so that the tests read every name from one place (`h.`).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from app.devtools.observability import (  # noqa: F401  (re-exported for the tests)
    DASHBOARD_DIR,
    EXTERNAL_ONLY_PANELS,
    REPO,
    RULES_FILE,
    TEST_K6_TESTID,
    TEST_NAMESPACE,
    TEST_POD,
    LiveStack,
    LoadMix,
    LoadReport,
    Prometheus,
    RetrieverService,
    build_live_stack,
    dashboard_files,
    iter_panels,
    live_mix,
    load_json,
    run_k6,
    run_load,
    substitute,
)
from app.devtools.prometheus import finite_values, prometheus_binary, promtool_binary  # noqa: F401

RULE_TEST_FILES = sorted((DASHBOARD_DIR / "alerts" / "tests").glob("*.yaml"))
SCHEMA_TOOL_DIR = REPO / "tools" / "grafana-schema"
CONTRACT = REPO / "docs" / "CONTRACT.md"


# Per dashboard: the template variables that scope its data, and the matchers every selector carries.
DASHBOARD_SCOPES: dict[str, dict[str, str]] = {
    "retriever.json": {"namespace": 'namespace="$namespace"', "pod": 'pod=~"$pod"'},
    "k6.json": {"testid": 'testid=~"$testid"'},
}
# Series k6's Prometheus remote-write output creates (k6 1.1, trend stats p(50), p(95), p(99), max).
K6_METRICS: set[str] = {
    "k6_http_reqs_total",
    "k6_http_req_failed_rate",
    "k6_http_req_duration_p50",
    "k6_http_req_duration_p95",
    "k6_http_req_duration_p99",
    "k6_checks_rate",
    "k6_vus",
    "k6_vus_max",
    "k6_iterations_total",
    "k6_data_sent_total",
    "k6_data_received_total",
}


# Metrics the dashboard and rules read that the service does not export: they come from
# kube-state-metrics and the kubelet's cAdvisor in a cluster, and do not exist in the test Prometheus.
EXTERNAL_METRICS: dict[str, str] = {
    "kube_pod_container_resource_requests": "kube-state-metrics",
    "kube_pod_container_resource_limits": "kube-state-metrics",
    "kube_pod_container_status_restarts_total": "kube-state-metrics",
    "container_cpu_usage_seconds_total": "cAdvisor (kubelet)",
    "container_memory_working_set_bytes": "cAdvisor (kubelet)",
    "container_memory_rss": "cAdvisor (kubelet)",
}
EXTERNAL_ONLY_RULES: dict[str, str] = {
    "namespace_pod:retriever_memory_limit_bytes:max": "kube_pod_container_resource_limits (KSM)",
    "namespace_pod:retriever_memory_limit_ratio:max": "divides by the KSM memory limit above",
    "RetrieverMemoryNearLimit": "signal is the KSM-based ratio above (covered by promtool unit tests)",
}

Json = dict[str, Any]


# ---------------------------------------------------------------------------------------------- contract
def contract_metrics() -> set[str]:
    """Metric names from the table in docs/CONTRACT.md (first column, back-quoted)."""
    names: set[str] = set()
    for line in CONTRACT.read_text().splitlines():
        m = re.match(r"\|\s*`([a-z_:][a-z0-9_:]*)`\s*\|\s*(counter|gauge|histogram|summary)", line)
        if m:
            names.add(m.group(1))
    return names


# Series names our own service exports but docs/CONTRACT.md does not list (yet): see app/metrics.py.
NOT_YET_IN_CONTRACT: dict[str, str] = {
    "retriever_process_cpu_seconds": "per-worker CPU seconds (gauge); needed for the CPU panel",
    "retriever_process_start_time_seconds": "per-worker start time; needed for the Uptime panel",
}


def service_series() -> set[str]:
    """Every series name the service may export: the contract's table plus NOT_YET_IN_CONTRACT."""
    names: set[str] = set()
    for line in CONTRACT.read_text().splitlines():
        m = re.match(r"\|\s*`([a-z_:][a-z0-9_:]*)`\s*\|\s*(counter|gauge|histogram|summary)", line)
        if m:
            names |= exported_series_names(m.group(1), m.group(2))
    return names | set(NOT_YET_IN_CONTRACT)


def exported_series_names(metric: str, kind: str) -> set[str]:
    """The series names a metric of this type shows up as in Prometheus."""
    if kind == "histogram":
        return {f"{metric}_bucket", f"{metric}_sum", f"{metric}_count"}
    return {metric}


# ---------------------------------------------------------------------------------------------- dashboards
@dataclass(frozen=True)
class PanelQuery:
    dashboard: str
    panel_id: int
    panel_title: str
    panel_type: str
    ref_id: str
    expr: str
    legend: str

    @property
    def test_id(self) -> str:
        return f"{self.dashboard}:{self.panel_id}:{self.panel_title}:{self.ref_id}"


def dashboard_queries(paths: list[Path] | None = None) -> list[PanelQuery]:
    out: list[PanelQuery] = []
    for path in paths or dashboard_files():
        dash = load_json(path)
        for panel in iter_panels(dash):
            for t in panel.get("targets", []):
                out.append(
                    PanelQuery(
                        dashboard=path.name,
                        panel_id=int(panel["id"]),
                        panel_title=str(panel.get("title", "")),
                        panel_type=str(panel["type"]),
                        ref_id=str(t.get("refId", "")),
                        expr=str(t.get("expr", "")),
                        legend=str(t.get("legendFormat", "")),
                    )
                )
    return out


# ---------------------------------------------------------------------------------------------- PromQL lexing
_TOKEN = re.compile(
    r"""(?P<ws>\s+)
      |(?P<str>"(?:\\.|[^"\\])*"|'(?:\\.|[^'\\])*'|`[^`]*`)
      |(?P<matchers>\{[^}]*\})
      |(?P<range>\[[^\]]*\])
      |(?P<num>(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?)
      |(?P<ident>[A-Za-z_:][A-Za-z0-9_:]*)
      |(?P<op>==|!=|>=|<=|=~|!~|[-+*/%^<>(),])
    """,
    re.VERBOSE,
)
_GROUPING = {"by", "without", "on", "ignoring", "group_left", "group_right"}
_KEYWORDS = {"and", "or", "unless", "bool", "offset", "inf", "nan", "atan2"}


@dataclass
class Token:
    kind: str
    text: str


def tokenize(expr: str) -> list[Token]:
    tokens: list[Token] = []
    pos = 0
    while pos < len(expr):
        m = _TOKEN.match(expr, pos)
        if not m:
            raise ValueError(f"cannot lex {expr[pos : pos + 20]!r} in {expr!r}")
        pos = m.end()
        kind = m.lastgroup or ""
        if kind != "ws":
            tokens.append(Token(kind, m.group()))
    return tokens


@dataclass
class Selector:
    metric: str
    matchers: str  # the `{...}` text, "" when none


@dataclass
class ExprInfo:
    selectors: list[Selector] = field(default_factory=list)
    ranges: list[str] = field(default_factory=list)  # inner text of every [...]
    # (function name, inner text of the first range selector among its arguments or None)
    range_functions: list[tuple[str, str | None]] = field(default_factory=list)


def analyse(expr: str) -> ExprInfo:
    tokens = tokenize(expr)
    info = ExprInfo()
    i = 0
    # stack of (function name, depth) for rate-like functions whose range we want to see
    open_funcs: list[tuple[str, int, list[str | None]]] = []
    depth = 0
    while i < len(tokens):
        tok = tokens[i]
        nxt = tokens[i + 1] if i + 1 < len(tokens) else None
        if tok.kind == "ident":
            low = tok.text.lower()
            if low in _GROUPING and nxt is not None and nxt.text == "(":
                # skip the label list
                j = i + 2
                while j < len(tokens) and tokens[j].text != ")":
                    j += 1
                i = j + 1
                continue
            if low in _KEYWORDS:
                i += 1
                continue
            if nxt is not None and nxt.text == "(":
                holder: list[str | None] = [None]
                open_funcs.append((tok.text, depth + 1, holder))
                i += 1
                continue
            if nxt is not None and nxt.text.lower() in _GROUPING:
                # aggregation written as `sum by (x) (...)`
                i += 1
                continue
            matchers = nxt.text if nxt is not None and nxt.kind == "matchers" else ""
            info.selectors.append(Selector(tok.text, matchers))
        elif tok.kind == "matchers" and (i == 0 or tokens[i - 1].kind != "ident"):
            info.selectors.append(Selector("", tok.text))
        elif tok.kind == "range":
            inner = tok.text[1:-1].strip()
            info.ranges.append(inner)
            for _name, fdepth, holder in reversed(open_funcs):
                if fdepth == depth and holder[0] is None:
                    holder[0] = inner
                    break
        elif tok.text == "(":
            depth += 1
        elif tok.text == ")":
            while open_funcs and open_funcs[-1][1] == depth:
                name, _d, holder = open_funcs.pop()
                info.range_functions.append((name, holder[0]))
            depth -= 1
        i += 1
    return info


def metric_names(expr: str) -> set[str]:
    return {s.metric for s in analyse(expr).selectors if s.metric}


# ---------------------------------------------------------------------------------------------- rules
def load_rules(path: Path = RULES_FILE) -> list[Json]:
    doc = yaml.safe_load(path.read_text())
    return [dict(rule, group=group["name"]) for group in doc["groups"] for rule in group["rules"]]


_ALERT_FORM = re.compile(r"^(?P<signal>.+?)\s*(?P<op>>=|<=|==|!=|>|<)\s*(?P<threshold>-?[0-9.]+(?:e[+-]?\d+)?)$", re.S)


def split_alert(expr: str) -> tuple[str, str, float] | None:
    """`<signal> <op> <number>` -> (signal, op, number); None when the alert is not of that form."""
    m = _ALERT_FORM.match(" ".join(expr.split()))
    if not m:
        return None
    return m.group("signal"), m.group("op"), float(m.group("threshold"))
