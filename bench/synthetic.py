"""A search-bound index like Search-R1's, scaled down: Flat (exact inner product) over synthetic vectors.

`ensure_flat_index()` writes (once, reused afterwards) an index directory that `retriever serve
--index-dir` accepts: `index.faiss` (IndexFlatIP, N x 384 float32, L2-normalised), a corpus store
with one synthetic passage per vector, and a manifest naming the bundled MiniLM model, so queries
go through the real encoder and then scan the whole index, as on the real 21M x 768 index.

The vectors are a mixture of Gaussian clusters rather than white noise, so that the ANN table
(bench/ann.py) sees some of the structure real embeddings have; a Flat scan costs the same either way.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np

from app.corpus import CorpusWriter
from app.manifest import CORPUS_DIR, INDEX_FILE, MANIFEST_FILE, Manifest
from bench.common import write_synthetic_manifest

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
BENCH_CACHE = ROOT / ".cache" / "bench"
DIMENSION = 384  # all-MiniLM-L6-v2
DEFAULT_COUNT = 1_000_000
CLUSTERS = 4096
SEED = 20240601
CHUNK = 100_000


def _centres(dimension: int, seed: int = SEED) -> np.ndarray:
    rng = np.random.default_rng(seed)
    centres = rng.standard_normal((CLUSTERS, dimension), dtype=np.float32)
    centres /= np.linalg.norm(centres, axis=1, keepdims=True)
    return centres


def synthetic_vectors(
    count: int, dimension: int = DIMENSION, seed: int = SEED, stream: int = 0
) -> Iterator[np.ndarray]:
    """Chunks of unit vectors: a random cluster centre plus noise of about the same norm.

    `stream` selects an independent sequence (0: the indexed vectors, 1: held-out queries)
    drawn around the same centres.
    """
    centres = _centres(dimension, seed)
    rng = np.random.default_rng([seed, stream + 1])
    done = 0
    while done < count:
        size = min(CHUNK, count - done)
        noise = rng.standard_normal((size, dimension), dtype=np.float32)
        noise *= np.float32(1.0 / np.sqrt(dimension))
        noise += centres[rng.integers(0, CLUSTERS, size)]
        noise /= np.linalg.norm(noise, axis=1, keepdims=True)
        yield noise
        done += size


def synthetic_queries(count: int, dimension: int = DIMENSION) -> np.ndarray:
    """Held-out vectors from the same distribution (ANN recall on the synthetic set)."""
    return np.concatenate(list(synthetic_vectors(count, dimension, stream=1)))


def _row(i: int) -> bytes:
    return json.dumps(
        {
            "id": str(i),
            "contents": f'"Synthetic passage {i}"\nSearch-bound benchmark row {i}: a stand-in for a Wikipedia passage.',
        },
        separators=(",", ":"),
    ).encode()


def flat_index_dir(count: int = DEFAULT_COUNT) -> Path:
    name = "flat1m" if count == DEFAULT_COUNT else f"flat{count}"
    return BENCH_CACHE / name / "index"


def ensure_flat_index(count: int = DEFAULT_COUNT, out: Path | None = None) -> Path:
    """Return the synthetic index directory, building it when it is missing or incomplete."""
    out = out or flat_index_dir(count)
    try:
        manifest = Manifest.read(out)
        manifest.check_files(out, checksums=False)
        if manifest.count == count and manifest.dimension == DIMENSION:
            return out
    except Exception:  # missing or stale: rebuild
        pass
    started = time.perf_counter()
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        index = faiss.IndexFlatIP(DIMENSION)
        writer = CorpusWriter(tmp / CORPUS_DIR)
        try:
            for chunk in synthetic_vectors(count):
                first = index.ntotal
                index.add(chunk)
                for i in range(first, index.ntotal):
                    writer.add(_row(i))
                print(f"synthetic: {index.ntotal:,}/{count:,} vectors", flush=True)
        finally:
            writer.close()
        faiss.write_index(index, str(tmp / INDEX_FILE))
        del index
        write_synthetic_manifest(tmp, count, DIMENSION, {"clusters": CLUSTERS, "seed": SEED})
        shutil.rmtree(out, ignore_errors=True)
        out.parent.mkdir(parents=True, exist_ok=True)
        os.rename(tmp, out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    assert (out / MANIFEST_FILE).is_file()
    print(f"synthetic: built {out} ({count:,} x {DIMENSION}) in {time.perf_counter() - started:.0f}s", flush=True)
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description="build the synthetic Flat index used by the benchmarks")
    parser.add_argument("--count", type=int, default=DEFAULT_COUNT)
    parser.add_argument("--out", type=Path, default=None)
    args = parser.parse_args()
    print(ensure_flat_index(args.count, args.out))


if __name__ == "__main__":
    main()
