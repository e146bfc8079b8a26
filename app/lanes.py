"""Compute lanes: where batches run, one at a time on every core, each thread single-threaded.

A `ComputeLane` is one thread that runs batches one after another, with `threads - 1` helper
threads (`Helpers`) that share each batch's work: the scheduler hands the lane's helpers to the
search explicitly (`Retriever.search(queries, topk, helpers)`), and the backends split their stage
between them (the encoder splits the texts, a Flat index its rows; see `Helpers.map`).
One join per stage replaces the thousands of OpenMP barriers that multi-threaded torch/FAISS
kernels hit per batch, which on a small or busy machine cost more than the work (measured:
bench/README.md).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass
from typing import TypeVar

P = TypeVar("P")
R = TypeVar("R")


def available_cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def single_threaded_compute() -> None:
    """Make the calling thread run torch and FAISS kernels on itself only (no OpenMP team).

    torch's setting is process-wide; FAISS's (OpenMP) is per thread, so every lane thread calls this.
    Only libraries already loaded are touched.
    """
    torch = sys.modules.get("torch")
    if torch is not None:
        torch.set_num_threads(1)
    faiss = sys.modules.get("faiss")
    if faiss is not None:
        faiss.omp_set_num_threads(1)


@dataclass(frozen=True)
class Helpers:
    """Threads that share one batch's work with the thread that runs it."""

    executor: ThreadPoolExecutor
    count: int  # threads besides the caller

    def map(self, fn: Callable[[P], R], parts: Sequence[P]) -> list[R]:
        """fn over parts: the first on the calling thread, the rest on helpers; waits for all."""
        futures: list[Future[R]] = [self.executor.submit(fn, part) for part in parts[1:]]
        try:
            first = fn(parts[0])
        finally:
            wait(futures)  # never leave a helper busy with this batch when the next one starts
        return [first, *(future.result() for future in futures)]


class ComputeLane:
    """One thread that runs batches one after another, with `threads - 1` helpers; all single-threaded."""

    def __init__(self, threads: int = 0) -> None:
        self.threads = threads or available_cores()
        self.helpers: Helpers | None = None
        if self.threads > 1:
            pool = ThreadPoolExecutor(self.threads - 1, "batch-helper", initializer=single_threaded_compute)
            self.helpers = Helpers(pool, self.threads - 1)
        self.executor = ThreadPoolExecutor(1, "batch", initializer=single_threaded_compute)

    def shutdown(self) -> None:
        self.executor.shutdown(wait=False, cancel_futures=True)
        if self.helpers is not None:
            self.helpers.executor.shutdown(wait=False, cancel_futures=True)
