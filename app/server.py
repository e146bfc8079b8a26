"""Process management: uvicorn with graceful, delayed shutdown; N workers sharing one socket.

Each worker maps the same index files, so the page cache holds one copy for all of them.
Workers are forked from a fork server (multiprocessing "forkserver") that has imported, but not
initialised, the heavy libraries (torch, transformers, FAISS, ...): no torch thread pool, no CUDA
and no model exist before the fork. Every worker then shares those ~300 MB of imported code and
objects copy-on-write instead of importing its own copy, and starts without the import time.
Each worker calls gc.freeze() first, so the garbage collector never writes to (and so never
copies) the inherited objects. The supervisor itself imports none of them.
"""

from __future__ import annotations

import contextlib
import gc
import logging
import multiprocessing
import os
import shutil
import signal
import socket
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING

import uvicorn
from prometheus_client import multiprocess as prom_multiprocess

from app.http_protocol import header_timeout_protocol
from app.settings import Settings
from app.supervisor_state import RESTART_REASONS, SUPERVISOR_PID_ENV, write_restart_counts

if TYPE_CHECKING:
    from uvicorn._types import ASGIApplication

    from app.engine import Engine

log = logging.getLogger("retriever.server")

EXIT_LOAD_FAILED = 3

# Imported once by the fork server and shared by every worker forked from it. Only third-party
# libraries: importing them starts no torch thread pool and touches no GPU. None of our modules
# that create Prometheus values (app.metrics and its importers) may be here: in multiprocess mode
# each value is a file named after the pid that created it, and the fork server's would be merged
# into /metrics (a livemin gauge stuck at 0).
PRELOAD_MODULES = (
    "numpy",
    "faiss",
    "torch",
    "transformers",
    "sentence_transformers",
    "fastapi",
    "pydantic",
    "uvicorn",
)
MODEL_MODULES = ("torch", "transformers", "sentence_transformers")


class RetrieverServer(uvicorn.Server):
    """uvicorn.Server around one engine that drains first: readiness fails at once, admission
    stops after a delay, in-flight requests finish (up to the graceful timeout), then the process
    exits 0. A load that fails for good stops it with EXIT_LOAD_FAILED."""

    def __init__(self, config: uvicorn.Config, engine: Engine, shutdown_delay_s: float) -> None:
        super().__init__(config)
        self.engine = engine
        self.shutdown_delay_s = shutdown_delay_s
        self.exit_code = 0
        self._draining = False
        self.heartbeat_path: str | None = None  # touched every second when a supervisor watches
        engine.on_load_failed(lambda _message: self.request_exit(EXIT_LOAD_FAILED))

    def request_exit(self, code: int) -> None:
        """Stop this worker with an exit code."""
        self.exit_code = code
        self.should_exit = True

    def handle_exit(self, sig: int, frame: FrameType | None) -> None:
        if self._draining:  # a second signal: stop waiting
            self.should_exit = True
            if sig == signal.SIGINT:
                self.force_exit = True
            return
        self._draining = True
        log.info("signal %s: readiness off, draining for %.1fs", signal.Signals(sig).name, self.shutdown_delay_s)
        self.engine.begin_shutdown()
        if self.shutdown_delay_s > 0:
            timer = threading.Timer(self.shutdown_delay_s, self._stop_admitting)
            timer.daemon = True
            timer.start()
        else:
            self._stop_admitting()
        # Not recorded in _captured_signals: uvicorn would re-raise it and exit 143 instead of 0.

    def _stop_admitting(self) -> None:
        self.should_exit = True

    async def on_tick(self, counter: int) -> bool:
        # uvicorn calls this every 0.1 s on the event loop: a beat proves the loop still runs.
        if self.heartbeat_path is not None and counter % 10 == 0:
            with contextlib.suppress(OSError):
                Path(self.heartbeat_path).touch()
        return await super().on_tick(counter)


