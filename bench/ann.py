"""`make bench-ann`: recall@10 against exact search and queries/s for approximate FAISS indexes.

Two sets: the demo corpus (10k Wikipedia leads, real MiniLM vectors, the labelled queries encoded
by the same model) and the synthetic 1M x 384 set of bench/synthetic.py (held-out vectors from the
same distribution as queries). Ground truth is the Flat (exact inner product) top 10. Each index is
built once and cached under .cache/bench/ann/; its runtime knob (HNSW efSearch, IVF nprobe) is then
swept, as `retriever serve --ef-search / --nprobe` would set it. Queries/s are measured as the
server runs them under load: batches of 64 queries, every core. Writes bench/results/ann.{json,md}.
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from bench.common import DATA_DIR, RESULTS, bench_queries, demo_index_dir, machine
from bench.synthetic import synthetic_queries

ANN_CACHE = DATA_DIR / "bench" / "ann"
K = 10
BATCH = 64
EF_SEARCH = (32, 64, 128, 256)
NPROBE = (8, 16, 32, 64, 128)
HNSW_M = 32
PQ_M = 48  # 48 bytes per vector (384 float32 = 1536 bytes): 32x smaller


@dataclass
class Dataset:
    name: str
    vectors: np.ndarray
    queries: np.ndarray
    nlist: int
    note: str


def _flat_vectors(index_path: Path) -> np.ndarray:
    index = faiss.read_index(str(index_path))
    flat = faiss.downcast_index(index)
    return faiss.rev_swig_ptr(flat.get_xb(), flat.ntotal * flat.d).reshape(flat.ntotal, flat.d).copy()


def demo_dataset(count: int) -> Dataset:
    from app.encoder import BUNDLED_MODEL, EncoderConfig, SentenceTransformerEncoder, resolve_model

    vectors = _flat_vectors(demo_index_dir() / "index.faiss")
    encoder = SentenceTransformerEncoder(EncoderConfig(model=resolve_model(BUNDLED_MODEL)))
    queries = encoder.encode(bench_queries(count))
    return Dataset(
        "demo",
        vectors,
        queries,
        nlist=128,
        note=f"{len(vectors):,} Wikipedia leads encoded by all-MiniLM-L6-v2; {len(queries)} labelled queries",
    )


def synthetic_dataset(count: int) -> Dataset:
    from bench.synthetic import ensure_flat_index

    vectors = _flat_vectors(ensure_flat_index() / "index.faiss")
    return Dataset(
        "synthetic-1m",
        vectors,
        synthetic_queries(count),
        nlist=1024,
        note=f"{len(vectors):,} x 384 synthetic unit vectors (4096 Gaussian clusters); "
        f"{count} held-out vectors of the same distribution as queries",
    )


def _timed_search(index: faiss.Index, queries: np.ndarray, min_seconds: float) -> tuple[np.ndarray, float]:
    """Top-K ids of every query, and queries/s over repeated passes in batches of BATCH."""
    ids = np.empty((len(queries), K), dtype=np.int64)
    done, started = 0, time.perf_counter()
    while True:
        for start in range(0, len(queries), BATCH):
            _, ids[start : start + BATCH] = index.search(queries[start : start + BATCH], K)
        done += len(queries)
        elapsed = time.perf_counter() - started
        if elapsed >= min_seconds:
            return ids, done / elapsed


def _recall(found: np.ndarray, truth: np.ndarray) -> float:
    return float(np.mean([len(set(f) & set(t)) / K for f, t in zip(found.tolist(), truth.tolist(), strict=True)]))


def _build(dataset: Dataset, factory: str) -> tuple[faiss.Index, float, int]:
    path = ANN_CACHE / dataset.name / (factory.replace(",", "_") + ".faiss")
    if path.is_file():
        index = faiss.read_index(str(path))
        meta = json.loads(path.with_suffix(".json").read_text())
        return index, meta["build_s"], path.stat().st_size
    print(f"ann {dataset.name}: building {factory} ...", flush=True)
    started = time.perf_counter()
    index = faiss.index_factory(dataset.vectors.shape[1], factory, faiss.METRIC_INNER_PRODUCT)
    if not index.is_trained:
        # 64 points per IVF list, and at least 39 x 256 for the PQ codebooks (FAISS's own minimums).
        size = min(len(dataset.vectors), max(64 * dataset.nlist, 16_384))
        sample = dataset.vectors[np.random.default_rng(0).permutation(len(dataset.vectors))[:size]]
        index.train(sample)
    for start in range(0, len(dataset.vectors), 100_000):
        index.add(dataset.vectors[start : start + 100_000])
    build_s = time.perf_counter() - started
    path.parent.mkdir(parents=True, exist_ok=True)
    faiss.write_index(index, str(path))
    path.with_suffix(".json").write_text(json.dumps({"build_s": build_s}))
    return index, build_s, path.stat().st_size


def run_dataset(dataset: Dataset, min_seconds: float) -> dict[str, Any]:
    faiss.cvar.distance_compute_blas_threshold = 1  # as app.index sets it
    flat = faiss.IndexFlatIP(dataset.vectors.shape[1])
    flat.add(dataset.vectors)
    truth, flat_qps = _timed_search(flat, dataset.queries, min_seconds)
    rows: list[dict[str, Any]] = [
        {
            "index": "Flat",
            "param": "",
            "recall_at_10": 1.0,
            "qps": round(flat_qps, 1),
            "bytes": dataset.vectors.nbytes,
            "build_s": 0.0,
        }
    ]
    print(f"ann {dataset.name}: Flat {flat_qps:.1f} q/s", flush=True)
    del flat
    configs: list[tuple[str, str, tuple[int, ...]]] = [
        (f"HNSW{HNSW_M}", "efSearch", EF_SEARCH),
        (f"IVF{dataset.nlist},Flat", "nprobe", NPROBE),
        (f"IVF{dataset.nlist},PQ{PQ_M}", "nprobe", NPROBE),
        ("SQ8", "", (0,)),
    ]
    for factory, knob, values in configs:
        index, build_s, size = _build(dataset, factory)
        for value in values:
            if knob == "efSearch":
                faiss.downcast_index(index).hnsw.efSearch = value
            elif knob == "nprobe":
                faiss.extract_index_ivf(index).nprobe = value
            ids, qps = _timed_search(index, dataset.queries, min_seconds)
            row = {
                "index": factory,
                "param": f"{knob} {value}" if knob else "",
                "recall_at_10": round(_recall(ids, truth), 4),
                "qps": round(qps, 1),
                "bytes": size,
                "build_s": round(build_s, 1),
            }
            rows.append(row)
            print(f"ann {dataset.name}: {factory} {row['param']}: recall@10 {row['recall_at_10']:.3f}, {qps:.1f} q/s")
        del index
    return {"note": dataset.note, "vectors": len(dataset.vectors), "queries": len(dataset.queries), "rows": rows}


def recommend(rows: list[dict[str, Any]], floor: float) -> dict[str, Any] | None:
    """The fastest setting with recall@10 at or above `floor`."""
    good = [row for row in rows if row["recall_at_10"] >= floor]
    return max(good, key=lambda row: row["qps"]) if good else None


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [
        "# Approximate indexes: recall@10 against Flat, and queries/s (`make bench-ann`)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, faiss {m['faiss']}; load average {m['loadavg_start'][0]:.1f} "
        "at the start (a shared machine: queries/s are noisy, recall is not). Queries/s: batches of "
        f"{BATCH} queries, all cores, top {K}. Recall@10: share of the exact top 10 (Flat) found.",
    ]
    for name, data in results["datasets"].items():
        out += [
            "",
            f"## {name}: {data['note']}",
            "",
            "| index | runtime knob | recall@10 | queries/s | x Flat | size MB | build s |",
            "|---|---|---:|---:|---:|---:|---:|",
        ]
        flat_qps = data["rows"][0]["qps"]
        for row in data["rows"]:
            out.append(
                f"| {row['index']} | {row['param'] or '–'} | {row['recall_at_10']:.3f} | {row['qps']:,.1f} | "
                f"{row['qps'] / flat_qps:.1f} | {row['bytes'] / 2**20:,.0f} | {row['build_s']:g} |"
            )
        for floor in (0.95, 0.99):
            best = recommend(data["rows"], floor)
            if best:
                out.append(
                    f"\nFastest with recall@10 >= {floor}: **{best['index']} {best['param']}** "
                    f"({best['recall_at_10']:.3f}, {best['qps']:,.1f} q/s, {best['qps'] / flat_qps:.1f}x Flat)."
                )
    return "\n".join(out) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description="ANN recall/throughput table")
    parser.add_argument("--datasets", default="demo,synthetic-1m")
    parser.add_argument("--queries", type=int, default=1000)
    parser.add_argument("--min-seconds", type=float, default=1.5)
    parser.add_argument("--out", type=Path, default=RESULTS)
    args = parser.parse_args()
    faiss.omp_set_num_threads(len(os.sched_getaffinity(0)))
    started = time.monotonic()
    results: dict[str, Any] = {"machine": machine(), "datasets": {}}
    loaders = {"demo": demo_dataset, "synthetic-1m": synthetic_dataset}
    for name in args.datasets.split(","):
        results["datasets"][name] = run_dataset(loaders[name](args.queries), args.min_seconds)
    results["duration_s"] = round(time.monotonic() - started, 1)
    args.out.mkdir(parents=True, exist_ok=True)
    (args.out / "ann.json").write_text(json.dumps(results, indent=2) + "\n")
    (args.out / "ann.md").write_text(markdown(results))
    print(f"ann: done in {results['duration_s']:.0f}s; wrote {args.out}/ann.json and ann.md")


if __name__ == "__main__":
    main()
