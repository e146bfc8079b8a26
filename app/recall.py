"""Recall of an approximate index against exact search: measured at build (`retriever convert`).

recall@k is the share of the exact top k (inner product / L2 over the source Flat vectors) that the
approximate index returns in its own top k, averaged over a query sample. Each runtime knob setting
(IVF `nprobe`, HNSW `efSearch`) is measured with its queries/s, so that the manifest, `/info` and
the printed table say what each setting costs and what it finds.

Queries come from a user file (one query per line, or jsonl with a `query`/`question`/`text`
field) encoded with the index's own model and query prefix, or a `.npy` file of query vectors
already encoded (n x d float32: queries encoded elsewhere, say by the trainer's own e5). Without
one, the fallback is the titles (first line of `contents`) of a random sample of corpus rows,
encoded the same way: short texts whose nearest passages are real documents, like a trainer's
queries. When the model cannot be loaded either, the last fallback is a sample of the index's own
vectors plus Gaussian noise (renormalised): it needs no model, but it is easier than real queries.
The report names the source.
"""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from app.errors import RetrieverError

log = logging.getLogger(__name__)

RECALL_KS = (1, 3, 10)
NPROBE_SWEEP = (1, 2, 4, 8, 16, 32, 64, 128, 256)
EF_SEARCH_SWEEP = (16, 32, 64, 128, 256)
# Noise of the last-resort queries: a vector plus noise of this norm (before renormalising).
PERTURB_NORM = 0.5
QUERY_FIELDS = ("query", "question", "text", "contents")
# Exact ground truth scans the source in row slices of this many vectors (bounded memory).
EXACT_CHUNK_ROWS = 65_536


class RecallError(RetrieverError):
    """The query sample cannot be read or encoded; the message names the file and the problem."""


@dataclass
class QuerySample:
    vectors: np.ndarray
    source: str  # "file" | "vectors-file" | "corpus-titles" | "perturbed-vectors"
    description: str


def read_query_file(path: Path, limit: int) -> list[str]:
    """Queries from a text file (one per line) or jsonl (a `query`/`question`/`text` field)."""
    if not path.is_file():
        raise RecallError(f"{path}: query file not found")
    queries: list[str] = []
    try:
        with open(path, encoding="utf-8") as handle:
            for number, raw in enumerate(handle, 1):
                line = raw.strip()
                if not line:
                    continue
                if line.startswith("{"):
                    try:
                        row = json.loads(line)
                    except ValueError as exc:
                        raise RecallError(f"{path}:{number}: not valid JSON ({exc})") from None
                    text = next((row[f] for f in QUERY_FIELDS if isinstance(row.get(f), str)), None)
                    if text is None:
                        raise RecallError(f"{path}:{number}: no string field among {', '.join(QUERY_FIELDS)}")
                    line = text
                queries.append(line)
                if len(queries) >= limit:
                    break
    except UnicodeDecodeError as exc:
        raise RecallError(f"{path}: not UTF-8 text ({exc.reason})") from None
    if not queries:
        raise RecallError(f"{path}: no queries in the file")
    return queries


def read_query_vectors(path: Path, limit: int, dimension: int, normalize: bool) -> np.ndarray:
    """Query vectors from a `.npy` file: a 2-d float array whose width is the index's dimension."""
    if not path.is_file():
        raise RecallError(f"{path}: query vector file not found")
    try:
        array = np.load(path, mmap_mode="r", allow_pickle=False)
    except (ValueError, OSError) as exc:
        raise RecallError(f"{path}: not a .npy array ({exc})") from None
    if array.ndim != 2 or array.shape[0] == 0 or not np.issubdtype(array.dtype, np.floating):
        raise RecallError(f"{path}: expected a non-empty 2-d float array of query vectors, got {array.dtype} "
                          f"{array.shape}")  # fmt: skip
    if array.shape[1] != dimension:
        raise RecallError(f"{path}: query vectors have dimension {array.shape[1]}, the index has {dimension}")
    vectors = np.array(array[:limit], dtype=np.float32, order="C")  # a copy: the file is mapped read-only
    if not np.isfinite(vectors).all():
        raise RecallError(f"{path}: query vectors contain NaN or infinity")
    if normalize:
        vectors /= np.maximum(np.linalg.norm(vectors, axis=1, keepdims=True), 1e-12)
    return vectors


def corpus_titles(store: Any, count: int, seed: int = 0) -> list[str]:
    """The first line (the quoted title in FlashRAG rows) of `count` random corpus rows."""
    rng = np.random.default_rng(seed)
    rows = np.sort(rng.choice(store.count, size=min(count, store.count), replace=False))
    titles = []
    for row in rows.tolist():
        contents = str(store.row(row).get("contents", ""))
        title = contents.split("\n", 1)[0].strip().strip('"').strip()
        titles.append(title or contents[:200])
    return titles


def perturbed_vectors(rows: np.ndarray, count: int, normalize: bool, seed: int = 0) -> np.ndarray:
    rng = np.random.default_rng(seed)
    picked = np.sort(rng.choice(len(rows), size=min(count, len(rows)), replace=False))
    base = np.asarray(rows[picked], dtype=np.float32)
    noise = rng.standard_normal(base.shape).astype(np.float32)
    scale = np.linalg.norm(base, axis=1, keepdims=True) * PERTURB_NORM
    noise *= scale / np.maximum(np.linalg.norm(noise, axis=1, keepdims=True), 1e-12)
    queries = base + noise
    if normalize:
        queries /= np.maximum(np.linalg.norm(queries, axis=1, keepdims=True), 1e-12)
    return np.ascontiguousarray(queries, dtype=np.float32)


