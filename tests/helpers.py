"""Shared test helpers: start the real server as a subprocess on loopback and wait for it."""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
RETRIEVER = [sys.executable, "-m", "app"]
DEMO_LIMIT = 300


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@dataclass
class RunningServer:
    url: str
    process: subprocess.Popen[bytes]
    log_path: Path

    def log(self) -> str:
        return self.log_path.read_text(errors="replace")


def wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float = 180.0) -> list[int]:
    """Poll /health until 200; returns every status seen (so tests can check the 503s before it)."""
    seen: list[int] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if process.poll() is not None:
            raise RuntimeError(f"server exited with {process.returncode} before it was ready")
        try:
            status = httpx.get(f"{url}/health", timeout=2).status_code
            seen.append(status)
            if status == 200:
                return seen
        except httpx.HTTPError:
            pass
        time.sleep(0.05)
    raise TimeoutError(f"{url} not ready within {timeout}s (saw {seen[-5:]})")


@contextmanager
def run_server(
    args: list[str], tmp_path: Path, env: dict[str, str] | None = None, wait: bool = True, timeout: float = 180.0
) -> Iterator[RunningServer]:
    port = free_port()
    log_path = tmp_path / f"server-{port}.log"
    full_env = os.environ | {"HF_HUB_OFFLINE": "1", "RETRIEVER_DATA_DIR": str(ROOT / ".cache")} | (env or {})
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [*RETRIEVER, "serve", "--host", "127.0.0.1", "--port", str(port), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            env=full_env,
            cwd=ROOT,
        )
    server = RunningServer(f"http://127.0.0.1:{port}", process, log_path)
    try:
        if wait:
            try:
                wait_ready(server.url, process, timeout)
            except (RuntimeError, TimeoutError) as exc:
                raise RuntimeError(f"{exc}\n--- server log ---\n{server.log()[-4000:]}") from None
        yield server
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full_env = os.environ | {"HF_HUB_OFFLINE": "1", "RETRIEVER_DATA_DIR": str(ROOT / ".cache")} | (env or {})
    return subprocess.run(
        [*RETRIEVER, *args], capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=timeout, check=False
    )
