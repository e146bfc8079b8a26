"""`make bench-pipeline`: does encoding batch N+1 while batch N is searched (`--pipeline`) pay here?

The real server on the demo index with the torch backend (the only one with a separate search
stage), the bundled encoder, driven by `retriever load`; pipeline off and on alternate, `--rounds`
times each, so drift on a shared machine hits both alike. Prints each run and the on/off ratio.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

from app.demo import ensure_demo_index
from app.devtools.server import ServerProcess
from app.loadclient import run, run_load
from bench.common import ROOT

# The tests' demo index (first 300 articles): built once, shared with `make test`.
DEMO_ARTICLES = 300


def served_qps(pipeline: bool, concurrency: int, seconds: float, dtype: str) -> dict[str, float]:
    index_dir = ensure_demo_index(ROOT / ".cache", DEMO_ARTICLES, progress=False)
    args = ["--index-dir", str(index_dir), "--index-backend", "torch", "--index-dtype", dtype]
    args += ["--pipeline", str(pipeline).lower()]
    log = ROOT / ".cache" / "bench" / f"pipeline-{pipeline}.log"
    server = ServerProcess(args, log, env={"RETRIEVER_LOG_LEVEL": "warning"}).start()
    try:
        server.wait_ready(timeout=300)
        result = run(run_load(server.url, 10**9, concurrency, duration=seconds, warmup=2.0))
        return {"qps": result.qps_closed or result.qps, "p99_ms": result.p99_ms, "errors": result.errors}
    finally:
        server.stop(timeout=60)


def main() -> int:
    parser = argparse.ArgumentParser(prog="bench.pipeline", description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--concurrency", type=int, default=32)
    parser.add_argument("--seconds", type=float, default=15.0)
    parser.add_argument("--dtype", default="bfloat16")
    args = parser.parse_args()
    runs: dict[bool, list[float]] = {False: [], True: []}
    for round_ in range(args.rounds):
        for pipeline in (False, True):
            started = time.monotonic()
            point = served_qps(pipeline, args.concurrency, args.seconds, args.dtype)
            runs[pipeline].append(point["qps"])
            print(
                f"round {round_ + 1} pipeline={pipeline!s:5}: {point['qps']:8.1f} q/s, p99 {point['p99_ms']:.0f} ms, "
                f"errors {point['errors']:.0f} ({time.monotonic() - started:.0f}s)",
                flush=True,
            )
    off, on = statistics.median(runs[False]), statistics.median(runs[True])
    print(f"pipeline on / off (medians): {on:.1f} / {off:.1f} = {on / off:.3f}x at concurrency {args.concurrency}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
