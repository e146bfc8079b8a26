"""`make bench`: offline limit vs the server in batching and per-request mode, on two indexes, in one run.

For each index (the demo: encoder-bound; flat1m: 1M x 384 synthetic Flat, search-bound):
  1. the offline limit (bench/offline.py, in its own process: no HTTP, batch sizes 1..512);
  2. the real server (`python -m app serve`) with `--batching on`, then `--batching off`
     (each request encoded and searched alone in a worker thread: the usual design), each driven
     by app.loadclient (closed model: C callers, keep-alive) at concurrency 1, 8, 64, 256 with 1 and
     16 queries per request; every point is bounded by a measured window plus a grace period.
Writes bench/results/latest.json, latest.md and latest.png (bench/report.py).

The load generator shares the machine with the server (as a sidecar or a trainer on the same node
would); on a 2-core machine its CPU is a visible part of every figure.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import signal
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app import procstat
from app.devtools.server import ServerNotReady, ServerProcess
from app.loadclient import run, run_load
from bench import report
from bench.common import DATA_DIR, RESULTS, ROOT, TOPK, bench_queries, demo_index_dir, machine
from bench.synthetic import ensure_flat_index

CONCURRENCY = (1, 8, 64, 256)
# Time an index needs besides its sweep's load points: offline sweep, server starts, paired rounds.
RESERVE_PER_INDEX_S = 300.0
ROUND_S = 30.0  # one paired round, about
QUERIES_PER_REQUEST = (1, 16)
MODES = ("batching", "per-request")


TARGET_POINTS = {("batching", 64, 1), ("per-request", 64, 1), ("batching", 1, 1)}


@dataclass
class Plan:
    window_s: float  # measured seconds per point (at least)
    warmup_s: float  # unmeasured seconds before the window (at least)
    grace_s: float  # seconds in-flight requests get after the window
    budget_s: float  # no load point starts after this many seconds of the run
    offline_min_s: float
    rounds: int = 3  # paired rounds of the target points (fewer when the budget is short)
    point_cap_s: float = 14.0  # warm-up + window of an ordinary point, at most
    target_cap_s: float = 45.0  # ... of a point a target is read from


@dataclass
class PointTimes:
    warmup_s: float
    window_s: float
    predicted_latency_s: float


def point_times(
    plan: Plan, concurrency: int, qpr: int, last_qps: float | None, target: bool, allowance_s: float
) -> PointTimes | None:
    """Warm-up and window long enough for steady state (a few round trips of every caller).

    A caller waits about C x Q / throughput per request; the warm-up covers one such round, the
    window two. None when that cannot fit the point's cap: the point is past saturation on this
    machine (predicted from the throughput just measured) and is reported without being run.
    """
    latency = concurrency * qpr / last_qps if last_qps else 0.0
    cap = plan.target_cap_s if target else min(plan.point_cap_s, max(allowance_s, 4.0))
    warmup = max(plan.warmup_s, min(latency, cap / 3))
    window = max(min(plan.window_s, cap - warmup), 2 * latency)
    if warmup + window > cap:
        if not target:
            return None
        window = cap - warmup
    return PointTimes(warmup, window, latency)


class Server:
    """`retriever serve` in one mode on a free loopback port (app.devtools.server); stopped by its PID,
    started again on the same port when a point needs it."""

    def __init__(self, index_dir: Path, mode: str, log_path: Path) -> None:
        self.index_dir, self.mode, self.log_path = index_dir, mode, log_path
        args = [
            "--index-dir", str(index_dir), "--log-level", "warning",
            "--batching", "on" if mode == "batching" else "off", "--graceful-timeout-s", "1",
        ]  # fmt: skip
        self.harness = ServerProcess(args, log_path, env={"RETRIEVER_DATA_DIR": str(DATA_DIR)}, append_log=True)
        self.url = self.harness.url
        self.process: subprocess.Popen[bytes] | None = None

    def start(self, timeout: float = 300.0) -> float:
        started = time.perf_counter()
        self.process = self.harness.start().process
        try:
            self.harness.wait_ready(timeout)
        except ServerNotReady:
            self.stop()
            raise
        return time.perf_counter() - started

    def stop(self) -> None:
        if self.process is not None:
            self.process = None
            self.harness.stop(10)

    def cpu_seconds(self) -> float:
        """User + system CPU of the server process (all its threads) so far."""
        if self.process is None:
            return 0.0
        return procstat.cpu_seconds(self.process.pid) or 0.0

    def inflight(self) -> float:
        text = httpx.get(f"{self.url}/metrics", timeout=5).text
        match = re.search(r"^retriever_inflight_requests(?:\{[^}]*\})? ([0-9.e+-]+)$", text, re.M)
        return float(match.group(1)) if match else 0.0

    def wait_idle(self, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                if self.inflight() == 0:
                    return True
            except httpx.HTTPError:
                pass
            time.sleep(0.25)
        return False


class OfflineWorker:
    """bench/offline.py --serve as a child process: the index stays loaded, so the offline limit
    can be re-measured between server runs (stopped by its PID like the servers)."""

    def __init__(self, index_dir: Path) -> None:
        command = [sys.executable, "-m", "bench.offline", "--index-dir", str(index_dir), "--serve"]
        env = os.environ | {"HF_HUB_OFFLINE": "1", "RETRIEVER_DATA_DIR": str(DATA_DIR)}
        self.process = subprocess.Popen(
            command, stdin=subprocess.PIPE, stdout=subprocess.PIPE, cwd=ROOT, env=env, text=True
        )
        self._read()  # {"ready": true} once loaded

    def _read(self) -> dict[str, Any]:
        assert self.process.stdout is not None
        line = self.process.stdout.readline()
        if not line:
            raise RuntimeError(f"offline worker exited with {self.process.wait(10)}")
        return json.loads(line)

    def ask(self, **request: Any) -> dict[str, Any]:
        assert self.process.stdin is not None
        self.process.stdin.write(json.dumps(request) + "\n")
        self.process.stdin.flush()
        return self._read()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(10)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(10)


def load_point(
    server: Server, concurrency: int, qpr: int, queries: list[str], plan: Plan, times: PointTimes
) -> dict[str, Any]:
    server_cpu, client_cpu, wall = server.cpu_seconds(), time.process_time(), time.perf_counter()
    result = run(
        run_load(
            server.url,
            requests=10**9,
            concurrency=concurrency,
            queries_per_request=qpr,
            topk=TOPK,
            timeout=None,
            duration=times.window_s,
            questions=queries,
            warmup=times.warmup_s,
            grace=plan.grace_s,
        )
    )
    server_cpu = server.cpu_seconds() - server_cpu
    client_cpu = time.process_time() - client_cpu
    wall = time.perf_counter() - wall
    saturated = result.unfinished > 0
    return {
        "mode": server.mode,
        "concurrency": concurrency,
        "queries_per_request": qpr,
        # C callers, each sending again on each answer: throughput = C x Q / mean latency (Little's
        # law), steadier than answers counted in a window when they come back a batch at a time.
        # Past saturation (callers still waiting at the end) only the count is meaningful.
        "qps": result.qps if saturated or not result.qps_closed else result.qps_closed,
        "qps_window": result.qps,
        "qps_closed": result.qps_closed,
        "p50_ms": result.p50_ms,
        "p95_ms": result.p95_ms,
        "p99_ms": result.p99_ms,
        "errors": result.errors,
        "requests": result.requests,
        "unfinished": result.unfinished,
        "window_s": result.window_s,
        "statuses": result.statuses,
        # Requests still unanswered a grace period after the window: latency exceeds the window,
        # the point is past saturation for this machine.
        "saturated": saturated,
        # CPU seconds over the whole point (warm-up, window, drain) as cores busy: where the time goes.
        "server_cores": round(server_cpu / wall, 2),
        "client_cores": round(client_cpu / wall, 2),
        "server_cpu_ms_per_query": round(server_cpu * 1000 / (result.qps * wall), 3) if result.qps else None,
    }


def _print_point(name: str, point: dict[str, Any], times: PointTimes) -> None:
    print(
        f"bench {name} {point['mode']:11s} c={point['concurrency']:3d} q={point['queries_per_request']:2d}: "
        f"{point['qps']:8.1f} q/s  p50 {point['p50_ms']:8.1f}  p95 {point['p95_ms']:8.1f}"
        f"  p99 {point['p99_ms']:8.1f} ms"
        f"  errors {point['errors']}  ({times.warmup_s:.0f}+{times.window_s:.0f}s)"
        + ("  SATURATED" if point["saturated"] else ""),
        flush=True,
    )


def sweep(
    name: str, servers: dict[str, Server], plan: Plan, queries: list[str], deadline: float, reserve_s: float
) -> list[dict[str, Any]]:
    """Every load point on both servers; `reserve_s`: time the rest of the run needs after these."""
    runs: list[dict[str, Any]] = []
    points_left = len(MODES) * len(QUERIES_PER_REQUEST) * len(CONCURRENCY)
    for mode in MODES:
        server = servers[mode]
        ready_s = server.start()
        print(f"bench {name} {mode}: server ready in {ready_s:.1f}s", flush=True)
        run(run_load(server.url, requests=64, concurrency=8, timeout=60, questions=queries))  # warm-up
        last_qps: float | None = None
        for qpr in QUERIES_PER_REQUEST:
            for concurrency in CONCURRENCY:
                key = {"mode": mode, "concurrency": concurrency, "queries_per_request": qpr}
                left = deadline - reserve_s - time.monotonic()
                allowance = left / points_left - plan.grace_s - 1.0
                points_left -= 1
                target = (mode, concurrency, qpr) in TARGET_POINTS
                times = point_times(plan, concurrency, qpr, last_qps, target, allowance)
                if left <= 0 and not target:
                    print(f"bench {name} {mode}: time budget spent, c={concurrency} q={qpr} skipped", flush=True)
                    runs.append(key | {"skipped": True, "reason": "time budget"})
                    continue
                if times is None:
                    latency = concurrency * qpr / last_qps if last_qps else 0.0
                    print(
                        f"bench {name} {mode:11s} c={concurrency:3d} q={qpr:2d}: not run, saturated "
                        f"(predicted latency {latency:.0f}s at {last_qps:.1f} q/s)",
                        flush=True,
                    )
                    runs.append(
                        key
                        | {
                            "skipped": True,
                            "saturated": True,
                            "predicted_latency_s": round(latency, 1),
                            "reason": f"past saturation: predicted latency {latency:.0f} s",
                        }
                    )
                    continue
                if server.process is None:
                    server.start()
                point = load_point(server, concurrency, qpr, queries, plan, times)
                runs.append(point)
                if point["qps"] > 0:
                    last_qps = point["qps"]
                _print_point(name, point, times)
                if not server.wait_idle(5.0):  # a backlog would spill into the next point
                    server.stop()
    return runs


def _sweep_latency(runs: list[dict[str, Any]], mode: str, concurrency: int) -> float | None:
    for point in runs:
        if (point["mode"], point["concurrency"], point["queries_per_request"]) == (mode, concurrency, 1):
            return concurrency / point["qps"] if point.get("qps") else None
    return None


def paired_rounds(
    name: str,
    worker: OfflineWorker,
    servers: dict[str, Server],
    entry: dict[str, Any],
    plan: Plan,
    queries: list[str],
    rounds: int,
) -> dict[str, Any]:
    """The target points again, alternating with the offline limit (best batch size and layout of
    the sweep) and a lone offline query, `rounds` times: every ratio is taken between measurements
    made a few seconds apart, so load from other processes that comes and goes hits both sides."""
    batching, per_request = servers["batching"], servers["per-request"]
    for server in (batching, per_request):
        if server.process is None:
            server.start()
    runs = entry["runs"]
    latency_b = _sweep_latency(runs, "batching", 64) or 1.0
    latency_p = _sweep_latency(runs, "per-request", 64)
    with_per_request = latency_p is not None and latency_p <= 3.0  # else too slow to repeat: the sweep's
    # The sweep's two best (layout, batch size): its single best may be a lucky window.
    candidates = sorted(entry["offline_by_batch"], key=lambda row: row["qps"], reverse=True)[:2]
    record: list[dict[str, Any]] = []
    for number in range(rounds):
        measured = [
            worker.ask(cmd="measure", layout=c["layout"], batch_size=c["batch_size"], min_seconds=plan.offline_min_s)
            for c in candidates
        ]
        offline_best = max(measured, key=lambda row: row["qps"])
        at64 = load_point(
            batching, 64, 1, queries, plan, PointTimes(max(1.5, latency_b), max(6.0, 2 * latency_b), latency_b)
        )
        pr64 = None
        if with_per_request:
            assert latency_p is not None
            pr64 = load_point(
                per_request, 64, 1, queries, plan, PointTimes(max(1.5, latency_p), max(6.0, 2 * latency_p), latency_p)
            )
        # The lone query offline just before and just after the server's: a drift of the machine's
        # load between the two measurements cancels out.
        before = worker.ask(cmd="measure", layout=entry["single_query_layout"], batch_size=1, min_seconds=1.5)
        lone = load_point(batching, 1, 1, queries, plan, PointTimes(1.0, 5.0, 0.0))
        after = worker.ask(cmd="measure", layout=entry["single_query_layout"], batch_size=1, min_seconds=1.5)
        lone_offline = {"batch_p50_ms": round((before["batch_p50_ms"] + after["batch_p50_ms"]) / 2, 2)}
        record.append(
            {
                "offline": [{"layout": m["layout"], "batch_size": m["batch_size"], "qps": m["qps"]} for m in measured],
                "offline_qps": offline_best["qps"],
                "batching_c64_qps": at64["qps"],
                "per_request_c64_qps": pr64["qps"] if pr64 else None,
                "offline_single_ms": lone_offline["batch_p50_ms"],
                "batching_c1_p50_ms": lone["p50_ms"],
                "errors": at64["errors"] + lone["errors"] + (pr64["errors"] if pr64 else 0),
            }
        )
        print(
            f"bench {name} round {number + 1}/{rounds}: offline {offline_best['qps']:.1f} q/s, batching c=64 "
            f"{at64['qps']:.1f}"
            + (f", per-request c=64 {pr64['qps']:.1f}" if pr64 else "")
            + f"; lone query offline {lone_offline['batch_p50_ms']:.1f} ms, server c=1 p50 {lone['p50_ms']:.1f} ms",
            flush=True,
        )

    def median(key: str) -> float | None:
        values = [r[key] for r in record if r[key] is not None]
        return round(float(np.median(values)), 2) if values else None

    # Offline limit: the candidate with the best median over the rounds.
    by_candidate = [(float(np.median([r["offline"][i]["qps"] for r in record])), c) for i, c in enumerate(candidates)]
    best_qps, best = max(by_candidate, key=lambda pair: pair[0])
    return {
        "rounds": record,
        "offline_qps": round(best_qps, 2),
        "offline_layout": best["layout"],
        "offline_batch": best["batch_size"],
        "batching_c64_qps": median("batching_c64_qps"),
        "per_request_c64_qps": median("per_request_c64_qps"),
        "offline_single_ms": median("offline_single_ms"),
        "batching_c1_p50_ms": median("batching_c1_p50_ms"),
        "errors": sum(r["errors"] for r in record),
    }


def run_index(
    name: str, index_dir: Path, plan: Plan, queries: list[str], log_path: Path, deadline: float, reserve_s: float
) -> dict[str, Any]:
    worker = OfflineWorker(index_dir)
    servers = {mode: Server(index_dir, mode, log_path) for mode in MODES}
    try:
        entry = worker.ask(cmd="sweep", min_seconds=plan.offline_min_s)
        entry["index_dir"] = str(index_dir.relative_to(ROOT)) if index_dir.is_relative_to(ROOT) else str(index_dir)
        entry["runs"] = sweep(name, servers, plan, queries, deadline, reserve_s + plan.rounds * ROUND_S)
        left = deadline - reserve_s - time.monotonic()
        rounds = max(1, min(plan.rounds, int(left // ROUND_S)))
        paired = paired_rounds(name, worker, servers, entry, plan, queries, rounds)
    finally:
        for server in servers.values():
            server.stop()
        worker.stop()
    entry["paired"] = paired
    # The offline limit: the sweep's best (layout, batch size), median of its paired re-measurements.
    entry["offline_sweep_best_qps"] = entry["offline_qps"]
    entry["offline_qps"] = paired["offline_qps"]
    entry["offline_best_layout"], entry["offline_best_batch"] = paired["offline_layout"], paired["offline_batch"]
    entry["offline_sweep_single_query_ms"] = entry["single_query_ms"]
    entry["single_query_ms"] = paired["offline_single_ms"]
    return entry


def main() -> int:
    parser = argparse.ArgumentParser(description="throughput benchmark: offline limit vs server, both modes")
    parser.add_argument("--window", type=float, default=8.0, help="measured seconds per load point (at least)")
    parser.add_argument("--warmup", type=float, default=1.5, help="unmeasured seconds before each window (at least)")
    parser.add_argument("--grace", type=float, default=2.0, help="seconds in-flight requests get after a window")
    parser.add_argument("--budget", type=float, default=840.0, help="stop starting load points after this")
    parser.add_argument("--offline-min-seconds", type=float, default=3.0)
    parser.add_argument("--rounds", type=int, default=3, help="paired rounds of the target points")
    parser.add_argument("--indexes", default="demo,flat1m")
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    # `timeout` (make bench) sends SIGTERM: unwind, so every `finally` stops its server by PID.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    plan = Plan(args.window, args.warmup, args.grace, args.budget, args.offline_min_seconds, args.rounds)
    started = time.monotonic()
    deadline = started + plan.budget_s
    args.out.mkdir(parents=True, exist_ok=True)
    log_path = args.out / "server.log.tmp"
    log_path.write_bytes(b"")
    queries = bench_queries()
    info = machine()
    dirs = {"demo": demo_index_dir, "flat1m": ensure_flat_index}
    results: dict[str, Any] = {"indexes": {}, "machine": info}
    names = args.indexes.split(",")
    for position, name in enumerate(names):
        index_dir = dirs[name]()
        reserve = RESERVE_PER_INDEX_S * (len(names) - position - 1)
        results["indexes"][name] = run_index(name, index_dir, plan, queries, log_path, deadline, reserve)
    info["loadavg_end"] = list(os.getloadavg())
    results["plan"] = vars(plan) | {"queries": len(queries), "topk": TOPK, "client": "app.loadclient (closed model)"}
    results["duration_s"] = round(time.monotonic() - started, 1)
    results["targets"] = report.targets(results)
    (args.out / "latest.json").write_text(json.dumps(results, indent=2) + "\n")
    report.write(results, args.out)
    print(report.targets_text(results["targets"]))
    print(f"bench: done in {results['duration_s']:.0f}s; wrote {args.out}/latest.json, latest.md, latest.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())
