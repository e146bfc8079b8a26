"""`retriever plan`: the memory a pod needs for an index directory, and the Helm values for it.

memory = index file + corpus store (mapped, one copy per node, counted once)
       + model + workers x per-worker overhead, then headroom on top, rounded up to whole GiB.
The chart computes the same sum from `index.sizeGiB` (helm/retriever/values.yaml).
"""

from __future__ import annotations

import math
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


def plan(index_dir: Path, workers: int = 1, model_gib: float | None = None, headroom: float = 0.10) -> dict[str, Any]:
    manifest = Manifest.read(index_dir)
    index_bytes = (index_dir / INDEX_FILE).stat().st_size
    corpus_bytes = sum((index_dir / CORPUS_DIR / name).stat().st_size for name in CORPUS_DIR_FILES)
    model = model_gib if model_gib is not None else _model_gib(manifest)
    index_gib, corpus_gib = index_bytes / GIB, corpus_bytes / GIB
    subtotal = index_gib + corpus_gib + model + workers * PER_WORKER_OVERHEAD_GIB
    total = math.ceil(subtotal * (1 + headroom))
    values = (
        "index:\n"
        f"  sizeGiB: {math.ceil(index_gib * 100) / 100}\n"
        "corpus:\n"
        f"  sizeGiB: {math.ceil(corpus_gib * 100) / 100}\n"
        "resources:\n"
        "  requests:\n"
        f"    memory: {total}Gi\n"
        "  limits:\n"
        f"    memory: {total}Gi\n"
    )
    text = (
        f"index      {index_gib:8.2f} GiB  {index_dir / INDEX_FILE} (memory-mapped, shared by all workers)\n"
        f"corpus     {corpus_gib:8.2f} GiB  {index_dir / CORPUS_DIR} (memory-mapped, shared)\n"
        f"model      {model:8.2f} GiB  {manifest.model}\n"
        f"workers    {workers * PER_WORKER_OVERHEAD_GIB:8.2f} GiB  {workers} x {PER_WORKER_OVERHEAD_GIB} GiB\n"
        f"headroom   {headroom:8.0%}\n"
        f"pod memory {total:8d} GiB  (requests = limits)\n\n"
        f"Helm values:\n{values}"
    )
    return {
        "index_bytes": index_bytes,
        "corpus_bytes": corpus_bytes,
        "model_gib": round(model, 3),
        "workers": workers,
        "per_worker_overhead_gib": PER_WORKER_OVERHEAD_GIB,
        "headroom": headroom,
        "memory_gib": total,
        "helm_values": values,
        "text": text,
    }
