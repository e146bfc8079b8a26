"""A real Prometheus (the Debian package) on 127.0.0.1 with its own config and TSDB, stopped by PID.

Used by the observability tests and `bench/dashboard_preview.py`; `make tools-observability`
installs the binary (or set PROMETHEUS_BIN / PROMTOOL_BIN).
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import httpx

from app.devtools.server import file_tail, free_port, wait_until

Json = dict[str, Any]


def prometheus_binary() -> str | None:
    return os.environ.get("PROMETHEUS_BIN") or shutil.which("prometheus")


def promtool_binary() -> str | None:
    return os.environ.get("PROMTOOL_BIN") or shutil.which("promtool")


def stop_process(proc: subprocess.Popen[bytes], timeout: float = 20.0) -> None:
    """SIGTERM the process we started (by PID), then SIGKILL if it does not exit."""
    if proc.poll() is not None:
        return
    os.kill(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=timeout)
    except subprocess.TimeoutExpired:
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)


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
        job: str = "retriever",
    ) -> None:
        """`target_labels`: attached to every scraped series by relabeling (what Kubernetes service
        discovery would attach: namespace, pod, container)."""
        binary = prometheus_binary()
        if not binary:
            raise RuntimeError("prometheus is not installed: run `make tools-observability`")
        self.binary = binary
        self.workdir = workdir
        self.targets = targets
        self.rule_files = rule_files or []
        self.scrape_interval = scrape_interval
        self.target_labels = target_labels or {}
        self.job = job
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
                    "job_name": self.job,
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
        config_path.write_text(json.dumps(self.config(), indent=1))  # JSON is YAML: no YAML writer needed
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
        proc = self.proc

        def ready() -> bool:
            try:
                return self.client.get("/-/ready", timeout=2).status_code == 200
            except httpx.TransportError:
                return False

        wait_until(
            ready,
            timeout=timeout,
            what=f"prometheus {self.url}",
            gone=lambda: None if proc.poll() is None else f"exited with {proc.returncode}",
            log=lambda: file_tail(self.log_path),
        )

    def stop(self) -> None:
        if self.proc is not None:
            stop_process(self.proc)
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
