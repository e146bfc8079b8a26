"""`make bench-memory`: one copy of the index per node, however many workers; ready in seconds.

Builds (or reuses) a synthetic Flat index of >= 2 GiB plus a matching corpus store under
.cache/bench-memory/, then starts the real server (`retriever serve --index-dir ...`) with 1, 2 and
4 workers, memory mapping on and off. For each start it records:
  ready_s            launch -> every worker ready (/metrics: retriever_ready == 1 with N worker pids)
  index_load_s       the slowest worker's /info index.load_seconds
  pss/rss_total      summed over every process of the server (supervisor, resource tracker, workers)
                     from /proc/PID/smaps_rollup, after the same query load
  mapped_pss_total   PSS of the index.faiss + corpus store mappings (/proc/PID/smaps), summed
It writes bench/results/memory.json and memory.md and prints the three checks (mapping PSS per node,
PSS growth per worker, mapped load time) with ratios; the exit status is 1 when a check fails or a
run could not complete.

Everything is bounded: one overall budget (default 280 s, the make target adds a hard timeout),
per-run readiness deadlines, a memory watchdog for the mmap-off copies, and a stop that waits for
every server process to be gone (so the next run's PSS is not shared with a dying one).
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import platform
import signal
import sys
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx

from app import procstat
from app.devtools.server import REPO, ServerNotReady, ServerProcess, every_worker_ready
from app.loadclient import run_load
from bench import memory_index, memory_plot

ROOT = REPO

GIB = 1024**3
MIB = 1024**2
DEFAULT_VECTORS = 1_400_000  # x 384 x 4 bytes = 2.003 GiB of vectors
RETRIEVER = ROOT / ".venv" / "bin" / "retriever"


@dataclass
class Run:
    workers: int
    mmap: bool
    pss_total_bytes: int = 0
    rss_total_bytes: int = 0
    mapped_pss_total_bytes: int = 0
    index_load_s: float = 0.0
    ready_s: float = 0.0
    # -- details (not part of the runs' schema in memory.json, kept for the reader)
    ok: bool = False
    error: str = ""
    first_ready_s: float = 0.0
    index_mapped: bool | None = None
    index_load_s_per_worker: dict[str, float] = field(default_factory=dict)
    load: dict[str, object] = field(default_factory=dict)
    stop_s: float = 0.0
    processes: list[dict[str, object]] = field(default_factory=list)

    def schema(self) -> dict[str, object]:
        keys = ("workers", "mmap", "pss_total_bytes", "rss_total_bytes", "mapped_pss_total_bytes")
        out: dict[str, object] = {k: getattr(self, k) for k in keys}
        out["index_load_s"] = round(self.index_load_s, 4)
        out["ready_s"] = round(self.ready_s, 2)
        return out


_running: list[ServerProcess] = []  # the server being measured, for the signal handler


def _on_terminate(signum: int, _frame: object) -> None:
    """SIGTERM/SIGINT (e.g. make's hard timeout): kill the server under test by PID, then exit."""
    for server in _running:
        server.kill()
    sys.exit(128 + signum)


class Watchdog(threading.Thread):
    """Kills the server tree (by PID) if its total RSS passes a cap: a bound on the mmap-off copies."""

    def __init__(self, server: ServerProcess, cap_bytes: int) -> None:
        super().__init__(daemon=True)
        self.server, self.cap = server, cap_bytes
        self.stop_event = threading.Event()
        self.tripped = 0

    def run(self) -> None:
        while not self.stop_event.wait(0.5):
            rss = procstat.tree_rss(self.server.pid)
            if rss > self.cap:
                self.tripped = rss
                self.server.kill()
                return


def all_ready(url: str, workers: int) -> tuple[bool, bool]:
    """(health 200 from the answering worker, every one of `workers` workers ready per /metrics)."""
    try:
        health = httpx.get(f"{url}/health", timeout=5).status_code == 200
    except httpx.HTTPError:
        return False, False
    if not health or workers == 1:
        return health, health
    return True, every_worker_ready(url, workers)


def worker_pids(tree: procstat.TreeMemory, root: int, workers: int) -> set[int]:
    if workers == 1:
        return {root}
    return {p.pid for p in tree.processes if p.role == "worker"}


def collect_info(url: str, pids: set[int], run: Run, tries: int = 80) -> None:
    """index.load_seconds from every worker's /info (new connection per call, so workers take turns)."""
    seen: dict[int, dict[str, object]] = {}
    for _ in range(tries):
        if pids and pids <= set(seen):
            break
        try:
            response = httpx.get(f"{url}/info", timeout=10)
        except httpx.HTTPError:
            continue
        if response.status_code == 200:
            body = response.json()
            seen[int(body["pid"])] = body["index"]
    if not seen:
        raise RuntimeError("no worker answered /info")
    run.index_load_s_per_worker = {str(pid): float(ix["load_seconds"]) for pid, ix in sorted(seen.items())}
    run.index_load_s = max(run.index_load_s_per_worker.values())
    run.index_mapped = all(bool(ix["mmap"]) for ix in seen.values())


def evict(files: list[Path]) -> None:
    """Drop these files' pages from the page cache (POSIX_FADV_DONTNEED: only pages no process maps)."""
    for path in files:
        fd = os.open(path, os.O_RDONLY)
        try:
            os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
        finally:
            os.close(fd)


def one_run(
    args: argparse.Namespace, index_dir: Path, files: list[Path], workers: int, mmap: bool, deadline: float
) -> Run:
    run = Run(workers=workers, mmap=mmap)
    if args.cold:
        evict(files)
    files_bytes = sum(p.stat().st_size for p in files)
    if not mmap:
        need = workers * (files[0].stat().st_size + GIB) + 2 * GIB
        available = procstat.mem_available()
        if available < need:
            run.error = f"skipped: {workers} copies need ~{need / GIB:.1f} GiB, {available / GIB:.1f} available"
            return run
    cap = workers * (files_bytes + int(1.5 * GIB)) + GIB
    log_path = index_dir.parent / f"server-{workers}w-mmap-{'on' if mmap else 'off'}.log"
    args_ = [
        "--index-dir", str(index_dir), "--workers", str(workers), "--mmap", "on" if mmap else "off",
        "--threads", str(args.threads), "--log-level", args.server_log_level, "--graceful-timeout-s", "10",
    ]  # fmt: skip
    # A clean environment: no RETRIEVER_* from the caller, its own metrics dir, offline model.
    server = ServerProcess(
        args_, log_path, env={"TRANSFORMERS_OFFLINE": "1"}, clean_env=True, executable=[str(RETRIEVER)], cwd=ROOT
    )
    started = time.monotonic()
    server.start()
    url = server.url
    _running.append(server)
    watchdog = Watchdog(server, cap)
    watchdog.start()
    try:
        ready_deadline = min(deadline - 10, started + args.ready_timeout)

        def every_worker_ready() -> bool:
            health, every = all_ready(url, workers)
            if health and not run.first_ready_s:
                run.first_ready_s = round(time.monotonic() - started, 2)
            return every

        server.wait_until(every_worker_ready, timeout=max(0.0, ready_deadline - time.monotonic()), interval=0.25)
        run.ready_s = time.monotonic() - started
        result = asyncio.run(
            run_load(url, args.requests, args.concurrency, queries_per_request=1, topk=3, timeout=120.0)
        )
        run.load = result.summary()
        if result.ok != result.requests:
            raise RuntimeError(f"query load: {result.ok}/{result.requests} answered 200: {result.statuses}")
        time.sleep(1.0)
        tree = procstat.tree_memory(server.pid, files)
        run.processes = tree.as_list()
        run.pss_total_bytes, run.rss_total_bytes = tree.pss_total, tree.rss_total
        run.mapped_pss_total_bytes = tree.mapped_pss_total
        collect_info(url, worker_pids(tree, server.pid, workers), run)
        run.ok = True
    except ServerNotReady as exc:
        print(exc, flush=True)  # with the server log's tail
        run.error = f"{str(exc).splitlines()[0]} (see {log_path})"
    except Exception as exc:
        run.error = str(exc)
    finally:
        watchdog.stop_event.set()
        if watchdog.tripped:
            run.ok = False
            run.error = f"memory watchdog: tree RSS {watchdog.tripped / GIB:.1f} GiB > cap {cap / GIB:.1f} GiB"
        stop_started = time.monotonic()
        # Wait for every server process to be gone, so that the next run's PSS is not shared with a dying one.
        server.stop(timeout=max(5.0, min(30.0, deadline + 10 - time.monotonic())), reap_tree=True)
        run.stop_s = round(time.monotonic() - stop_started, 2)
        _running.remove(server)
    return run


def find(runs: list[Run], workers: int, mmap: bool) -> Run | None:
    return next((r for r in runs if r.workers == workers and r.mmap == mmap and r.ok), None)


def checks(runs: list[Run], files_bytes: int) -> list[dict[str, object]]:
    out: list[dict[str, object]] = []
    on4, on1 = find(runs, 4, True), find(runs, 1, True)
    if on4:
        limit = 1.05 * files_bytes
        out.append(
            {
                "check": "4 workers: index+corpus mapping PSS summed <= 1.05 x files",
                "value": on4.mapped_pss_total_bytes,
                "limit": int(limit),
                "ratio_to_files": round(on4.mapped_pss_total_bytes / files_bytes, 4),
                "pass": on4.mapped_pss_total_bytes <= limit,
            }
        )
    if on4 and on1:
        non_index = on1.pss_total_bytes - on1.mapped_pss_total_bytes
        growth = on4.pss_total_bytes - on1.pss_total_bytes
        out.append(
            {
                "check": "PSS growth 1 -> 4 workers <= 3 x one worker's non-index PSS",
                "value": growth,
                "limit": 3 * non_index,
                "one_worker_non_index_bytes": non_index,
                "growth_in_workers": round(growth / non_index, 3) if non_index else None,
                "pass": growth <= 3 * non_index,
            }
        )
    for workers in sorted({r.workers for r in runs}):
        on, off = find(runs, workers, True), find(runs, workers, False)
        if on and off and off.index_load_s > 0:
            out.append(
                {
                    "check": f"{workers} worker(s): index load with mmap <= 0.1 x without",
                    "value": on.index_load_s,
                    "limit": round(0.1 * off.index_load_s, 4),
                    "ratio": round(on.index_load_s / off.index_load_s, 6),
                    "pass": on.index_load_s <= 0.1 * off.index_load_s,
                }
            )
    return out


def markdown(report: dict[str, object], runs: list[Run], check_rows: list[dict[str, object]]) -> str:
    lines = [
        "# Memory benchmark (`make bench-memory`)",
        "",
        f"Synthetic Flat index: {report['vectors']:,} x {report['dimension']} float32 = "
        f"{report['index_bytes'] / GIB:.2f} GiB; corpus store {report['corpus_bytes'] / MIB:.0f} MiB; "
        f"index + corpus files {report['files_bytes'] / GIB:.2f} GiB.",
        f"Machine: {report['machine']['cpus']} CPUs, {report['machine']['mem_total_gib']} GiB RAM; "
        f"page cache {report['settings']['page_cache']}; `--threads {report['settings']['threads']}`; "
        "query load per run: "
        f"{report['settings']['requests']} requests x 1 query, {report['settings']['concurrency']} concurrent.",
        "",
        "| workers | mmap | PSS total | RSS total | index+corpus PSS | index load | start to ready |",
        "|---:|:---:|---:|---:|---:|---:|---:|",
    ]
    for r in runs:
        if not r.ok:
            lines.append(f"| {r.workers} | {'on' if r.mmap else 'off'} | {r.error} | | | | |")
            continue
        lines.append(
            f"| {r.workers} | {'on' if r.mmap else 'off'} | {r.pss_total_bytes / GIB:.2f} GiB "
            f"| {r.rss_total_bytes / GIB:.2f} GiB | {r.mapped_pss_total_bytes / GIB:.2f} GiB "
            f"| {r.index_load_s:.4f} s | {r.ready_s:.1f} s |"
        )
    lines += ["", "| check | value | limit | result |", "|---|---:|---:|:---:|"]
    for c in check_rows:
        value, limit = c["value"], c["limit"]
        if isinstance(value, int):
            shown = f"{value / GIB:.3f} GiB | {int(limit) / GIB:.3f} GiB"  # type: ignore[arg-type]
        else:
            shown = f"{value} s | {limit} s"
        lines.append(f"| {c['check']} | {shown} | {'pass' if c['pass'] else 'FAIL'} |")
    lines += [
        "",
        "PSS (proportional set size) charges each shared page 1/N to each of the N processes mapping it,",
        "so the PSS total is what the node really holds. RSS counts a shared page in every process.",
        "",
    ]
    return "\n".join(lines)


def print_run(r: Run) -> None:
    if not r.ok:
        print(f"  workers={r.workers} mmap={'on' if r.mmap else 'off'}: {r.error}", flush=True)
        return
    print(
        f"  workers={r.workers} mmap={'on ' if r.mmap else 'off'} ready {r.ready_s:6.1f}s "
        f"(first worker {r.first_ready_s:5.1f}s)  index load {r.index_load_s:8.4f}s  "
        f"PSS {r.pss_total_bytes / GIB:6.2f} GiB  RSS {r.rss_total_bytes / GIB:6.2f} GiB  "
        f"mapped PSS {r.mapped_pss_total_bytes / GIB:5.2f} GiB  processes {len(r.processes)}  "
        f"load {r.load.get('qps')} q/s  stop {r.stop_s}s",
        flush=True,
    )


def plan(args: argparse.Namespace) -> list[tuple[int, bool]]:
    """Every (workers, mmap) pair; those the checks need first, so a tight budget still decides them."""
    pairs = [(int(w), m.strip() == "on") for m in args.mmap.split(",") for w in args.workers.split(",")]
    first = [(1, True), (4, True), (1, False)]
    return [p for p in first if p in pairs] + [p for p in pairs if p not in first]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--dir", type=Path, default=ROOT / ".cache" / "bench-memory" / "index")
    parser.add_argument("--vectors", type=int, default=DEFAULT_VECTORS)
    parser.add_argument("--workers", default="1,2,4")
    parser.add_argument("--mmap", default="on,off")
    parser.add_argument("--threads", type=int, default=1, help="FAISS/torch threads per worker")
    parser.add_argument("--requests", type=int, default=8)
    parser.add_argument("--concurrency", type=int, default=4)
    parser.add_argument("--ready-timeout", type=float, default=150.0)
    parser.add_argument("--server-log-level", default="info")
    parser.add_argument(
        "--cold", action="store_true", help="evict the index files from the page cache before each start"
    )
    parser.add_argument("--budget-s", type=float, default=280.0, help="no run starts or waits past this")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results")
    args = parser.parse_args()
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, _on_terminate)
    began = time.monotonic()
    deadline = began + args.budget_s

    index_dir: Path = args.dir
    if memory_index.reusable(index_dir, args.vectors, seed=0):
        print(f"reusing {index_dir}", flush=True)
    else:
        print(f"building {index_dir}: {args.vectors:,} random unit vectors (Flat) + corpus store", flush=True)
        seconds = memory_index.build(index_dir, args.vectors, seed=0)
        print(f"  built in {seconds:.1f}s", flush=True)
    files = memory_index.data_files(index_dir)
    sizes = [p.stat().st_size for p in files]
    files_bytes = sum(sizes)
    # Same start for every run: the files in the page cache (read once, ~2 GiB), or evicted (--cold).
    for path in files if not args.cold else []:
        with open(path, "rb") as handle:
            while handle.read(64 * MIB):
                pass
    cache = "evicted before each start" if args.cold else "warmed"
    print(f"index {sizes[0] / GIB:.3f} GiB, corpus {sum(sizes[1:]) / MIB:.0f} MiB; page cache {cache}", flush=True)

    runs: list[Run] = []
    for workers, mmap in plan(args):
        # A rough floor for one start on 2 busy cores: imports, model per worker, 2 GiB per unmapped copy.
        needed = 20 + 5 * workers + (0 if mmap else 10 * workers)
        if deadline - time.monotonic() < needed:
            run = Run(workers=workers, mmap=mmap, error=f"skipped: under {needed}s of the time budget left")
        else:
            run = one_run(args, index_dir, files, workers, mmap, deadline)
        runs.append(run)
        print_run(run)
    runs.sort(key=lambda r: (not r.mmap, r.workers))

    check_rows = checks(runs, files_bytes)
    report: dict[str, object] = {
        "index_bytes": sizes[0],
        "runs": [r.schema() for r in runs if r.ok],
        "corpus_bytes": sum(sizes[1:]),
        "files_bytes": files_bytes,
        "vectors": args.vectors,
        "dimension": memory_index.DIMENSION,
        "machine": {
            "cpus": os.cpu_count(),
            "mem_total_gib": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / GIB, 1),
            "python": platform.python_version(),
        },
        "settings": {
            "threads": args.threads,
            "requests": args.requests,
            "concurrency": args.concurrency,
            "page_cache": "cold" if args.cold else "warm",
        },
        "checks": check_rows,
        "details": [asdict(r) for r in runs],
        "elapsed_s": round(time.monotonic() - began, 1),
    }
    args.out.mkdir(parents=True, exist_ok=True)
    stem = "memory-cold" if args.cold else "memory"
    (args.out / f"{stem}.json").write_text(json.dumps(report, indent=2) + "\n")
    (args.out / f"{stem}.md").write_text(markdown(report, runs, check_rows))
    if memory_plot.plot(report, args.out / f"{stem}.png") is None:
        print("no completed run: no memory figure")

    print("checks:")
    for c in check_rows:
        extra = {k: v for k, v in c.items() if k not in ("check", "pass")}
        print(f"  [{'pass' if c['pass'] else 'FAIL'}] {c['check']}: {extra}")
    print(f"wrote {args.out / stem}.json, {stem}.md and {stem}.png in {report['elapsed_s']}s")
    failed = [r for r in runs if not r.ok and not r.error.startswith("skipped")]
    failed_checks = [c for c in check_rows if not c["pass"]]
    wanted = {(1, True), (4, True), (1, False)} <= set(plan(args))
    missing = wanted and len(check_rows) < 3
    if missing:
        print("not every check could be decided (a run needed for it did not complete)")
    return 1 if failed or failed_checks or missing else 0


if __name__ == "__main__":
    sys.exit(main())
