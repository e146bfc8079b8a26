"""A synthetic index directory for the memory benchmark: random unit vectors, no encoding.

Writes what `retriever build` writes (index.faiss, corpus/ store, manifest.json) straight from
FAISS + CorpusWriter + Manifest, so a >= 2 GiB Flat index takes seconds instead of days of
encoding. Vectors match the bundled model's dimension so the real server loads it unchanged.
"""

from __future__ import annotations

import json
import os
import shutil
import time
from pathlib import Path

import faiss
import numpy as np

from app.corpus import CORPUS_DIR_FILES, CorpusWriter
from app.manifest import CORPUS_DIR, INDEX_FILE, Manifest, ManifestError
from bench.common import write_synthetic_manifest

PARAMS_FILE = "bench-params.json"
DIMENSION = 384  # all-MiniLM-L6-v2, the bundled model
WORDS = (
    "river", "city", "empire", "treaty", "novel", "symphony", "planet", "molecule", "harbour", "dynasty", "painter",
    "election", "mountain", "bridge", "theorem", "festival", "railway", "cathedral", "island", "language", "battle",
    "museum",
)  # fmt: skip


def _params(vectors: int, seed: int) -> dict[str, object]:
    return {"vectors": vectors, "dimension": DIMENSION, "seed": seed, "factory": "Flat", "format": 1}


def reusable(directory: Path, vectors: int, seed: int) -> bool:
    """True when `directory` holds a complete synthetic index made with these parameters."""
    try:
        if json.loads((directory / PARAMS_FILE).read_text()) != _params(vectors, seed):
            return False
        Manifest.read(directory).check_files(directory, checksums=False)
    except (OSError, ValueError, ManifestError):
        return False
    return True


def _passage(row: int) -> bytes:
    words = " ".join(WORDS[(row * 7 + k * 3) % len(WORDS)] for k in range(14))
    return json.dumps(
        {"id": str(row), "contents": f'"Synthetic passage {row}"\n{words} {row}.'}, separators=(",", ":")
    ).encode()


def build(directory: Path, vectors: int, seed: int = 0, log: bool = True) -> float:
    """Write the index directory (atomically: under a temporary name, then renamed). Returns seconds."""
    started = time.perf_counter()
    tmp = directory.parent / f".{directory.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    try:
        rng = np.random.default_rng(seed)
        data = np.empty((vectors, DIMENSION), dtype=np.float32)
        step = 100_000
        for start in range(0, vectors, step):
            block = rng.standard_normal((min(step, vectors - start), DIMENSION), dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            data[start : start + len(block)] = block
        index = faiss.IndexFlatIP(DIMENSION)
        index.add(data)  # copies once into FAISS (peak ~2x the index size for a moment)
        del data
        faiss.write_index(index, str(tmp / INDEX_FILE))
        del index
        if log:
            print(f"  index.faiss written ({(tmp / INDEX_FILE).stat().st_size / 2**30:.2f} GiB)", flush=True)
        writer = CorpusWriter(tmp / CORPUS_DIR)
        try:
            for row in range(vectors):
                writer.add(_passage(row))
        finally:
            writer.close()
        write_synthetic_manifest(tmp, vectors, DIMENSION, {"seed": seed})
        (tmp / PARAMS_FILE).write_text(json.dumps(_params(vectors, seed)) + "\n")
        shutil.rmtree(directory, ignore_errors=True)
        os.rename(tmp, directory)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return time.perf_counter() - started


def data_files(directory: Path) -> list[Path]:
    return [directory / INDEX_FILE] + [directory / CORPUS_DIR / name for name in CORPUS_DIR_FILES]