def _uvicorn_config(settings: Settings, app: ASGIApplication | str = "app.api:create_app") -> uvicorn.Config:
    return uvicorn.Config(
        app,
        factory=isinstance(app, str),
        host=settings.host,
        port=settings.port,
        log_level=settings.log_level.lower(),
        limit_concurrency=settings.limit_concurrency,
        timeout_keep_alive=settings.timeout_keep_alive_s,
        http=header_timeout_protocol(settings.header_read_timeout_s) or "auto",
        timeout_graceful_shutdown=int(settings.graceful_timeout_s) or None,
        access_log=settings.log_level.lower() == "debug",
        limit_max_requests=settings.limit_max_requests,
        # Workers started together would otherwise all recycle at once.
        limit_max_requests_jitter=(settings.limit_max_requests or 0) // 10,
    )


def _run_worker(settings: Settings, sock: socket.socket | None, heartbeat_path: str | None = None) -> int:
    # SIGHUP (reload) stays blocked until the app has installed its handler (app.api's lifespan
    # unblocks it): one sent meanwhile waits, where its default action would end the process.
    signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
    # Imported here, in the worker: the supervisor never imports the app (nor torch, FAISS, metrics).
    from app.api import build_app
    from app.engine import Engine

    engine = Engine(settings)
    server = RetrieverServer(_uvicorn_config(settings, build_app(engine)), engine, settings.shutdown_delay_s)
    server.heartbeat_path = heartbeat_path
    server.run(sockets=[sock] if sock is not None else None)
    if server.exit_code == 0 and not server.started:
        return EXIT_LOAD_FAILED  # could not bind or start up
    return server.exit_code


def _worker_main(settings: Settings, sock: socket.socket, heartbeat_path: str) -> None:
    # Move everything inherited from the fork server to the permanent generation (O(1)): the
    # collector will never scan those objects, so their pages stay shared with the other workers.
    gc.freeze()
    sys.exit(_run_worker(settings, sock, heartbeat_path))


def _worker_context(remote_encoder: bool = False) -> multiprocessing.context.BaseContext:
    """Fork server with the heavy imports preloaded where the platform has one; spawn otherwise."""
    if "forkserver" not in multiprocessing.get_all_start_methods():
        return multiprocessing.get_context("spawn")
    context = multiprocessing.get_context("forkserver")
    # With a remote encoder the model libraries are never used: do not load them into every worker.
    preload = [m for m in PRELOAD_MODULES if not (remote_encoder and m in MODEL_MODULES)]
    context.set_forkserver_preload(preload)
    return context


def _prepare_metrics_dir(in_process: bool) -> str | None:
    """Prometheus multiprocess mode needs a directory shared by the workers, empty at start.

    One worker keeps its metrics in memory: it runs in this process, where prometheus_client was
    already imported (the CLI's preflight) and chose in-memory values, so a directory created now
    would stay empty and /metrics would render nothing. Workers import it afresh after the fork
    (the fork server does not import it), with the directory already in their environment.
    """
    configured = os.environ.get("PROMETHEUS_MULTIPROC_DIR")
    if configured:
        os.makedirs(configured, exist_ok=True)
        for name in os.listdir(configured):
            if name.endswith(".db"):
                os.unlink(os.path.join(configured, name))
        return None
    if in_process:
        return None
    created = tempfile.mkdtemp(prefix="retriever-metrics-")
    os.environ["PROMETHEUS_MULTIPROC_DIR"] = created
    return created


def serve(settings: Settings) -> int:
    # One worker runs in this process, unless it is recycled (then the supervisor replaces it).
    in_process = settings.reload or (settings.workers == 1 and not settings.limit_max_requests)
    created_dir = _prepare_metrics_dir(in_process)
    try:
        if settings.reload:
            uvicorn.run("app.api:create_app", factory=True, host=settings.host, port=settings.port, reload=True)
            return 0
        if in_process:
            return _run_worker(settings, None)
        return _supervise(settings)
    finally:
        if created_dir:
            shutil.rmtree(created_dir, ignore_errors=True)


@dataclass
class Worker:
    process: multiprocessing.process.BaseProcess
    heartbeat: str  # touched by the worker's event loop every second

    def silent_for(self) -> float | None:
        """Seconds since the last heartbeat; None before the first (the worker is still starting)."""
        try:
            return time.time() - os.stat(self.heartbeat).st_mtime
        except OSError:
            return None


