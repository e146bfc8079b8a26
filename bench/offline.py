"""The offline limit: the server's own encoder and index, in one process, no HTTP, batch sizes 1..512.

`python -m bench.offline --index-dir DIR --json OUT` loads the index exactly as `retriever serve`
does (app.service.load, same settings and environment), then encodes and searches the fixed query
set in consecutive batches of each size, in two thread layouts:
- `threads`: the libraries' own multi-threading (torch and FAISS OpenMP teams over every core);
- `lane`: the batching server's layout (app.batcher.ComputeLane: one single-threaded thread per
  core sharing each batch).
It reports queries/s per size and layout; the best of all (`offline_qps`) is the ceiling the server
is compared with, and the faster lone query of the two layouts (`single_query_ms`) the latency a
lone caller is compared with.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path
from typing import Any

import numpy as np

from bench.common import DATA_DIR, TOPK, bench_queries

BATCH_SIZES = (1, 4, 16, 64, 256, 512)


def _measure(
    retriever: Any,
    queries: list[str],
    batch_size: int,
    min_seconds: float,
    min_batches: int,
    max_seconds: float,
    lane: Any = None,
) -> dict[str, Any]:
    encode_s: list[float] = []
    search_s: list[float] = []
    position = 0
    cpu = time.process_time()
    started = time.perf_counter()
    while True:
        elapsed = time.perf_counter() - started
        if elapsed >= max_seconds or (elapsed >= min_seconds and len(encode_s) >= min_batches):
            break
        batch = [queries[(position + i) % len(queries)] for i in range(batch_size)]
        position += batch_size
        if lane is None:
            encoded, searched = _timed(retriever, batch, None)
        else:
            encoded, searched = lane.executor.submit(_timed, retriever, batch, lane.helpers).result()
        encode_s.append(encoded)
        search_s.append(searched)
    cpu = time.process_time() - cpu
    total = np.add(encode_s, search_s)
    return {
        "layout": "threads" if lane is None else "lane",
        "batch_size": batch_size,
        "batches": len(total),
        "qps": round(batch_size * len(total) / float(total.sum()), 2),
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


def measure_offline(
    index_dir: Path, batch_sizes: tuple[int, ...] = BATCH_SIZES, min_seconds: float = 3.0, max_seconds: float = 20.0
) -> dict[str, Any]:
    from app.batcher import ComputeLane
    from app.service import Status, load
    from app.settings import Settings

    started = time.perf_counter()
    retriever = load(Settings(index_dir=index_dir, data_dir=DATA_DIR), Status())
    load_s = time.perf_counter() - started
    queries = bench_queries()
    retriever.index.touch_pages()  # a warm page cache, as a server that has run for a while has
    retriever.encoder.encode(queries[:8])  # first call initialises thread pools
    rows = []
    lane = ComputeLane()
    try:
        # Library threads first: the lane makes torch single-threaded for the whole process.
        for layout in (None, lane):
            for size in batch_sizes:
                row = _measure(retriever, queries, size, min_seconds, 3 if size < 256 else 2, max_seconds, layout)
                rows.append(row)
                print(
                    f"offline {index_dir.parent.name} {row['layout']:7s}: batch {size:4d}  {row['qps']:8.1f} q/s"
                    f"  batch p50 {row['batch_p50_ms']:8.1f} ms"
                    f"  (encode {row['encode_ms']:.1f} ms, search {row['search_ms']:.1f} ms)",
                    flush=True,
                )
    finally:
        lane.shutdown()
    best = max(rows, key=lambda row: row["qps"])
    singles = [row["batch_p50_ms"] for row in rows if row["batch_size"] == 1]
    return {
        "offline_qps": best["qps"],
        "offline_best_batch": best["batch_size"],
        "offline_best_layout": best["layout"],
        "single_query_ms": min(singles) if singles else None,
        "offline_by_batch": rows,
        "vectors": retriever.index.count,
        "index_type": retriever.index.type_name,
        "load_s": round(load_s, 2),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description="offline limit of one index (no HTTP)")
    parser.add_argument("--index-dir", type=Path, required=True)
    parser.add_argument("--json", type=Path, required=True)
    parser.add_argument("--batch-sizes", default=",".join(map(str, BATCH_SIZES)))
    parser.add_argument("--min-seconds", type=float, default=3.0)
    args = parser.parse_args()
    sizes = tuple(int(size) for size in args.batch_sizes.split(","))
    result = measure_offline(args.index_dir, sizes, args.min_seconds)
    args.json.write_text(json.dumps(result, indent=2) + "\n")


if __name__ == "__main__":
    main()
