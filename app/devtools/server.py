"""`retriever serve` as a child process on loopback: start, wait until ready (bounded), stop by PID.

Every wait has a deadline, and every failure (the server exited, or was not ready in time) raises
`ServerNotReady` with the tail of the server's log, so a broken start explains itself. The readiness
wait is also usable for something that is not a child process (a container): `wait_until` takes a
liveness check and a log reader.
"""

from __future__ import annotations

import contextlib
import itertools
import os
import re
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from pathlib import Path

import httpx

from app import procstat

REPO = Path(__file__).resolve().parents[2]  # the checkout (the dev harness runs from an editable install)
PYTHON_M_APP = [sys.executable, "-m", "app"]
HOST = "127.0.0.1"
TAIL_LINES = 40


class ServerNotReady(RuntimeError):
    """The server exited or did not become ready in time; the message ends with its log's tail."""


def free_port() -> int:
    """A port that is free on 127.0.0.1 right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((HOST, 0))
        return int(sock.getsockname()[1])


def tail(text: str, lines: int = TAIL_LINES) -> str:
    return "\n".join(text.splitlines()[-lines:])


def file_tail(path: Path, lines: int = TAIL_LINES) -> str:
    try:
        return tail(path.read_text(errors="replace"), lines)
    except OSError:
        return ""


def http_status(url: str, timeout: float = 2.0) -> int | None:
    """The status of GET url, None when nothing answered."""
    try:
        return httpx.get(url, timeout=timeout).status_code
    except httpx.HTTPError:
        return None


def wait_until(
    ready: Callable[[], bool],
    *,
    timeout: float,
    what: str,
    gone: Callable[[], str | None] = lambda: None,
    log: Callable[[], str] = lambda: "",
    interval: float = 0.2,
) -> float:
    """Poll `ready()` until true; seconds it took. `gone()` says why waiting is pointless (the
    process exited), or None. Raises ServerNotReady with `log()`'s text on exit or timeout."""
    started = time.monotonic()
    deadline = started + timeout
    while True:
        reason = gone()
        if reason is not None:
            raise ServerNotReady(f"{what}: {reason} before it was ready\n--- log tail ---\n{log()}")
        if ready():
            return time.monotonic() - started
        if time.monotonic() >= deadline:
            raise ServerNotReady(f"{what}: not ready within {timeout:.0f}s\n--- log tail ---\n{log()}")
        time.sleep(interval)


def wait_http_ok(
    url: str,
    *,
    timeout: float,
    what: str = "server",
    gone: Callable[[], str | None] = lambda: None,
    log: Callable[[], str] = lambda: "",
    interval: float = 0.2,
    on_status: Callable[[int | None], None] = lambda status: None,
) -> list[int]:
    """Poll GET url until 200; every status seen, in order (so callers can check the 503s before it)."""
    seen: list[int] = []

    def ready() -> bool:
        status = http_status(url)
        on_status(status)
        if status is not None:
            seen.append(status)
        return status == 200

    wait_until(ready, timeout=timeout, what=f"{what} ({url})", gone=gone, log=log, interval=interval)
    return seen


READY_RE = re.compile(r"^retriever_ready(?:\{[^}]*\})? ([0-9.eE+-]+)$", re.M)
WORKER_PID_RE = re.compile(r'^retriever_process_start_time_seconds\{[^}]*pid="(\d+)"[^}]*\}', re.M)


def every_worker_ready(url: str, workers: int) -> bool:
    """Whether all `workers` workers are ready, per the merged multiprocess /metrics.

    With N workers on one socket a /health 200 only speaks for the worker that answered. Each worker
    that has started exports its pid, and `retriever_ready` is the minimum over live workers: both
    are needed, since a worker that has not yet set its gauge is not in that minimum.
    """
    try:
        text = httpx.get(f"{url}/metrics", timeout=10).text
    except httpx.HTTPError:
        return False
    ready = READY_RE.search(text)
    return bool(ready and float(ready.group(1)) == 1.0 and len(set(WORKER_PID_RE.findall(text))) >= workers)


