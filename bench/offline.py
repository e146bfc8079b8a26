"""The offline limit: the server's own encoder and index, in one process, no HTTP, batch sizes 1..512.

Loads the index exactly as `retriever serve` does (an app.engine.Engine from the same settings and
environment), then encodes and searches the fixed query set in consecutive batches of each size, in two layouts:
- `threads`: the libraries' own multi-threading (torch and FAISS OpenMP teams over every core);
- `lane`: the batching server's layout (the engine's own app.lanes.ComputeLane: one
  single-threaded thread per core sharing each batch).
Each (layout, size) is measured in three windows; its queries/s is the median window, robust to
bursts of load from other processes. The sweep's best (layout, size) is the offline limit; the
faster lone query of the two layouts is the latency a lone caller is compared with.

`python -m bench.offline --index-dir DIR --json OUT` runs the sweep; `--serve` keeps the index
loaded and answers JSON-line commands, so bench/run.py can re-measure the limit between server runs.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import sys
import time
from pathlib import Path
from typing import Any, TextIO

import numpy as np

from bench.common import DATA_DIR, TOPK, bench_queries

BATCH_SIZES = (1, 4, 16, 64, 256, 512)


def _measure(
    retriever: Any,
    queries: list[str],
    batch_size: int,
    min_seconds: float,
    max_seconds: float,
    lane: Any = None,
    windows: int = 3,
) -> dict[str, Any]:
    """Consecutive batches in `windows` windows of >= min_seconds / windows (and >= 1 batch) each;
    queries/s is the median window, robust to a burst of load from other processes."""
    encode_s: list[float] = []
    search_s: list[float] = []
    window_qps: list[float] = []
    position = 0
    cpu = time.process_time()
    started = time.perf_counter()
    while len(window_qps) < windows and (not window_qps or time.perf_counter() - started < max_seconds):
        window_start, batches = time.perf_counter(), 0
        while batches == 0 or time.perf_counter() - window_start < min_seconds / windows:
            batch = [queries[(position + i) % len(queries)] for i in range(batch_size)]
            position += batch_size
            if lane is None:
                encoded, searched = _timed(retriever, batch, None)
            else:
                encoded, searched = lane.executor.submit(_timed, retriever, batch, lane.helpers).result()
            encode_s.append(encoded)
            search_s.append(searched)
            batches += 1
        window_qps.append(batch_size * batches / (time.perf_counter() - window_start))
    cpu = time.process_time() - cpu
    total = np.add(encode_s, search_s)
    return {
        "layout": "threads" if lane is None else "lane",
        "batch_size": batch_size,
        "batches": len(total),
        "qps": round(float(np.median(window_qps)), 2),
        "qps_windows": [round(qps, 2) for qps in window_qps],
        "batch_p50_ms": round(float(np.percentile(total, 50)) * 1000, 2),
        "encode_ms": round(float(np.mean(encode_s)) * 1000, 2),
        "search_ms": round(float(np.mean(search_s)) * 1000, 2),
        "cpu_ms_per_query": round(cpu * 1000 / (batch_size * len(total)), 3),
    }


def _timed(retriever: Any, batch: list[str], helpers: Any) -> tuple[float, float]:
    """Encode and search one batch as Retriever.search does; seconds of each stage."""
    t0 = time.perf_counter()
    vectors = retriever.encoder.encode(batch, helpers)
    t1 = time.perf_counter()
    retriever.index.search(vectors, TOPK, helpers)
    return t1 - t0, time.perf_counter() - t1


class OfflineBench:
    """The server's retriever loaded in this process, measured without HTTP."""

    def __init__(self, index_dir: Path) -> None:
        from app.engine import Engine
        from app.lanes import available_cores
        from app.settings import Settings

        started = time.perf_counter()
        self.index_dir = index_dir
        self.engine = Engine(Settings(index_dir=index_dir, data_dir=DATA_DIR))
        self.loop = asyncio.new_event_loop()
        self.loop.run_until_complete(self._start())
        self.retriever = self.engine.retriever
        self.lane = self.engine.lane
        if self.retriever is None or self.lane is None:
            raise RuntimeError("the engine serves without a batching lane: unset RETRIEVER_BATCHING")
        self.load_s = time.perf_counter() - started
        self.queries = bench_queries()
        self.retriever.index.touch_pages()  # a warm page cache, as a server that has run for a while has
        self.retriever.encoder.encode(self.queries[:8])  # first call initialises thread pools
        self.cores = available_cores()

    async def _start(self) -> None:
        await self.engine.start()
        await self.engine.wait_ready()

    def close(self) -> None:
        self.loop.run_until_complete(self.engine.stop())
        self.loop.close()

    def measure(self, layout: str, batch_size: int, min_seconds: float, max_seconds: float = 25.0) -> dict[str, Any]:
        import torch

        # torch's thread count is process-wide: the lane wants 1 per thread, the library layout all cores.
        torch.set_num_threads(1 if layout == "lane" else self.cores)
        lane = self.lane if layout == "lane" else None
        return _measure(self.retriever, self.queries, batch_size, min_seconds, max_seconds, lane)

    def sweep(
        self, batch_sizes: tuple[int, ...] = BATCH_SIZES, min_seconds: float = 3.0, progress: TextIO = sys.stdout
    ) -> dict[str, Any]:
        rows = []
        for layout in ("threads", "lane"):
            for size in batch_sizes:
                row = self.measure(layout, size, min_seconds)
                rows.append(row)
                print(
                    f"offline {self.index_dir.parent.name} {row['layout']:7s}: batch {size:4d}  {row['qps']:8.1f} q/s"
                    f"  batch p50 {row['batch_p50_ms']:8.1f} ms"
                    f"  (encode {row['encode_ms']:.1f} ms, search {row['search_ms']:.1f} ms)",
                    file=progress,
                    flush=True,
                )
        best = max(rows, key=lambda row: row["qps"])
        singles = [row for row in rows if row["batch_size"] == 1]
        single = min(singles, key=lambda row: row["batch_p50_ms"]) if singles else None
        return {
            "offline_qps": best["qps"],
            "offline_best_batch": best["batch_size"],
            "offline_best_layout": best["layout"],
            "single_query_ms": single["batch_p50_ms"] if single else None,
            "single_query_layout": single["layout"] if single else None,
            "offline_by_batch": rows,
            "vectors": self.retriever.index.count,
            "index_type": self.retriever.index.type_name,
            "load_s": round(self.load_s, 2),
        }


