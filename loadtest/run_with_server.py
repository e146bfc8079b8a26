#!/usr/bin/env python3
"""Start the demo server on a free loopback port, run k6 scripts against it, stop it by PID.

    .venv/bin/python loadtest/run_with_server.py smoke load
    .venv/bin/python loadtest/run_with_server.py --k6-timeout 900 soak

Runs in the project's venv: the server is started by the dev harness (app.devtools.server). Steps:
pick a free port on 127.0.0.1, start `retriever serve --host 127.0.0.1 --port P --demo-limit N`
(its log goes to RESULTS_DIR/server.log), wait for /health 200 (bounded by --health-timeout;
fails at once if the server dies), run each script with BASE_URL set (bounded by --k6-timeout),
sample the server's RSS from /proc (the PID and its children) once a second, then SIGTERM the
server, wait up to --stop-timeout for it to exit (SIGKILL after that, which fails the run).
Exit status: 0 only if every k6 run passed its thresholds and the server exited 0.
A record of the run (per-script exit codes, wall times, RSS start/peak/end) goes to
RESULTS_DIR/runner-<scripts>.json.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import resource
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

from app import procstat
from app.devtools.server import ServerNotReady, ServerProcess

ROOT = Path(__file__).resolve().parent.parent


def log(msg: str) -> None:
    print(f"[loadtest {time.strftime('%H:%M:%S')}] {msg}", flush=True)


def mib(v: int | None) -> str:
    return "-" if v is None else f"{v / 1048576:.1f} MiB"


def rss_bytes(pid: int) -> int | None:
    """RSS of pid plus its descendants (uvicorn workers), None if pid is gone."""
    return procstat.tree_rss(pid) if procstat.exists(pid) else None


class RssSampler(threading.Thread):
    def __init__(self, pid: int, every: float = 1.0) -> None:
        super().__init__(daemon=True)
        self.pid, self.every = pid, every
        self.peak = 0
        self.stop_event = threading.Event()
        self.lock = threading.Lock()

    def run(self) -> None:
        while not self.stop_event.wait(self.every):
            v = rss_bytes(self.pid)
            if v is not None:
                with self.lock:
                    self.peak = max(self.peak, v)

    def take_peak(self) -> int:
        """Peak since the last call (also counts the current value)."""
        now = rss_bytes(self.pid) or 0
        with self.lock:
            peak, self.peak = max(self.peak, now), now
        return peak


def html_report_env(report: Path) -> dict[str, str]:
    """k6's web dashboard, exported as one self-contained HTML file at the end of the run (it needs no
    network to open). Port -1: no dashboard web server, so k6 exits at the end and parallel runs
    cannot collide on :5665. A 1 s aggregation period, so that even the 5 s smoke run has enough
    samples (with the default 10 s k6 skips the report as "not enough data")."""
    return {
        "K6_WEB_DASHBOARD": "true",
        "K6_WEB_DASHBOARD_PORT": "-1",
        "K6_WEB_DASHBOARD_PERIOD": "1s",
        "K6_WEB_DASHBOARD_EXPORT": str(report),
    }


def answered_queries(summary: Path) -> int | None:
    """queries_answered from a script's handleSummary JSON, if it wrote one this run."""
    try:
        data = json.loads(summary.read_text())
        return int(data["metrics"]["queries_answered"]["values"]["count"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


def duration_s(text: str) -> float:
    """k6 duration ('10m', '1h30m', '90s') -> seconds."""
    parts = re.findall(r"(\d+(?:\.\d+)?)(ms|s|m|h)", text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"bad duration {text!r}")
    return sum(float(n) * {"ms": 0.001, "s": 1, "m": 60, "h": 3600}[u] for n, u in parts)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("scripts", nargs="+", help="loadtest/ scripts: smoke, load, stress, soak, capacity")
    ap.add_argument("--k6", default=str(ROOT / ".tools/k6venv/bin/k6"))
    ap.add_argument("--retriever", default=str(ROOT / ".venv/bin/retriever"))
    ap.add_argument("--demo-limit", type=int, default=300)
    ap.add_argument("--server-arg", action="append", default=[], help="extra `retriever serve` argument")
    ap.add_argument("--health-timeout", type=float, default=300, help="s (first run builds the index)")
    ap.add_argument("--k6-timeout", type=float, default=300, help="s per script; soak: +SOAK_DURATION")
    ap.add_argument("--stop-timeout", type=float, default=45, help="s from SIGTERM to SIGKILL (> 30 s drain)")
    ap.add_argument("--results-dir", default=os.environ.get("RESULTS_DIR", "loadtest/results"))
    ap.add_argument("--k6-arg", action="append", default=[], help="extra `k6 run` argument")
    args = ap.parse_args()

    os.chdir(ROOT)
    results = Path(args.results_dir)
    results.mkdir(parents=True, exist_ok=True)
    for tool in (args.k6, args.retriever):
        if not os.access(tool, os.X_OK):
            log(f"{tool} not found: run `make install tools-k6`")
            return 2
    scripts = []
    for name in args.scripts:
        path = Path("loadtest") / (name if name.endswith(".js") else f"{name}.js")
        if not path.is_file():
            log(f"no such script {path}")
            return 2
        scripts.append(path)

    server_log = results / "server.log"
    server = ServerProcess(
        ["--demo-limit", str(args.demo_limit), *args.server_arg],
        server_log,
        executable=[args.retriever],
        new_session=True,
        cwd=ROOT,
    )
    url = server.url
    cmd = server.command
    log(f"starting {' '.join(cmd)} (log: {server_log})")
    t_start = time.monotonic()
    record: dict = {"base_url": url, "command": cmd, "scripts": []}
    failed = False

    # SIGTERM/SIGINT to us -> finally-block cleanup of the server.
    def on_signal(signum, _frame):
        raise KeyboardInterrupt(f"signal {signum}")

    signal.signal(signal.SIGTERM, on_signal)
    proc = server.start().process
    assert proc is not None
    sampler = RssSampler(proc.pid)
    try:
        log(f"server PID {proc.pid} on {url}")
        last: list[int | None] = [-1]

        def on_status(status: int | None) -> None:
            if status != last[0] and status != 200:
                shown = status if status is not None else "no answer"
                log(f"/health -> {shown}; waiting (up to {args.health_timeout:.0f}s)")
            last[0] = status

        try:
            server.wait_ready(args.health_timeout, interval=0.5, on_status=on_status)
        except ServerNotReady as exc:
            log(str(exc))
            return 1
        record["ready_s"] = round(time.monotonic() - t_start, 1)
        record["rss_ready_bytes"] = rss_bytes(proc.pid)
        record["loadavg_start"] = os.getloadavg()[0]
        log(
            f"ready after {record['ready_s']}s, server RSS {mib(record['rss_ready_bytes'])}; "
            f"machine load average {record['loadavg_start']:.1f} on {os.cpu_count()} CPUs"
        )
        sampler.start()
        sampler.take_peak()

        # --address "": no k6 REST API on :6565, so parallel k6 runs cannot collide
        k6_env = dict(os.environ, HF_HUB_OFFLINE="1", BASE_URL=url, RESULTS_DIR=str(results), K6_NO_USAGE_REPORT="true")
        for path in scripts:
            report = results / f"{path.stem}-report.html"
            report.unlink(missing_ok=True)
            limit = args.k6_timeout
            if path.stem == "soak":
                limit = max(limit, duration_s(os.environ.get("SOAK_DURATION", "10m")) + 180)
            (results / f"{path.stem}.json").unlink(missing_ok=True)
            before = rss_bytes(proc.pid)
            cpu0, k6cpu0 = procstat.tree_cpu_seconds(proc.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
            log(f"k6 run {path}")
            t0 = time.monotonic()
            try:
                rc = subprocess.run(
                    [args.k6, "run", "--quiet", "--no-color", "--address", "", *args.k6_arg, str(path)],
                    env=k6_env | html_report_env(report),
                    timeout=limit,
                ).returncode
            except subprocess.TimeoutExpired:
                log(f"{path} ran past {limit:.0f}s: killed")
                rc = 124
            wall = time.monotonic() - t0
            after, peak = rss_bytes(proc.pid), sampler.take_peak()
            cpu1, k6cpu1 = procstat.tree_cpu_seconds(proc.pid), resource.getrusage(resource.RUSAGE_CHILDREN)
            server_cpu = None if cpu0 is None or cpu1 is None else cpu1 - cpu0
            k6_cpu = (k6cpu1.ru_utime + k6cpu1.ru_stime) - (k6cpu0.ru_utime + k6cpu0.ru_stime)
            answered = answered_queries(results / f"{path.stem}.json")
            alive = proc.poll() is None
            entry = {
                "script": str(path),
                "rc": rc,
                "wall_s": round(wall, 1),
                "rss_start_bytes": before,
                "rss_peak_bytes": peak,
                "rss_end_bytes": after,
                "server_alive": alive,
                "server_cpu_s": None if server_cpu is None else round(server_cpu, 2),
                "k6_cpu_s": round(k6_cpu, 2),
                "queries_answered": answered,
                "loadavg_end": os.getloadavg()[0],
            }
            record["scripts"].append(entry)
            verdict = {0: "passed", 99: "thresholds crossed"}.get(rc, f"failed (k6 exit {rc})")
            log(
                f"{path.name} {verdict} in {wall:.1f}s; server RSS start {mib(before)}, "
                f"peak {mib(peak)}, end {mib(after)}; load average {entry['loadavg_end']:.1f}"
            )
            if answered and server_cpu is not None:
                # CPU cost per query does not depend on what else the machine runs: a capacity
                # estimate for a quiet machine is cores / (server + k6 CPU per query).
                per_q = (server_cpu + k6_cpu) / answered
                log(
                    f"{answered} queries answered; CPU per query: server {1000 * server_cpu / answered:.2f} ms, "
                    f"k6 {1000 * k6_cpu / answered:.2f} ms -> at most {os.cpu_count() / per_q:.0f} queries/s "
                    f"on {os.cpu_count()} idle cores"
                )
            entry["html_report"] = str(report) if report.is_file() else None
            if report.is_file():
                log(f"HTML report: {report}")
            else:
                log(f"k6 wrote no HTML report {report}")
                failed = True
            failed |= rc != 0
            if not alive:
                log(f"server died during {path.name} (exit {proc.returncode})")
                failed = True
                break
    except KeyboardInterrupt as e:
        log(f"interrupted ({e}): stopping the server")
        failed = True
    finally:
        sampler.stop_event.set()
        t0 = time.monotonic()
        code = server.stop(args.stop_timeout)
        if code is None:
            log(f"server {proc.pid} still running {args.stop_timeout:.0f}s after SIGTERM: killed")
        record["server_exit"] = code
        record["stop_s"] = round(time.monotonic() - t0, 1)
        record["total_s"] = round(time.monotonic() - t_start, 1)
        log(f"server stopped: exit {code} after {record['stop_s']}s; total {record['total_s']}s")
        if code != 0:
            log("the server should exit 0 on SIGTERM within its graceful timeout")
            failed = True
        name = "-".join(p.stem for p in scripts)
        (results / f"runner-{name}.json").write_text(json.dumps(record, indent=1) + "\n")
    log("FAILED" if failed else "all passed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
