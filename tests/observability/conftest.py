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
from collections.abc import Iterator
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


def approximate_demo(workdir: Path, demo_limit: int) -> dict[str, str]:
    """Serve an approximate (IVF-SQ8) index made from the demo Flat index by `retriever convert`, with
    the live recall guard checking every other query against that Flat index (its recorded exact
    reference): the live recall gauges then carry real, moving values. nprobe 1 of 4 lists keeps
    recall visibly below 1; the floor sits under it so the alert stays quiet."""
    from app.convert import ConvertOptions, convert
    from app.demo import ensure_demo_index

    demo = ensure_demo_index(h.REPO / ".cache", demo_limit, progress=False)
    approximate = workdir / "demo-ivf-sq8"
    convert(ConvertOptions(demo, approximate, "IVF,SQ8", measure_recall=False, progress=False))
    return {
        "RETRIEVER_INDEX_DIR": str(approximate),
        "RETRIEVER_NPROBE": "1",
        "RETRIEVER_RECALL_SAMPLE_FRACTION": "0.5",
        "RETRIEVER_RECALL_FLOOR": "0.2",
    }


@pytest.fixture(scope="session")
def live_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[h.LiveStack]:
    if not h.prometheus_binary():
        pytest.fail("prometheus not found: run `make tools-observability`")
    retriever = Path(sys.executable).parent / "retriever"
    if not retriever.exists():
        pytest.fail(f"{retriever} missing: run `make install`")
    workdir = tmp_path_factory.mktemp("live")
    yield from h.build_live_stack(
        workdir,
        service_env=approximate_demo(workdir, int(os.environ.get("OBS_DEMO_LIMIT", "300"))),
        workers=int(os.environ.get("OBS_WORKERS", "2")),
        demo_limit=int(os.environ.get("OBS_DEMO_LIMIT", "300")),
        ready_timeout=float(os.environ.get("OBS_READY_TIMEOUT", "900")),
        mix=h.live_mix(
            duration_s=float(os.environ.get("OBS_LOAD_SECONDS", "15")),
            max_requests=int(os.environ.get("OBS_LOAD_MAX_REQUESTS", "1500")),
        ),
    )
