"""Fixtures for the observability suite: tools, the generated Grafana schema, the live stack.

The live stack (real service + real Prometheus + bounded load) is built once per session and shared by
every test in test_live_prometheus.py. Tools come from `make tools-observability`; a missing tool is a
failure with the command to run, never a skip.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import obs_harness as h
import pytest

SCHEMA_TYPES = "node_modules/@grafana/schema/dist/types/raw/dashboard/x/types.gen.d.ts"
GENERATOR = "node_modules/.bin/ts-json-schema-generator"


def _require(tool: str | None, name: str) -> str:
    if not tool:
        pytest.fail(f"{name} not found: run `make tools-observability` (installs prometheus and npm tools)")
    return tool


@pytest.fixture(scope="session")
def promtool() -> str:
    return _require(h.promtool_binary(), "promtool")


@pytest.fixture(scope="session")
def grafana_dashboard_schema(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    """JSON Schema of Grafana's `Dashboard` type, generated now from the pinned @grafana/schema."""
    tool_dir = h.SCHEMA_TOOL_DIR
    generator = tool_dir / GENERATOR
    types = tool_dir / SCHEMA_TYPES
    if not generator.exists() or not types.exists():
        pytest.fail(f"{generator} or {types} missing: run `make tools-observability`")
    out = tmp_path_factory.mktemp("grafana-schema") / "dashboard.schema.json"
    proc = subprocess.run(
        [str(generator), "--path", str(types), "--type", "Dashboard", "--out", str(out)],
        cwd=tool_dir,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert proc.returncode == 0, f"ts-json-schema-generator failed:\n{proc.stdout}\n{proc.stderr}"
    schema: dict[str, Any] = json.loads(out.read_text())
    assert "Dashboard" in schema.get("definitions", {}), "generated schema has no Dashboard definition"
    return schema


# ---------------------------------------------------------------------------------------------- live stack
@dataclass
class LiveStack:
    service: h.RetrieverService
    prometheus: h.Prometheus
    start: float  # unix time Prometheus started scraping
    end: float = 0.0  # unix time the scenario finished
    loads: list[h.LoadReport] = field(default_factory=list)
    timings: dict[str, float] = field(default_factory=dict)
    metrics_text: str = ""

    def query_range(self, expr: str) -> dict[str, Any]:
        return self.prometheus.query_range(expr, self.start, self.end, step=1.0)

    @property
    def window(self) -> str:
        """The scenario's length as a PromQL duration (what Grafana's $__range would be)."""
        return f"{int(self.end - self.start) + 1}s"


def live_mix() -> h.LoadMix:
    return h.LoadMix(
        duration_s=float(os.environ.get("OBS_LOAD_SECONDS", "15")),
        max_requests=int(os.environ.get("OBS_LOAD_MAX_REQUESTS", "1500")),
        max_topk=LIVE_ENV_LIMITS["RETRIEVER_MAX_TOPK"],
        max_queries=LIVE_ENV_LIMITS["RETRIEVER_MAX_QUERIES_PER_REQUEST"],
    )


# Small limits so that a short load produces every rejection reason the dashboard shows.
LIVE_ENV_LIMITS = {
    "RETRIEVER_MAX_TOPK": 20,
    "RETRIEVER_MAX_QUERIES_PER_REQUEST": 64,
    "RETRIEVER_MAX_QUEUE": 96,
}


def build_live_stack(
    workdir: Path, *, workers: int, demo_limit: int, ready_timeout: float
) -> Iterator[LiveStack]:
    """Service up -> Prometheus scraping -> load -> restart (not-ready window) -> load -> settle."""
    env = {k: str(v) for k, v in LIVE_ENV_LIMITS.items()}
    service = h.RetrieverService(workdir / "service", demo_limit=demo_limit, workers=workers, env=env)
    prometheus = h.Prometheus(
        workdir / "prometheus", [f"127.0.0.1:{service.port}"], rule_files=[h.RULES_FILE], scrape_interval="1s"
    )
    timings: dict[str, float] = {}
    try:
        t = time.monotonic()
        service.start()
        timings["service_first_ready_s"] = service.wait_ready(ready_timeout)
        t = time.monotonic()
        prometheus.start()
        stack = LiveStack(service, prometheus, start=time.time())
        prometheus.wait_for('up{job="retriever"} == 1', timeout=30)
        timings["prometheus_ready_s"] = time.monotonic() - t
        stack.metrics_text = service.metrics_text()

        mix = live_mix()
        stack.loads.append(h.run_load(service.url, mix, seed=1))

        # A restart: Prometheus sees the target go away, come back not ready, then ready.
        t = time.monotonic()
        service.stop()
        service.start()
        timings["service_restart_ready_s"] = service.wait_ready(ready_timeout)
        timings["restart_total_s"] = time.monotonic() - t

        stack.loads.append(h.run_load(service.url, mix, seed=2))
        time.sleep(3)  # two more scrapes and rule evaluations after the last request
        stack.end = time.time()
        stack.timings = timings
        yield stack
    finally:
        prometheus.stop()
        service.stop()


@pytest.fixture(scope="session")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveStack]:
    if not h.prometheus_binary():
        pytest.fail("prometheus not found: run `make tools-observability`")
    retriever = Path(sys.executable).parent / "retriever"
    if not retriever.exists():
        pytest.fail(f"{retriever} missing: run `make install`")
    workdir = tmp_path_factory.mktemp("live")
    yield from build_live_stack(
        workdir,
        workers=int(os.environ.get("OBS_WORKERS", "2")),
        demo_limit=int(os.environ.get("OBS_DEMO_LIMIT", "300")),
        ready_timeout=float(os.environ.get("OBS_READY_TIMEOUT", "900")),
    )
