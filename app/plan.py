"""`retriever plan`: the memory a pod needs for an index directory, and the Helm values for it.

memory GiB = ceil(index + corpus + model + workers x per-worker overhead + headroom)
The index and corpus are mapped: one copy per node, counted once however many workers.
The chart computes the same sum from the values printed here (helm/retriever/values.yaml).
"""

from __future__ import annotations

import math
from decimal import Decimal
from pathlib import Path
from typing import Any

from app.corpus import CORPUS_DIR_FILES
from app.manifest import CORPUS_DIR, INDEX_FILE, Manifest

GIB = 1024**3
# Python + torch + FastAPI per worker, measured on the demo (RSS less the mapped files), rounded up.
PER_WORKER_OVERHEAD_GIB = 0.75
MODEL_FALLBACK_GIB = 0.5


def _model_gib(manifest: Manifest) -> float:
    """Weights on disk x 2 (loaded tensors + tokenizer and runtime buffers); a fallback for hub names."""
    from app.encoder import resolve_model

    try:
        path = Path(resolve_model(manifest.model))
    except Exception:
        return MODEL_FALLBACK_GIB
    if not path.is_dir():
        return MODEL_FALLBACK_GIB
    weights = sum(p.stat().st_size for p in path.rglob("*") if p.suffix in (".safetensors", ".bin", ".pt"))
    return max(2 * weights / GIB, 0.1)


def _gib(value_bytes: float) -> Decimal:
    """GiB rounded up to 0.01, as a Decimal: Helm adds these values exactly, so must we."""
    return Decimal(math.ceil(value_bytes / GIB * 100)) / 100


def plan(
    index_dir: Path, workers: int = 1, model_gib: float | None = None, headroom_gib: float = 0.5
) -> dict[str, Any]:
    manifest = Manifest.read(index_dir)
    index_bytes = (index_dir / INDEX_FILE).stat().st_size
    corpus_bytes = sum((index_dir / CORPUS_DIR / name).stat().st_size for name in CORPUS_DIR_FILES)
    index_gib, corpus_gib = _gib(index_bytes), _gib(corpus_bytes)
    model = _gib((model_gib if model_gib is not None else _model_gib(manifest)) * GIB)
    overhead = Decimal(str(PER_WORKER_OVERHEAD_GIB))
    headroom = Decimal(str(headroom_gib))
    # The chart's formula (helm/retriever/values.yaml, memory section), term for term.
    total = math.ceil(index_gib + corpus_gib + model + workers * overhead + headroom)
    values = (
        f"index:\n  sizeGiB: {index_gib}\n"
        f"corpus:\n  sizeGiB: {corpus_gib}\n"
        f"model:\n  sizeGiB: {model}\n"
        f"server:\n  workers: {workers}\n"
        f"memory:\n  perWorkerOverheadGiB: {overhead}\n  headroomGiB: {headroom}\n"
    )
    text = (
        f"index      {index_gib:>8} GiB  {index_dir / INDEX_FILE} (memory-mapped, shared by all workers)\n"
        f"corpus     {corpus_gib:>8} GiB  {index_dir / CORPUS_DIR} (memory-mapped, shared)\n"
        f"model      {model:>8} GiB  {manifest.model}\n"
        f"workers    {workers * overhead:>8} GiB  {workers} x {overhead} GiB\n"
        f"headroom   {headroom:>8} GiB\n"
        f"pod memory {total:>8} GiB  (requests = limits: {total}Gi)\n\n"
        f"Helm values (the chart derives resources.requests/limits.memory = {total}Gi from them):\n{values}"
    )
    return {
        "index_bytes": index_bytes,
        "corpus_bytes": corpus_bytes,
        "index_gib": float(index_gib),
        "corpus_gib": float(corpus_gib),
        "model_gib": float(model),
        "workers": workers,
        "per_worker_overhead_gib": float(overhead),
        "headroom_gib": float(headroom),
        "memory_gib": total,
        "helm_values": values,
        "text": text,
    }
