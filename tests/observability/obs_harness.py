"""Shared machinery for the observability tests and `bench/dashboard_preview.py`.

- reading the dashboards and rules, and a small PromQL lexer to find the metrics and range selectors
  an expression uses (enough for our own conventions, not a full parser: Prometheus parses for real);
- starting and stopping a real Prometheus (Debian package) and the real service, by PID;
- a bounded load generator (count and time) against loopback.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import yaml

REPO = Path(__file__).resolve().parents[2]
DASHBOARD_DIR = REPO / "dashboards"
RULES_FILE = DASHBOARD_DIR / "alerts" / "retriever-rules.yaml"
RULE_TEST_FILES = sorted((DASHBOARD_DIR / "alerts" / "tests").glob("*.yaml"))
SCHEMA_TOOL_DIR = REPO / "tools" / "grafana-schema"
CONTRACT = REPO / "docs" / "CONTRACT.md"

# What the test Prometheus attaches to every scraped series (a ServiceMonitor attaches the same labels).
TEST_NAMESPACE = "retriever-test"
TEST_POD = "retriever-test-0"
# The `testid` tag of the k6 run the live test pushes (k6.json's variable).
TEST_K6_TESTID = "obs-live"
K6_SCRIPT = Path(__file__).resolve().parent / "k6_traffic.js"

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
K6_TREND_STATS = "p(50),p(95),p(99),max"

# Metrics the dashboard and rules read that the service does not export: they come from
# kube-state-metrics and the kubelet's cAdvisor in a cluster, and do not exist in the test Prometheus.
EXTERNAL_METRICS: dict[str, str] = {
    "kube_pod_container_resource_requests": "kube-state-metrics",
    "kube_pod_container_resource_limits": "kube-state-metrics",
    "kube_pod_container_status_restarts_total": "kube-state-metrics",
    "container_cpu_usage_seconds_total": "cAdvisor (kubelet)",
    "container_memory_working_set_bytes": "cAdvisor (kubelet)",
}

# Queries that read nothing but those external metrics: in the test Prometheus they can only be checked
# to parse (and to return nothing); every other query must return data. Tests keep these lists exact.
EXTERNAL_ONLY_PANELS: dict[tuple[str, str], str] = {
    ("Memory against request and limit", "C"): "memory request: kube_pod_container_resource_requests (KSM)",
    ("Memory against request and limit", "D"): "memory limit: kube_pod_container_resource_limits (KSM)",
    ("CPU", "B"): "CPU request: kube_pod_container_resource_requests (KSM)",
    ("Restarts", "A"): "kube_pod_container_status_restarts_total (KSM); the Uptime panel shows restarts without it",
}
EXTERNAL_ONLY_RULES: dict[str, str] = {
    "namespace_pod:retriever_memory_limit_bytes:max": "kube_pod_container_resource_limits (KSM)",
    "namespace_pod:retriever_memory_limit_ratio:max": "divides by the KSM memory limit above",
    "RetrieverMemoryNearLimit": "signal is the KSM-based ratio above (covered by promtool unit tests)",
}

Json = dict[str, Any]


# ---------------------------------------------------------------------------------------------- tools
def prometheus_binary() -> str | None:
    return os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus")


def promtool_binary() -> str | None:
    return os.environ.get("PROMTOOL_BIN") or shutil.which("promtool")


def k6_binary() -> str | None:
    """k6 from `make tools-k6` (.tools/k6venv), K6_BIN, or PATH."""
    pinned = REPO / ".tools" / "k6venv" / "bin" / "k6"
    return os.environ.get("K6_BIN") or (str(pinned) if pinned.exists() else None) or shutil.which("k6")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


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
def dashboard_files() -> list[Path]:
    return sorted(DASHBOARD_DIR.glob("*.json"))


def load_json(path: Path) -> Json:
    return json.loads(path.read_text())


def iter_panels(dashboard: Json) -> Iterator[Json]:
    """Every panel that is not a row, including those nested in collapsed rows."""
    for panel in dashboard.get("panels", []):
        if panel.get("type") == "row":
            yield from panel.get("panels", [])
        else:
            yield panel


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


_VAR = re.compile(r"\$\{(\w+)(?::\w+)?\}|\$(\w+)|\[\[(\w+)\]\]")


def substitute(
    expr: str,
    *,
    variables: dict[str, str] | None = None,
    rate_interval: str = "1m",
    range_: str = "10m",
    interval: str = "15s",
) -> str:
    """Replace Grafana variables the way Grafana would for a single selected value.

    Raises KeyError for a variable we do not know, so a typo cannot slip through as a literal `$x`.
    """
    values = {
        "namespace": TEST_NAMESPACE,
        "pod": TEST_POD,
        "testid": TEST_K6_TESTID,
        "__rate_interval": rate_interval,
        "__range": range_,
        "__interval": interval,
    }
    values.update(variables or {})

    def repl(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(2) or m.group(3)
        return values[name]

    return _VAR.sub(repl, expr)


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


# ---------------------------------------------------------------------------------------------- processes
def _stop(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the process we started (by PID), then SIGKILL if it does not exit."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


def _tail(path: Path, lines: int = 40) -> str:
    try:
        return "\n".join(path.read_text(errors="replace").splitlines()[-lines:])
    except OSError:
        return ""


class Prometheus:
    """A real Prometheus on 127.0.0.1 with its own config and TSDB under `workdir`."""

    def __init__(
        self,
        workdir: Path,
        targets: list[str],
        *,
        rule_files: list[Path] | None = None,
        scrape_interval: str = "1s",
        target_labels: dict[str, str] | None = None,
    ) -> None:
        binary = prometheus_binary()
        if not binary:
            raise RuntimeError("prometheus is not installed: run `make tools-observability`")
        self.binary = binary
        self.workdir = workdir
        self.targets = targets
        self.rule_files = rule_files or []
        self.scrape_interval = scrape_interval
        self.target_labels = target_labels or {
            "namespace": TEST_NAMESPACE,
            "pod": TEST_POD,
            "container": "retriever",
        }
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None
        self.log_path = workdir / "prometheus.log"
        self.client = httpx.Client(base_url=self.url, timeout=30)

    def config(self) -> Json:
        return {
            "global": {"scrape_interval": self.scrape_interval, "evaluation_interval": self.scrape_interval},
            "rule_files": [str(p) for p in self.rule_files],
            "scrape_configs": [
                {
                    "job_name": "retriever",
                    "scrape_interval": self.scrape_interval,
                    "scrape_timeout": self.scrape_interval,
                    "static_configs": [{"targets": self.targets}],
                    # what Kubernetes service discovery would attach, set by relabeling
                    "relabel_configs": [
                        {"target_label": name, "replacement": value} for name, value in self.target_labels.items()
                    ],
                }
            ],
        }

    def start(self, timeout: float = 30.0) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        config_path = self.workdir / "prometheus.yml"
        config_path.write_text(yaml.safe_dump(self.config(), sort_keys=False))
        log = self.log_path.open("wb")
        self.proc = subprocess.Popen(
            [
                self.binary,
                f"--config.file={config_path}",
                f"--storage.tsdb.path={self.workdir / 'tsdb'}",
                f"--web.listen-address=127.0.0.1:{self.port}",
                "--storage.tsdb.retention.time=1d",
                "--web.enable-remote-write-receiver",  # k6's experimental-prometheus-rw output
                "--log.level=warn",
            ],
            stdout=log,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
        )
        log.close()
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"prometheus exited with {self.proc.returncode}:\n{_tail(self.log_path)}")
            try:
                if self.client.get("/-/ready", timeout=2).status_code == 200:
                    return
            except httpx.TransportError:
                pass
            time.sleep(0.2)
        raise RuntimeError(f"prometheus not ready after {timeout}s:\n{_tail(self.log_path)}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc)
        self.client.close()

    def _api(self, path: str, params: dict[str, Any]) -> Json:
        resp = self.client.post(f"/api/v1/{path}", data=params)
        body = resp.json()
        if resp.status_code != 200 or body.get("status") != "success":
            raise PromQueryError(params.get("query", ""), body.get("errorType", ""), body.get("error", resp.text))
        return body["data"]

    def query(self, expr: str, at: float | None = None) -> Json:
        params: dict[str, Any] = {"query": expr}
        if at is not None:
            params["time"] = at
        return self._api("query", params)

    def query_range(self, expr: str, start: float, end: float, step: float = 1.0) -> Json:
        return self._api("query_range", {"query": expr, "start": start, "end": end, "step": step})

    def wait_for(self, expr: str, timeout: float = 30.0) -> Json:
        """Poll an instant query until it returns a non-empty vector."""
        deadline = time.monotonic() + timeout
        while True:
            data = self.query(expr)
            if data["result"]:
                return data
            if time.monotonic() > deadline:
                raise TimeoutError(f"{expr} still empty after {timeout}s")
            time.sleep(0.5)

    def targets_state(self) -> list[Json]:
        return self.client.get("/api/v1/targets").json()["data"]["activeTargets"]

    def rules_state(self) -> list[Json]:
        groups = self.client.get("/api/v1/rules").json()["data"]["groups"]
        return [rule for group in groups for rule in group["rules"]]


class PromQueryError(Exception):
    def __init__(self, expr: str, kind: str, message: str) -> None:
        super().__init__(f"{kind}: {message} in {expr}")
        self.kind = kind
        self.message = message


def finite_values(data: Json) -> list[float]:
    """All finite sample values of a query / query_range answer."""
    out: list[float] = []
    if data["resultType"] == "matrix":
        pairs = [v for series in data["result"] for v in series["values"]]
    elif data["resultType"] == "vector":
        pairs = [series["value"] for series in data["result"]]
    else:
        pairs = [data["result"]]
    for _ts, raw in pairs:
        value = float(raw)
        if value == value and value not in (float("inf"), float("-inf")):
            out.append(value)
    return out


class RetrieverService:
    """The real service (`retriever serve`, the demo corpus) on a loopback port, stopped by PID."""

    def __init__(
        self,
        workdir: Path,
        *,
        port: int | None = None,
        demo_limit: int = 300,
        workers: int = 1,
        env: dict[str, str] | None = None,
    ) -> None:
        self.workdir = workdir
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.demo_limit = demo_limit
        self.workers = workers
        self.extra_env = env or {}
        self.proc: subprocess.Popen[bytes] | None = None
        self.starts = 0
        self.log_path = workdir / "retriever.log"

    def command(self) -> list[str]:
        exe = Path(sys.executable).parent / "retriever"
        return [
            str(exe),
            "serve",
            "--host",
            "127.0.0.1",
            "--port",
            str(self.port),
            "--demo-limit",
            str(self.demo_limit),
            "--workers",
            str(self.workers),
            "--log-level",
            "warning",
        ]

    def start(self) -> None:
        self.workdir.mkdir(parents=True, exist_ok=True)
        env = dict(os.environ)
        env.setdefault("HF_HUB_OFFLINE", "1")
        # the service makes its own multiprocess directory per start when this is unset
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        # Drain like a pod does: on SIGTERM readiness drops at once while the server still answers
        # (scrapes included) for 3 s. Loading got fast enough that the not-ready window at start-up
        # alone can fall between two 1 s scrapes; the drain window is what makes the restart visible.
        env["RETRIEVER_SHUTDOWN_DELAY_S"] = "3"
        env.update(self.extra_env)
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"\n===== start {self.starts}: {' '.join(self.command())}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            self.command(), cwd=REPO, env=env, stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL
        )
        log.close()

    def wait_ready(self, timeout: float) -> float:
        """Seconds until GET /health answered 200."""
        assert self.proc is not None
        t0 = time.monotonic()
        with httpx.Client(base_url=self.url, timeout=5) as client:
            while time.monotonic() - t0 < timeout:
                if self.proc.poll() is not None:
                    raise RuntimeError(f"retriever exited with {self.proc.returncode}:\n{_tail(self.log_path)}")
                try:
                    if client.get("/health").status_code == 200:
                        return time.monotonic() - t0
                except httpx.TransportError:
                    pass
                time.sleep(0.3)
        raise TimeoutError(f"retriever not ready after {timeout}s:\n{_tail(self.log_path)}")

    def stop(self) -> None:
        if self.proc is not None:
            _stop(self.proc, timeout=30)

    def metrics_text(self) -> str:
        return httpx.get(f"{self.url}/metrics", timeout=10).text


# ---------------------------------------------------------------------------------------------- load
FALLBACK_QUERIES = [
    "epic poem by john milton",
    "painting by georges seurat",
    "capital city of france",
    "american rock band",
    "programming language",
    "1968 film by stanley kubrick",
    "chemical element",
    "river in europe",
]


def load_queries() -> list[str]:
    path = REPO / "loadtest" / "queries.json"
    try:
        data = json.loads(path.read_text())
        queries = [item["q"] for item in data.get("labelled", []) if isinstance(item, dict) and "q" in item]
    except (OSError, ValueError, KeyError):
        queries = []
    return queries or FALLBACK_QUERIES


@dataclass
class LoadReport:
    sent: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    kinds: Counter[str] = field(default_factory=Counter)
    transport_errors: int = 0
    seconds: float = 0.0

    def add(self, kind: str, status: int | None) -> None:
        self.sent += 1
        self.kinds[kind] += 1
        if status is None:
            self.transport_errors += 1
        else:
            self.statuses[status] += 1

    def merge(self, other: LoadReport) -> None:
        self.sent += other.sent
        self.statuses.update(other.statuses)
        self.kinds.update(other.kinds)
        self.transport_errors += other.transport_errors
        self.seconds += other.seconds


@dataclass
class LoadMix:
    """Bounded load: `workers` threads for at most `duration_s` seconds and `max_requests` requests."""

    duration_s: float = 20.0
    max_requests: int = 1500
    # threads sending verl-style single queries
    single_workers: int = 3
    # threads sending Search-R1-style batches of `batch_queries` queries (these fill the queue)
    batch_workers: int = 1
    batch_queries: int = 32
    # every n-th request of a single-query thread is a deliberate client error (rotating kinds)
    bad_every: int = 10
    max_topk: int = 20
    max_queries: int = 64
    # concurrent requests of `burst_queries` sent at once by the probes: more than the queue holds
    burst: int = 5
    burst_queries: int = 48
    timeout_s: float = 30.0


def run_probes(base_url: str, mix: LoadMix, *, seed: int = 0) -> LoadReport:
    """Deterministic cases that must show up on the dashboard whatever the machine's speed:
    one of each client error, and a burst of concurrent batches larger than the queue (refusals)."""
    rng = random.Random(seed)
    queries = load_queries()
    report = LoadReport()
    with httpx.Client(base_url=base_url, timeout=mix.timeout_s) as client:
        for kind in ("bad_topk", "bad_too_many", "bad_invalid"):
            label, kwargs = _bad_request(kind, rng, queries, mix)
            report.add(label, client.post("/retrieve", **kwargs).status_code)
    barrier = threading.Barrier(mix.burst)
    lock = threading.Lock()

    def burst(i: int) -> None:
        body = {"queries": [rng.choice(queries) for _ in range(mix.burst_queries)], "topk": 3}
        with httpx.Client(base_url=base_url, timeout=mix.timeout_s) as client:
            barrier.wait(timeout=30)
            try:
                status: int | None = client.post("/retrieve", json=body).status_code
            except httpx.HTTPError:
                status = None
        with lock:
            report.add("burst", status)

    threads = [threading.Thread(target=burst, args=(i,), daemon=True) for i in range(mix.burst)]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=mix.timeout_s + 35)
    return report


def run_load(base_url: str, mix: LoadMix, *, seed: int = 0) -> LoadReport:
    """Probes, mixed traffic bounded by `mix.duration_s` and `mix.max_requests`, probes again.

    Probes run twice because a labelled counter appears only at its first increment, and rate()
    cannot see the increment that created a series: the second round is what rates show.
    """
    t0 = time.monotonic()
    report = run_probes(base_url, mix, seed=seed)
    queries = load_queries()
    lock = threading.Lock()
    budget = [mix.max_requests]
    deadline = time.monotonic() + mix.duration_s

    def take() -> bool:
        with lock:
            if budget[0] <= 0 or time.monotonic() >= deadline:
                return False
            budget[0] -= 1
            return True

    def worker(kind: str, wid: int) -> None:
        rng = random.Random(seed * 1000 + wid)
        local = LoadReport()
        n = 0
        with httpx.Client(base_url=base_url, timeout=mix.timeout_s) as client:
            while take():
                n += 1
                label, kwargs = _request(kind, n, rng, queries, mix)
                try:
                    status: int | None = client.post("/retrieve", **kwargs).status_code
                except httpx.HTTPError:
                    status = None
                local.add(label, status)
                if status in (429, 503):
                    time.sleep(0.05)  # a client that honours back-off, briefly
        with lock:
            report.merge(local)

    threads = [threading.Thread(target=worker, args=("single", i), daemon=True) for i in range(mix.single_workers)] + [
        threading.Thread(target=worker, args=("batch", 100 + i), daemon=True) for i in range(mix.batch_workers)
    ]
    for th in threads:
        th.start()
    for th in threads:
        th.join(timeout=mix.duration_s + mix.timeout_s + 10)
    time.sleep(1.5)  # at least one scrape between the two probe rounds
    report.merge(run_probes(base_url, mix, seed=seed + 1))
    report.seconds = time.monotonic() - t0
    return report


def _bad_request(kind: str, rng: random.Random, queries: list[str], mix: LoadMix) -> tuple[str, Json]:
    if kind == "bad_topk":
        return kind, {"json": {"queries": [rng.choice(queries)], "topk": mix.max_topk + 1}}
    if kind == "bad_too_many":
        return kind, {"json": {"queries": [rng.choice(queries) for _ in range(mix.max_queries + 1)], "topk": 3}}
    return "bad_invalid", {"content": b'{"queries": 42}', "headers": {"content-type": "application/json"}}


def _request(kind: str, n: int, rng: random.Random, queries: list[str], mix: LoadMix) -> tuple[str, Json]:
    if kind == "batch":
        qs = [rng.choice(queries) for _ in range(mix.batch_queries)]
        return "batch", {"json": {"queries": qs, "topk": 3, "return_scores": True}}
    if mix.bad_every and n % mix.bad_every == 0:
        bad = ("bad_topk", "bad_too_many", "bad_invalid")[(n // mix.bad_every) % 3]
        return _bad_request(bad, rng, queries, mix)
    return "single", {"json": {"queries": [rng.choice(queries)], "topk": 3, "return_scores": n % 2 == 0}}


def run_k6(base_url: str, prometheus: Prometheus, workdir: Path, *, duration: str = "8s", rate: int = 3) -> str:
    """Run tests/observability/k6_traffic.js against the service, pushing k6's metrics into
    `prometheus` (remote write). Returns k6's output; raises when k6 is missing or hangs."""
    k6 = k6_binary()
    if not k6:
        raise RuntimeError("k6 not found: run `make tools-k6`")
    env = dict(os.environ)
    env.update(
        {
            "BASE_URL": base_url,
            "OBS_K6_DURATION": duration,  # not K6_*: k6 reads those as its own options
            "OBS_K6_RATE": str(rate),
            "K6_NO_USAGE_REPORT": "true",
            "K6_PROMETHEUS_RW_SERVER_URL": f"{prometheus.url}/api/v1/write",
            "K6_PROMETHEUS_RW_PUSH_INTERVAL": "1s",
            "K6_PROMETHEUS_RW_TREND_STATS": K6_TREND_STATS,
        }
    )
    proc = subprocess.run(
        [k6, "run", "--quiet", "--no-color", "--tag", f"testid={TEST_K6_TESTID}", "-o", "experimental-prometheus-rw",
         str(K6_SCRIPT)],
        env=env, cwd=workdir, capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    out = proc.stdout + proc.stderr
    (workdir / "k6.log").write_text(out)
    if proc.returncode not in (0, 99):  # 99: a threshold failed (none are set, but not our concern here)
        raise RuntimeError(f"k6 exited {proc.returncode}:\n{out[-3000:]}")
    return out


# ---------------------------------------------------------------------------------------------- live stack
# Small limits so that a short load produces every rejection reason the dashboard shows.
LIVE_ENV_LIMITS = {
    "RETRIEVER_MAX_TOPK": 20,
    "RETRIEVER_MAX_QUERIES_PER_REQUEST": 64,
    # steady load queues at most 32 + 3 queries per worker; a burst of 48-query requests overfills it
    "RETRIEVER_MAX_QUEUE": 128,
}


@dataclass
class LiveStack:
    service: RetrieverService
    prometheus: Prometheus
    start: float  # unix time Prometheus started scraping
    restart_at: float = 0.0  # unix time the service was stopped for the restart
    end: float = 0.0  # unix time the scenario finished
    loads: list[LoadReport] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    k6_error: str = ""  # why the k6 run did not happen or failed ("" when it ran)

    def query_range(self, expr: str, start: float | None = None, end: float | None = None) -> Json:
        return self.prometheus.query_range(expr, start or self.start, end or self.end, step=1.0)

    @property
    def window(self) -> str:
        """The scenario's length as a PromQL duration (what Grafana's $__range would be)."""
        return f"{int(self.end - self.start) + 1}s"


def live_mix(duration_s: float = 15.0, max_requests: int = 1500) -> LoadMix:
    return LoadMix(
        duration_s=duration_s,
        max_requests=max_requests,
        max_topk=LIVE_ENV_LIMITS["RETRIEVER_MAX_TOPK"],
        max_queries=LIVE_ENV_LIMITS["RETRIEVER_MAX_QUERIES_PER_REQUEST"],
    )


def build_live_stack(
    workdir: Path,
    *,
    workers: int,
    demo_limit: int,
    ready_timeout: float,
    mix: LoadMix | None = None,
    restart: bool = True,
    with_k6: bool = True,
) -> Iterator[LiveStack]:
    """Service up -> Prometheus scraping -> load -> restart (not-ready window) -> load -> settle.

    Yields once everything has happened; stops Prometheus and the service (by PID) afterwards.
    """
    mix = mix or live_mix()
    # Each worker process has its own queue: a burst must overfill one of them however the kernel
    # spreads the connections, so one more request than all the queues can admit together.
    per_worker = LIVE_ENV_LIMITS["RETRIEVER_MAX_QUEUE"] // mix.burst_queries
    mix.burst = workers * per_worker + 1
    env = {k: str(v) for k, v in LIVE_ENV_LIMITS.items()}
    service = RetrieverService(workdir / "service", demo_limit=demo_limit, workers=workers, env=env)
    prometheus = Prometheus(
        workdir / "prometheus", [f"127.0.0.1:{service.port}"], rule_files=[RULES_FILE], scrape_interval="1s"
    )
    timings: dict[str, float] = {}
    try:
        service.start()
        timings["service_first_ready_s"] = round(service.wait_ready(ready_timeout), 1)
        t = time.monotonic()
        prometheus.start()
        stack = LiveStack(service, prometheus, start=time.time())
        prometheus.wait_for('up{job="retriever"} == 1', timeout=30)
        timings["prometheus_first_scrape_s"] = round(time.monotonic() - t, 1)

        t = time.monotonic()
        stack.loads.append(run_load(service.url, mix, seed=1))
        timings["load_1_s"] = round(time.monotonic() - t, 1)

        if restart:
            # Prometheus sees the target go away, come back not ready, then ready.
            t = time.monotonic()
            stack.restart_at = time.time()
            service.stop()
            service.start()
            service.wait_ready(ready_timeout)
            timings["restart_until_ready_s"] = round(time.monotonic() - t, 1)
            t = time.monotonic()
            stack.loads.append(run_load(service.url, mix, seed=2))
            timings["load_2_s"] = round(time.monotonic() - t, 1)
        if with_k6:
            t = time.monotonic()
            try:
                run_k6(service.url, prometheus, workdir)
            except (RuntimeError, subprocess.TimeoutExpired) as exc:
                stack.k6_error = str(exc)
            timings["k6_s"] = round(time.monotonic() - t, 1)
        time.sleep(3)  # two more scrapes and rule evaluations after the last request
        stack.end = time.time()
        stack.timings = timings
        yield stack
    finally:
        prometheus.stop()
        service.stop()
