"""The live recall guard: exact re-checks of sampled answers, in the background, never blocking."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np

from app.index import FaissIndex
from app.recall_guard import RecallGuard


def _rows(index: FaissIndex, count: int) -> np.ndarray:
    return np.stack([index.index.reconstruct(i) for i in range(count)])


def _wait(condition, timeout: float = 30.0) -> None:
    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "guard did not catch up"
        time.sleep(0.02)


def test_guard_scores_served_answers_against_exact_search(demo_index: Path) -> None:
    reference = FaissIndex(demo_index / "index.faiss")
    guard = RecallGuard(reference, fraction=1.0, queue_size=64, window=100)
    guard.start()
    try:
        vectors = _rows(reference, 20)
        _, exact = reference.index.search(vectors, 3)
        guard.offer(vectors[:10], exact[:10], 3)  # served exactly: recall 1
        _wait(lambda: guard.samples == 10)
        assert guard.snapshot()["recall@1"] == 1.0 and guard.snapshot()["recall@topk"] == 1.0
        wrong = exact[10:].copy()
        wrong[:, 0] = exact[10:, 2]  # top-1 replaced by the 3rd: recall@1 0, recall@3 2/3
        wrong[:, 2] = (exact[10:, 2] + 1) % reference.count
        wrong[:, 2] = np.where(np.isin(wrong[:, 2], exact[10:]), (wrong[:, 2] + 7) % reference.count, wrong[:, 2])
        guard.offer(vectors[10:], wrong, 3)
        _wait(lambda: guard.samples == 20)
        snapshot = guard.snapshot()
        assert snapshot["recall@1"] == 0.5
        assert snapshot["recall@topk"] < 1.0
        assert snapshot["dropped"] == 0
    finally:
        guard.stop()


def test_guard_waits_while_busy_and_drops_what_does_not_fit(demo_index: Path) -> None:
    reference = FaissIndex(demo_index / "index.faiss")
    busy = True
    guard = RecallGuard(reference, fraction=1.0, queue_size=4, window=10, busy=lambda: busy)
    guard.start()
    try:
        vectors = _rows(reference, 12)
        _, exact = reference.index.search(vectors, 3)
        started = time.perf_counter()
        guard.offer(vectors, exact, 3)
        assert time.perf_counter() - started < 1.0  # never waits on the serving path
        time.sleep(0.3)
        assert guard.samples == 0  # nothing checked while admitted work waits
        assert guard.dropped >= 12 - 4 - 1  # the queue holds 4, the worker holds at most 1
        busy = False
        _wait(lambda: guard.samples + guard.dropped == 12)
    finally:
        guard.stop()


def test_guard_samples_about_the_configured_fraction(demo_index: Path) -> None:
    reference = FaissIndex(demo_index / "index.faiss")
    guard = RecallGuard(reference, fraction=0.1, queue_size=10_000, window=10, busy=lambda: True, seed=3)
    vectors = np.zeros((2000, reference.dimension), dtype=np.float32)
    ids = np.zeros((2000, 3), dtype=np.int64)
    guard.offer(vectors, ids, 3)
    assert 140 <= guard._queue.qsize() <= 260
