"""`retriever plan`: the memory a pod needs for an index directory, and the Helm values for it.

memory GiB = ceil(index + corpus + model + workers x per-worker overhead + headroom)
The index and corpus are mapped: one copy per node, counted once however many workers.
With `gpu` the index moves to the GPU: it leaves the host sum (its mapped pages are only read once,
as page cache) and the GPU needs
GPU memory GiB = ceil(index x bytes per stored value / 4 + [model / 2: fp16 weights] + GPU overhead)
The chart computes the same sums from the values printed here (helm/retriever/values.yaml).
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
# CUDA context, the 1 GiB score workspace and allocator slack (chart: gpu.overheadGiB).
GPU_OVERHEAD_GIB = 3.0
BYTES_PER_VALUE = {"float16": 2, "bfloat16": 2, "float32": 4}


def _model_gib(manifest: Manifest, index_dir: Path) -> float:
    """Weights on disk x 2 (loaded tensors + tokenizer and runtime buffers); a fallback for hub names."""
    from app.encoder import resolve_model
    from app.importer import resolve_manifest_model

    try:
        path = Path(resolve_model(resolve_manifest_model(manifest, index_dir)))
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
    index_dir: Path,
    workers: int = 1,
    model_gib: float | None = None,
    headroom_gib: float = 0.5,
    gpu: bool = False,
    index_dtype: str = "float16",
    gpu_encoder: bool = True,
    gpu_overhead_gib: float = GPU_OVERHEAD_GIB,
) -> dict[str, Any]:
    manifest = Manifest.read(index_dir)
    index_bytes = (index_dir / INDEX_FILE).stat().st_size
    corpus_bytes = sum((index_dir / CORPUS_DIR / name).stat().st_size for name in CORPUS_DIR_FILES)
    index_gib, corpus_gib = _gib(index_bytes), _gib(corpus_bytes)
    model = _gib((model_gib if model_gib is not None else _model_gib(manifest, index_dir)) * GIB)
    overhead = Decimal(str(PER_WORKER_OVERHEAD_GIB))
    headroom = Decimal(str(headroom_gib))
    if gpu and workers != 1:
        raise ValueError("a GPU pod runs one worker: every worker would copy the whole index to the GPU")
    # The chart's formula (helm/retriever/values.yaml, memory section), term for term.
    host_index = Decimal(0) if gpu else index_gib
    total = math.ceil(host_index + corpus_gib + model + workers * overhead + headroom)
    gpu_overhead = Decimal(str(gpu_overhead_gib))
    per_value = Decimal(BYTES_PER_VALUE[index_dtype]) / 4
    gpu_total = math.ceil(index_gib * per_value + (model / 2 if gpu_encoder else 0) + gpu_overhead) if gpu else 0
    values = (
        f"index:\n  sizeGiB: {index_gib}\n"
        f"corpus:\n  sizeGiB: {corpus_gib}\n"
        f"model:\n  sizeGiB: {model}\n"
        f"server:\n  workers: {workers}\n"
        f"memory:\n  perWorkerOverheadGiB: {overhead}\n  headroomGiB: {headroom}\n"
    )
    if gpu:
        values += (
            f"gpu:\n  enabled: true\n  indexDtype: {index_dtype}\n  encoder: {str(gpu_encoder).lower()}\n"
            f"  overheadGiB: {gpu_overhead}\n"
        )
    where = f"on the GPU as {index_dtype}: not in host memory" if gpu else "memory-mapped, shared by all workers"
    text = (
        f"index      {host_index:>8} GiB  {index_dir / INDEX_FILE} ({where})\n"
        f"corpus     {corpus_gib:>8} GiB  {index_dir / CORPUS_DIR} (memory-mapped, shared)\n"
        f"model      {model:>8} GiB  {manifest.model}\n"
        f"workers    {workers * overhead:>8} GiB  {workers} x {overhead} GiB\n"
        f"headroom   {headroom:>8} GiB\n"
        f"pod memory {total:>8} GiB  (requests = limits: {total}Gi)\n"
        + (
            f"GPU memory {gpu_total:>8} GiB  (index {index_gib} GiB x {per_value} + model + {gpu_overhead} GiB)\n"
            if gpu
            else ""
        )
        + "\n"
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
        "gpu": gpu,
        "gpu_memory_gib": gpu_total,
        "helm_values": values,
        "text": text,
    }