def _supervise(settings: Settings) -> int:
    """Spawn N workers on one listening socket; forward SIGTERM; restart a worker that dies."""
    config = _uvicorn_config(settings)
    sock = config.bind_socket()
    context = _worker_context(remote_encoder=bool(settings.encoder_url))
    stopping = threading.Event()
    received: list[int] = []

    def on_signal(sig: int, _frame: FrameType | None) -> None:
        received.append(sig)
        stopping.set()

    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, on_signal)

    workers: list[Worker] = []

    def pass_reload_on(_sig: int, _frame: FrameType | None) -> None:
        for worker in workers:
            if worker.process.is_alive() and worker.process.pid is not None:
                os.kill(worker.process.pid, signal.SIGHUP)

    signal.signal(signal.SIGHUP, pass_reload_on)
    # Before the first spawn: the fork server, started then, hands its environment to every worker.
    os.environ[SUPERVISOR_PID_ENV] = str(os.getpid())

    metrics_dir = os.environ["PROMETHEUS_MULTIPROC_DIR"]
    heartbeat_dir = tempfile.mkdtemp(prefix="retriever-heartbeat-")
    restarts = dict.fromkeys(RESTART_REASONS, 0)
    write_restart_counts(metrics_dir, restarts)
    spawned = 0

    def spawn(replacement: bool = True) -> Worker:
        nonlocal spawned
        spawned += 1
        heartbeat = os.path.join(heartbeat_dir, f"worker-{spawned}")
        # The first workers accept while loading, to answer /health with progress; a replacement
        # loads first, while the others (or the listen backlog) hold its share of the clients.
        worker_settings = settings.model_copy(update={"load_before_serving": True}) if replacement else settings
        process = context.Process(target=_worker_main, args=(worker_settings, sock, heartbeat), name="retriever-worker")
        # Born with SIGHUP blocked (the mask passes through fork, exec and the fork server), so that
        # the reloads this supervisor passes on wait for the worker's handler instead of ending it.
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGHUP})
        try:
            process.start()
        finally:
            signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
        return Worker(process, heartbeat)

    def replace(i: int, reason: str) -> None:
        old = workers[i]
        if old.process.pid is not None:
            # Its live gauges (in-flight, queue depth, memory) must leave the merged view with it.
            prom_multiprocess.mark_process_dead(old.process.pid, metrics_dir)
        with contextlib.suppress(OSError):
            os.unlink(old.heartbeat)
        restarts[reason] += 1
        write_restart_counts(metrics_dir, restarts)
        workers[i] = spawn()

    workers += [spawn(replacement=False) for _ in range(settings.workers)]
    log.info("supervisor %d: %d workers %s", os.getpid(), len(workers), [w.process.pid for w in workers])
    exit_code = 0
    try:
        while not stopping.wait(0.5):
            for i, worker in enumerate(workers):
                if not worker.process.is_alive():
                    if worker.process.exitcode == EXIT_LOAD_FAILED:
                        log.error("worker %d could not load; stopping", worker.process.pid)
                        exit_code = EXIT_LOAD_FAILED
                        stopping.set()
                        break
                    recycled = worker.process.exitcode == 0 and settings.limit_max_requests
                    log.warning("worker %d exited with %s; restarting it", worker.process.pid, worker.process.exitcode)
                    replace(i, "recycled" if recycled else "exited")
                elif (silent_s := worker.silent_for()) is not None and silent_s > settings.heartbeat_timeout_s:
                    log.error(
                        "worker %d sent no heartbeat for %.1f s (hung: stopped, deadlocked or stuck); killing it",
                        worker.process.pid,
                        silent_s,
                    )
                    worker.process.kill()
                    worker.process.join(10)
                    replace(i, "hung")
    finally:
        shutil.rmtree(heartbeat_dir, ignore_errors=True)
    for worker in workers:
        if worker.process.is_alive() and worker.process.pid is not None:
            os.kill(worker.process.pid, signal.SIGTERM)
    deadline = time.monotonic() + settings.shutdown_delay_s + settings.graceful_timeout_s + 10
    for worker in (w.process for w in workers):
        worker.join(max(0.0, deadline - time.monotonic()))
        if worker.is_alive():
            log.error("worker %d did not stop in time; killing it", worker.pid)
            worker.kill()
            worker.join()
        if worker.exitcode not in (0, None) and exit_code == 0:
            exit_code = worker.exitcode if worker.exitcode > 0 else 1
    with contextlib.suppress(OSError):
        sock.close()
    return exit_code
