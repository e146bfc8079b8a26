"""Shared test helpers: the real server as a subprocess on loopback (app.devtools.server), the CLI."""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from app.devtools.server import PYTHON_M_APP, REPO, ServerProcess, free_port

ROOT = REPO
RETRIEVER = PYTHON_M_APP
DEMO_LIMIT = 300
TEST_ENV = {"HF_HUB_OFFLINE": "1", "RETRIEVER_DATA_DIR": str(ROOT / ".cache")}

RunningServer = ServerProcess
__all__ = ["DEMO_LIMIT", "RETRIEVER", "ROOT", "RunningServer", "free_port", "run_cli", "run_server"]


@contextmanager
def run_server(
    args: list[str], tmp_path: Path, env: dict[str, str] | None = None, wait: bool = True, timeout: float = 180.0
) -> Iterator[ServerProcess]:
    """The server started with `args` (log in tmp_path), ready (every worker) unless `wait=False`;
    stopped by PID."""
    port = free_port()
    server = ServerProcess(args, tmp_path / f"server-{port}.log", env=TEST_ENV | (env or {}), port=port).start()
    try:
        if wait:
            server.wait_ready(timeout, interval=0.05)
        yield server
    finally:
        server.stop(30)


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    full_env = os.environ | TEST_ENV | (env or {})
    return subprocess.run(
        [*RETRIEVER, *args], capture_output=True, text=True, env=full_env, cwd=ROOT, timeout=timeout, check=False
    )
