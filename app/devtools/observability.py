"""The dashboards' live scenario, shared by tests/observability and `bench/dashboard_preview.py`.

The real service (app.devtools.server) scraped every second by a real Prometheus
(app.devtools.prometheus) with the labels a ServiceMonitor attaches, under bounded load (count and
time), restarted once (a not-ready window), loaded again, plus a k6 run pushing into Prometheus.
Also what both read of the dashboards: the files, their panels, Grafana's variable substitution.
"""

from __future__ import annotations

import json
import os
import random
import re
import shutil
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

from app.devtools import prometheus
from app.devtools.server import REPO, ServerProcess

DASHBOARD_DIR = REPO / "dashboards"
RULES_FILE = DASHBOARD_DIR / "alerts" / "retriever-rules.yaml"

# What the test Prometheus attaches to every scraped series (a ServiceMonitor attaches the same labels).
TEST_NAMESPACE = "retriever-test"
TEST_POD = "retriever-test-0"
# The `testid` tag of the k6 run the live test pushes (k6.json's variable).
TEST_K6_TESTID = "obs-live"
K6_SCRIPT = REPO / "tests" / "observability" / "k6_traffic.js"
K6_TREND_STATS = "p(50),p(95),p(99),max"

# Queries that read nothing but cluster metrics (kube-state-metrics): in the test Prometheus they can only be checked
# to parse (and to return nothing); every other query must return data. Tests keep these lists exact.
EXTERNAL_ONLY_PANELS: dict[tuple[str, str], str] = {
    ("Memory against request and limit", "C"): "memory request: kube_pod_container_resource_requests (KSM)",
    ("Memory against request and limit", "D"): "memory limit: kube_pod_container_resource_limits (KSM)",
    ("CPU", "B"): "CPU request: kube_pod_container_resource_requests (KSM)",
    ("Restarts", "A"): "kube_pod_container_status_restarts_total (KSM); the Uptime panel shows restarts without it",
}

Json = dict[str, Any]


def k6_binary() -> str | None:
    """k6 from `make tools-k6` (.tools/k6venv), K6_BIN, or PATH."""
    pinned = REPO / ".tools" / "k6venv" / "bin" / "k6"
    return os.environ.get("K6_BIN") or (str(pinned) if pinned.exists() else None) or shutil.which("k6")


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


class Prometheus(prometheus.Prometheus):
    """The test Prometheus: every scraped series carries the labels a ServiceMonitor would attach."""

    def __init__(self, workdir: Path, targets: list[str], **kwargs: Any) -> None:
        kwargs.setdefault("target_labels", {"namespace": TEST_NAMESPACE, "pod": TEST_POD, "container": "retriever"})
        super().__init__(workdir, targets, **kwargs)


class RetrieverService(ServerProcess):
    """The real service (`retriever serve`, the demo corpus) on a loopback port, stopped by PID;
    restarted on the same port (Prometheus keeps scraping it), its log appended per start."""

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
        self.demo_limit = demo_limit
        args = ["--demo-limit", str(demo_limit), "--workers", str(workers), "--log-level", "warning"]
        # Drain like a pod does: on SIGTERM readiness drops at once while the server still answers
        # (scrapes included) for 3 s. Loading got fast enough that the not-ready window at start-up
        # alone can fall between two 1 s scrapes; the drain window is what makes the restart visible.
        service_env = {"RETRIEVER_SHUTDOWN_DELAY_S": "3", **(env or {})}
        super().__init__(
            args,
            workdir / "retriever.log",
            env=service_env,
            executable=[str(Path(sys.executable).parent / "retriever")],
            port=port,
            append_log=True,
            log_header=True,
        )

    def wait_ready(self, timeout: float) -> float:  # type: ignore[override]
        """Seconds until GET /health answered 200."""
        started = time.monotonic()
        super().wait_ready(timeout, interval=0.3)
        return time.monotonic() - started

    def stop(self) -> None:  # type: ignore[override]
        super().stop(timeout=30)

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
    # The burst repeats its queries: joined in flight they would never fill the queue it must overfill.
    "RETRIEVER_DEDUP_QUERIES": "false",
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
    service_env: dict[str, str] | None = None,
) -> Iterator[LiveStack]:
    """Service up -> Prometheus scraping -> load -> restart (not-ready window) -> load -> settle.

    Yields once everything has happened; stops Prometheus and the service (by PID) afterwards.
    """
    mix = mix or live_mix()
    # Each worker process has its own queue: a burst must overfill one of them however the kernel
    # spreads the connections, so one more request than all the queues can admit together.
    per_worker = LIVE_ENV_LIMITS["RETRIEVER_MAX_QUEUE"] // mix.burst_queries
    mix.burst = workers * per_worker + 1
    env = {k: str(v) for k, v in LIVE_ENV_LIMITS.items()} | (service_env or {})
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
