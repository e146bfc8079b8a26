"""What every benchmark shares: paths, the fixed query set, the demo index, a description of the machine,
the manifest of a synthetic index. It imports no other bench module (bench/synthetic.py and
bench/memory_index.py build on it), so there is no import circle."""

from __future__ import annotations

import os
import platform
import random
import subprocess
from pathlib import Path
from typing import Any

from app import procstat

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "bench" / "results"
DATA_DIR = ROOT / ".cache"
QUERY_SEED = 7
TOPK = 3  # Search-R1's default


def bench_queries(count: int = 2048) -> list[str]:
    """A fixed sample of the demo's labelled queries (Wikidata short descriptions, ~10 tokens)."""
    from app.demo import labelled_queries

    queries = [query for query, _ in labelled_queries()]
    random.Random(QUERY_SEED).shuffle(queries)
    return queries[:count]


def demo_index_dir() -> Path:
    """The full demo index that `retriever serve` builds (10k Wikipedia leads); built here if absent."""
    from app.demo import ensure_demo_index
    from app.manifest import MANIFEST_FILE

    built = DATA_DIR / "demo" / "index"
    if (built / MANIFEST_FILE).is_file():
        return built
    print("bench: building the demo index (once, several minutes on 2 cores)", flush=True)
    return ensure_demo_index(DATA_DIR)


def _read(path: str) -> str:
    try:
        return Path(path).read_text()
    except OSError:
        return ""


def machine() -> dict[str, Any]:
    """What the figures depend on: CPU, cores, memory, library versions, load while measuring."""
    import faiss
    import numpy
    import torch

    cpu = next(
        (line.split(":", 1)[1].strip() for line in _read("/proc/cpuinfo").splitlines() if "model name" in line), ""
    )
    mem_bytes = procstat.meminfo("MemTotal")
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=ROOT, capture_output=True, text=True, timeout=10
        ).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        commit = ""
    return {
        "cpu": cpu or platform.processor(),
        "cores": len(os.sched_getaffinity(0)),
        "memory_gib": round(mem_bytes / 2**30, 1),
        "python": platform.python_version(),
        "torch": torch.__version__,
        "faiss": faiss.__version__,
        "numpy": numpy.__version__,
        "git_commit": commit,
        "loadavg_start": list(os.getloadavg()),
    }


def write_synthetic_manifest(directory: Path, count: int, dimension: int, source: dict[str, Any]) -> None:
    """The manifest of a synthetic Flat index directory (index.faiss + corpus/), served with the bundled model."""
    import datetime as dt

    from app.corpus import CORPUS_DIR_FILES
    from app.encoder import BUNDLED_MODEL
    from app.manifest import CORPUS_DIR, INDEX_FILE, Manifest, record_files

    names = [INDEX_FILE] + [f"{CORPUS_DIR}/{name}" for name in CORPUS_DIR_FILES]
    Manifest(
        model=BUNDLED_MODEL,
        dimension=dimension,
        metric="ip",
        normalize=True,
        query_prefix="",
        passage_prefix="",
        max_length=256,
        index_factory="Flat",
        count=count,
        files=record_files(directory, names),
        source={"synthetic": True, **source},
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    ).write(directory)