def serve(bench: OfflineBench) -> None:
    """JSON lines on stdin -> one JSON line each on stdout, so bench/run.py can interleave offline
    windows with the server's: {"cmd": "sweep", "min_seconds": 3} or
    {"cmd": "measure", "layout": "lane", "batch_size": 64, "min_seconds": 3}."""
    print(json.dumps({"ready": True}), flush=True)
    for line in sys.stdin:
        request = json.loads(line)
        if request["cmd"] == "sweep":
            sizes = tuple(request.get("batch_sizes", BATCH_SIZES))
            answer = bench.sweep(sizes, request.get("min_seconds", 3.0), progress=sys.stderr)
        elif request["cmd"] == "measure":
            answer = bench.measure(request["layout"], request["batch_size"], request.get("min_seconds", 3.0))
        else:
            break
        print(json.dumps(answer), flush=True)
    bench.close()


def main() -> None:
    parser = argparse.ArgumentParser(description="offline limit of one index (no HTTP)")
    parser.add_argument("--index-dir", type=Path, required=True)
    parser.add_argument("--json", type=Path, help="run the sweep and write it here")
    parser.add_argument("--serve", action="store_true", help="answer JSON-line commands on stdin (bench/run.py)")
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    parser.add_argument("--min-seconds", type=float, default=3.0)
    args = parser.parse_args()
    bench = OfflineBench(args.index_dir)
    if args.serve:
        serve(bench)
        return
    if args.json is None:
        parser.error("pass --json OUT or --serve")
    sizes = tuple(int(size) for size in args.batch_sizes.split(","))
    result = bench.sweep(sizes, args.min_seconds)
    bench.close()
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
