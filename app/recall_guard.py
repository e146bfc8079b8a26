"""Live recall guard: a small share of served queries is searched again exactly, in the background.

When the served index is approximate and an exact reference is at hand (the source Flat index that
`retriever convert` recorded in the manifest, or `--recall-reference`), each served query is sampled
with probability `recall_sample_fraction`. A sample (the query's vector and the ids served) goes into
a bounded queue; when the queue is full it is dropped and counted, never waited for. One thread at
the lowest CPU priority (nice 19, single-threaded FAISS) works the queue, and only while no admitted
query is waiting for the compute lane (`busy()`): serving always comes first. It compares the served
ids with the exact top k and exports the mean over the last `recall_window` samples as
`retriever_live_recall{k="1"}` and `{k="topk"}` (topk: the batch's topk, the largest any of its
requests asked for; Search-R1 and verl always ask for 3).
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import random
import threading
import time
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app import metrics

log = logging.getLogger(__name__)

BUSY_POLL_S = 0.005


@dataclass
class _Sample:
    vector: np.ndarray  # (d,)
    served: list[int]  # the ids answered, best first (topk of them)


class RecallGuard:
    def __init__(
        self,
        reference: Any,  # app.index.FaissIndex over an exact (Flat) index
        fraction: float,
        queue_size: int,
        window: int,
        busy: Callable[[], bool] = lambda: False,
        seed: int | None = None,
    ) -> None:
        self.reference, self.fraction, self.window = reference, fraction, window
        self.busy = busy
        self._queue: queue.Queue[_Sample | None] = queue.Queue(maxsize=queue_size)
        self._random = random.Random(seed)
        self._lock = threading.Lock()
        self._at1: deque[float] = deque(maxlen=window)
        self._at_topk: deque[float] = deque(maxlen=window)
        self.samples = 0
        self.dropped = 0
        self._thread = threading.Thread(target=self._run, name="recall-guard", daemon=True)
        self._stopping = threading.Event()

    @property
    def path(self) -> Path:
        return Path(self.reference.path)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        with contextlib.suppress(queue.Full):  # the worker sees _stopping after its current sample
            self._queue.put_nowait(None)
        self._thread.join(timeout=5)

    def offer(self, vectors: np.ndarray, ids: np.ndarray, topk: int) -> None:
        """Called on the serving path after a search: a random draw per query, at most a copy of one
        vector each when sampled; never blocks."""
        if self.fraction <= 0:
            return
        for row in range(len(vectors)):
            if self._random.random() >= self.fraction:
                continue
            served = [int(i) for i in ids[row, :topk] if i >= 0]
            if not served:
                continue
            try:
                self._queue.put_nowait(_Sample(np.array(vectors[row], dtype=np.float32), served))
            except queue.Full:
                self.dropped += 1
                metrics.LIVE_RECALL_DROPPED.inc()

    def _run(self) -> None:
        # The lowest CPU priority for this thread only (Linux: a thread is a task with its own nice).
        with contextlib.suppress(AttributeError, OSError):
            os.setpriority(os.PRIO_PROCESS, threading.get_native_id(), 19)
        import faiss

        faiss.omp_set_num_threads(1)  # per thread: never an OpenMP team competing with the lane
        while not self._stopping.is_set():
            sample = self._queue.get()
            if sample is None:
                return
            while self.busy() and not self._stopping.is_set():
                time.sleep(BUSY_POLL_S)
            try:
                self._check(sample)
            except Exception as exc:  # the guard must never take the server down
                log.warning("live recall check failed: %s", exc)

    def _check(self, sample: _Sample) -> None:
        k = len(sample.served)
        _, exact = self.reference.index.search(sample.vector[None, :], k)
        truth = [int(i) for i in exact[0] if i >= 0]
        if not truth:
            return
        at1 = 1.0 if sample.served[0] == truth[0] else 0.0
        at_topk = len(set(sample.served) & set(truth)) / len(truth)
        with self._lock:
            self._at1.append(at1)
            self._at_topk.append(at_topk)
            self.samples += 1
            mean1 = sum(self._at1) / len(self._at1)
            mean_topk = sum(self._at_topk) / len(self._at_topk)
        metrics.LIVE_RECALL.labels("1").set(mean1)
        metrics.LIVE_RECALL.labels("topk").set(mean_topk)
        metrics.LIVE_RECALL_SAMPLES.inc()

    def snapshot(self) -> dict[str, Any]:
        with self._lock:
            window = len(self._at1)
            at1 = sum(self._at1) / window if window else None
            at_topk = sum(self._at_topk) / window if window else None
        return {
            "reference": str(self.path),
            "sample_fraction": self.fraction,
            "window": self.window,
            "samples": self.samples,
            "dropped": self.dropped,
            "queued": self._queue.qsize(),
            "recall@1": None if at1 is None else round(at1, 4),
            "recall@topk": None if at_topk is None else round(at_topk, 4),
        }


def reference_path(configured: Path | None, manifest: Any) -> Path | None:
    """The exact index to check against: the configured path, else the manifest's converted-from Flat."""
    if configured is not None:
        return configured
    if manifest is None:
        return None
    recorded = (manifest.source or {}).get("exact_index")
    return Path(recorded) if recorded and Path(recorded).is_file() else None


def start_guard(settings: Any, manifest: Any, index: Any, busy: Callable[[], bool]) -> RecallGuard | None:
    """The guard for the served `index`, started, or None when off or without an exact reference.

    Raises ValueError (with the setting's name) when the configured reference does not match the index.
    """
    from app.index import FaissIndex

    if settings.recall_sample_fraction <= 0:
        return None
    path = reference_path(settings.recall_reference, manifest)
    if path is None:
        return None
    served = getattr(index, "path", None)
    if settings.recall_reference is None and served is not None and path.resolve() == Path(served).resolve():
        return None  # an exact index needs no guard
    if not path.is_file():
        raise ValueError(f"{path}: recall reference index not found (RETRIEVER_RECALL_REFERENCE)")
    reference = FaissIndex(path, use_mmap=True)
    if (reference.count, reference.dimension) != (index.count, index.dimension):
        raise ValueError(
            f"{path}: recall reference holds {reference.count} x {reference.dimension} vectors, the served index "
            f"{index.count} x {index.dimension} (RETRIEVER_RECALL_REFERENCE must be the same vectors, exact)"
        )
    guard = RecallGuard(reference, settings.recall_sample_fraction, settings.recall_queue, settings.recall_window, busy)
    metrics.LIVE_RECALL_FLOOR.set(settings.recall_floor)
    guard.start()
    log.info("live recall guard: %.3g of queries re-checked against %s", guard.fraction, path)
    return guard