def exact_topk(
    rows: np.ndarray,
    queries: np.ndarray,
    k: int,
    metric: str,
    on_rows: Callable[[int, int], None] | None = None,
) -> np.ndarray:
    """Exact top-k ids over `rows` (a mapped (n, d) array), scanned slice by slice; `on_rows(lo, hi)`
    after each slice (the caller may release its pages)."""
    faiss_metric = faiss.METRIC_INNER_PRODUCT if metric == "ip" else faiss.METRIC_L2
    n = len(rows)
    k = min(k, n)
    best_scores = np.full((len(queries), 0), 0, dtype=np.float32)
    best_ids = np.full((len(queries), 0), -1, dtype=np.int64)
    for lo in range(0, n, EXACT_CHUNK_ROWS):
        hi = min(lo + EXACT_CHUNK_ROWS, n)
        scores, ids = faiss.knn(queries, np.ascontiguousarray(rows[lo:hi]), min(k, hi - lo), metric=faiss_metric)
        best_scores = np.concatenate([best_scores, scores], axis=1)
        best_ids = np.concatenate([best_ids, ids + lo], axis=1)
        order = np.argsort(-best_scores if metric == "ip" else best_scores, axis=1, kind="stable")[:, :k]
        best_scores = np.take_along_axis(best_scores, order, axis=1)
        best_ids = np.take_along_axis(best_ids, order, axis=1)
        if on_rows is not None:
            on_rows(lo, hi)
    return best_ids


def recall_at(found: np.ndarray, exact: np.ndarray, k: int) -> float:
    """Mean share of the exact top k found in the approximate top k."""
    k = min(k, exact.shape[1], found.shape[1])
    hits = 0
    for mine, truth in zip(found[:, :k].tolist(), exact[:, :k].tolist(), strict=True):
        hits += len(set(mine) & set(truth))
    return hits / (k * len(exact)) if len(exact) else 0.0


def knob_sweep(index: faiss.Index) -> tuple[str | None, list[int]]:
    """The runtime knob of this index type and the settings worth trying."""
    inner = faiss.downcast_index(index)
    ivf = faiss.try_extract_index_ivf(inner)
    if ivf is not None:
        return "nprobe", [n for n in NPROBE_SWEEP if n <= ivf.nlist]
    if hasattr(inner, "hnsw"):
        return "efSearch", list(EF_SEARCH_SWEEP)
    return None, []


def current_knob(index: faiss.Index, knob: str | None) -> int | None:
    inner = faiss.downcast_index(index)
    if knob == "nprobe":
        return int(faiss.extract_index_ivf(inner).nprobe)
    if knob == "efSearch":
        return int(inner.hnsw.efSearch)
    return None


def apply_knob(index: faiss.Index, knob: str | None, value: int | None) -> None:
    inner = faiss.downcast_index(index)
    if knob == "nprobe" and value is not None:
        faiss.extract_index_ivf(inner).nprobe = int(value)
    elif knob == "efSearch" and value is not None:
        inner.hnsw.efSearch = int(value)


def measure(
    index: faiss.Index,
    queries: np.ndarray,
    exact: np.ndarray,
    settings: Sequence[int | None],
    knob: str | None,
    batch: int = 64,
) -> list[dict[str, Any]]:
    """recall@1/3/10 and queries/s (batches of `batch`, every core) for each knob setting."""
    k = min(max(RECALL_KS), exact.shape[1])
    rows = []
    for value in settings:
        apply_knob(index, knob, value)
        index.search(queries[: min(batch, len(queries))], k)  # first touch of pages and buffers
        started = time.perf_counter()
        found = np.concatenate([index.search(queries[i : i + batch], k)[1] for i in range(0, len(queries), batch)])
        seconds = time.perf_counter() - started
        row: dict[str, Any] = {"knob": {knob: value} if knob else {}}
        for recall_k in RECALL_KS:
            row[f"recall@{recall_k}"] = round(recall_at(found, exact, recall_k), 4)
        row["queries_per_s"] = round(len(queries) / max(seconds, 1e-9), 1)
        rows.append(row)
    return rows


def choose(rows: list[dict[str, Any]], target: float) -> dict[str, Any]:
    """The fastest setting whose recall@10 reaches `target`, else the one with the best recall@10."""
    good = [row for row in rows if row["recall@10"] >= target]
    if good:
        return max(good, key=lambda row: row["queries_per_s"])
    return max(rows, key=lambda row: (row["recall@10"], row["queries_per_s"]))


def format_table(rows: list[dict[str, Any]], chosen: dict[str, Any] | None = None) -> str:
    lines = ["setting          recall@1  recall@3  recall@10  queries/s"]
    for row in rows:
        setting = ", ".join(f"{name} {value}" for name, value in row["knob"].items()) or "(no knob)"
        mark = "  <- default" if row is chosen else ""
        lines.append(
            f"{setting:<16} {row['recall@1']:>8.3f}  {row['recall@3']:>8.3f}  {row['recall@10']:>9.3f}"
            f"  {row['queries_per_s']:>9,.0f}{mark}"
        )
    return "\n".join(lines)