class ServerProcess:
    """`retriever serve --host 127.0.0.1 --port P ARGS` as a child process, stopped by its PID.

    The port is chosen once, so a restart (stop, start) comes back where a scraper looks for it.
    `env` is added to this process's environment (without RETRIEVER_* with `clean_env`), less
    PROMETHEUS_MULTIPROC_DIR; HF_HUB_OFFLINE=1 always: no model is downloaded.
    """

    def __init__(
        self,
        args: list[str],
        log_path: Path,
        *,
        env: Mapping[str, str] | None = None,
        clean_env: bool = False,
        executable: list[str] | None = None,
        port: int | None = None,
        append_log: bool = False,
        log_header: bool = False,
        new_session: bool = False,
        cwd: Path = REPO,
    ) -> None:
        self.args = list(args)
        self.log_path = log_path
        self.extra_env = dict(env or {})
        self.clean_env = clean_env
        self.executable = list(executable or PYTHON_M_APP)
        self.port = port or free_port()
        self.url = f"http://{HOST}:{self.port}"
        self.append_log = append_log
        self.log_header = log_header
        self.new_session = new_session
        self.cwd = cwd
        self.process: subprocess.Popen[bytes] | None = None
        self.starts = 0

    @property
    def command(self) -> list[str]:
        return [*self.executable, "serve", "--host", HOST, "--port", str(self.port), *self.args]

    @property
    def pid(self) -> int:
        assert self.process is not None, "not started"
        return self.process.pid

    def environment(self) -> dict[str, str]:
        env = dict(os.environ)
        if self.clean_env:
            env = {k: v for k, v in env.items() if not k.startswith("RETRIEVER_")}
        # The server makes its own multiprocess metrics directory per start when this is unset; one
        # inherited from the caller would mix the metrics of servers started one after another.
        env.pop("PROMETHEUS_MULTIPROC_DIR", None)
        env["HF_HUB_OFFLINE"] = "1"
        return env | self.extra_env

    def start(self) -> ServerProcess:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        self.starts += 1
        mode = "ab" if self.append_log or self.starts > 1 else "wb"
        with open(self.log_path, mode) as log:
            if self.log_header:
                log.write(f"\n===== start {self.starts}: {' '.join(self.command)}\n".encode())
                log.flush()
            self.process = subprocess.Popen(
                self.command,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=self.environment(),
                cwd=self.cwd,
                start_new_session=self.new_session,
            )
        return self

    def exited(self) -> str | None:
        """Why the server is not running ("exited with N"), or None while it runs."""
        if self.process is None:
            return "not started"
        code = self.process.poll()
        return None if code is None else f"exited with {code}"

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""

    def log_tail(self, lines: int = TAIL_LINES) -> str:
        return tail(self.log(), lines)

    def wait_until(self, ready: Callable[[], bool], timeout: float, interval: float = 0.2) -> float:
        """Seconds until `ready()` (e.g. every worker ready); ServerNotReady with the log's tail otherwise."""
        return wait_until(
            ready, timeout=timeout, what=f"server {self.url}", gone=self.exited, log=self.log_tail, interval=interval
        )

    @property
    def workers(self) -> int:
        """`--workers N` from the arguments (1 when absent)."""
        for flag, value in itertools.pairwise(self.args):
            if flag == "--workers":
                return int(value)
        return 1

    def wait_ready(
        self, timeout: float = 180.0, interval: float = 0.2, on_status: Callable[[int | None], None] | None = None
    ) -> list[int]:
        """Poll /health until 200, then, with `--workers N`, until every worker is ready: the first 200
        comes from whichever worker loaded first, and the next connection may find another one still
        loading. Every /health status seen; ServerNotReady (with the log's tail) otherwise."""
        started = time.monotonic()
        statuses = wait_http_ok(
            f"{self.url}/health",
            timeout=timeout,
            gone=self.exited,
            log=self.log_tail,
            interval=interval,
            on_status=on_status or (lambda status: None),
        )
        if self.workers > 1:
            self.wait_until(self.every_worker_ready, max(1.0, timeout - (time.monotonic() - started)), interval)
        return statuses

    def metric(self, name: str) -> float:
        """The sum of every sample of `name` (a bare name, or a name with its labels) on /metrics."""
        text = httpx.get(f"{self.url}/metrics", timeout=10).text
        values = [float(line.split()[-1]) for line in text.splitlines() if line.startswith((name + " ", name + "{"))]
        if not values:
            raise LookupError(f"{name} is not on {self.url}/metrics")
        return sum(values)

    def every_worker_ready(self) -> bool:
        return every_worker_ready(self.url, self.workers)

    def stop(self, timeout: float = 30.0, reap_tree: bool = False) -> int | None:
        """SIGTERM, wait `timeout`, then SIGKILL (its process group when it has its own session).
        Returns the exit code, None when it had to be killed. With `reap_tree`, also waits (10 s) for
        every process it had to be gone, and SIGKILLs (by PID) what outlives that."""
        process = self.process
        if process is None:
            return None
        known = procstat.descendants(process.pid) if reap_tree and process.poll() is None else []
        code: int | None = process.poll()
        if code is None:
            process.send_signal(signal.SIGTERM)
            try:
                code = process.wait(timeout)
            except subprocess.TimeoutExpired:
                self.kill()
                code = None
        if known:
            deadline = time.monotonic() + 10
            for pid in known:
                while procstat.exists(pid) and not procstat.is_zombie(pid) and time.monotonic() < deadline:
                    time.sleep(0.1)
                if procstat.exists(pid) and not procstat.is_zombie(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        return code

    def kill(self) -> None:
        """SIGKILL the server and its descendants (by PID, or its own process group), and reap it."""
        process = self.process
        if process is None or process.poll() is not None:
            return
        if self.new_session:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(process.pid, signal.SIGKILL)  # its own session: only what we started
        else:
            for pid in [*procstat.descendants(process.pid), process.pid]:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        process.wait(10)
