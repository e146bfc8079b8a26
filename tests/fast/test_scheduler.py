"""The scheduler's rules, in this process: admission by count and by estimated wait, gathering of
waiting queries into one batch, a failing batch failing only its own requests, callers that left."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Awaitable, Callable

import numpy as np
import pytest

from app.batcher import MicroBatcher, PerRequestRunner, Scheduler
from app.errors import BatchFailed, Overloaded
from app.lanes import Helpers


class GatedSearch:
    """A search function for the scheduler: query "7" answers ids [7, 8, ...]; "boom" raises.

    While held, a batch waits at the gate, so the test can line up requests behind it."""

    def __init__(self) -> None:
        self.batches: list[list[str]] = []
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def hold(self) -> None:
        self.gate.clear()
        self.entered.clear()

    def release(self) -> None:
        self.gate.set()

    def __call__(self, queries: list[str], topk: int, helpers: Helpers | None) -> tuple[np.ndarray, np.ndarray]:
        self.batches.append(list(queries))
        self.entered.set()
        assert self.gate.wait(10), "test never released the gate"
        if "boom" in queries:
            raise RuntimeError("boom in batch")
        ids = np.array([[int(query) + rank for rank in range(topk)] for query in queries], dtype=np.int64)
        return np.ones(ids.shape, dtype=np.float32), ids

    async def running(self) -> None:
        """Until a batch is inside the search (holding the lane)."""
        assert await asyncio.to_thread(self.entered.wait, 10), "no batch started"


async def settle() -> None:
    """Let the tasks just created run up to their first wait (submit enqueues synchronously)."""
    for _ in range(5):
        await asyncio.sleep(0)


def run(scenario: Callable[[GatedSearch, MicroBatcher], Awaitable[None]], **options: float) -> None:
    async def main() -> None:
        search = GatedSearch()
        settings = {"max_batch_size": 64, "max_wait_ms": 0, "max_queue": 1000} | options
        batcher = MicroBatcher(search, threads=1, **settings)  # type: ignore[arg-type]
        await batcher.start()
        try:
            await scenario(search, batcher)
        finally:
            search.release()
            await batcher.stop()

    asyncio.run(main())


def ids_of(result: tuple[np.ndarray, np.ndarray]) -> list[list[int]]:
    return result[1].tolist()


def test_admission_refuses_past_max_queue_at_once_and_admits_what_fits() -> None:
    async def scenario(search: GatedSearch, batcher: MicroBatcher) -> None:
        search.hold()
        first = asyncio.create_task(batcher.submit(["1", "2", "3"], 1))
        await search.running()
        with pytest.raises(Overloaded, match=r"overloaded: 3 queries already waiting \(limit 4\); retry later"):
            await batcher.submit(["4", "5"], 1)
        fits = asyncio.create_task(batcher.submit(["6"], 1))  # 3 + 1 <= 4
        await settle()
        assert batcher.queued_queries == 4
        search.release()
        assert ids_of(await first) == [[1], [2], [3]]
        assert ids_of(await fits) == [[6]]
        assert batcher.queued_queries == 0

    run(scenario, max_queue=4)


def test_a_request_larger_than_the_queue_is_admitted_when_nothing_waits() -> None:
    async def scenario(search: GatedSearch, batcher: MicroBatcher) -> None:
        assert ids_of(await batcher.submit([str(i) for i in range(10)], 1)) == [[i] for i in range(10)]

    run(scenario, max_queue=4)


def test_admission_refuses_when_the_estimated_wait_exceeds_the_limit() -> None:
    async def scenario(search: GatedSearch, batcher: MicroBatcher) -> None:
        search.hold()
        first = asyncio.create_task(batcher.submit(["1"] * 10, 1))
        await search.running()
        for size in (1, 8, 32, 64):  # as learned from earlier batches: 10 ms a query, nothing fixed
            batcher.batch_cost.observe(size, 0.01 * size)
        # The running batch of 10 (0.1 s) and the batches of 64 + 21 the queue would form: 0.95 s.
        admitted = asyncio.create_task(batcher.submit(["2"] * 85, 1))
        await settle()
        with pytest.raises(Overloaded, match=r"about 1\.1 s of work already waiting \(limit 1 s\)"):
            await batcher.submit(["3"] * 20, 1)  # 0.1 s + batches of 64 + 41: 1.15 s
        search.release()
        assert len(ids_of(await admitted)) == 85
        await first

    run(scenario, max_queue_wait_s=1.0)


def test_no_wait_estimate_before_a_batch_has_run() -> None:
    async def scenario(search: GatedSearch, batcher: MicroBatcher) -> None:
        search.hold()
        first = asyncio.create_task(batcher.submit(["1"] * 10, 1))
        await search.running()
        later = asyncio.create_task(batcher.submit(["2"] * 500, 1))  # throughput unknown: count limit only
        await settle()
        assert not later.done()
        search.release()
        await first
        assert len(ids_of(await later)) == 500

    run(scenario, max_queue_wait_s=0.001)


def test_queries_waiting_behind_a_batch_run_together_in_the_next() -> None:
    async def scenario(search: GatedSearch, batcher: MicroBatcher) -> None:
        search.hold()
        first = asyncio.create_task(batcher.submit(["1"], 1))
        await search.running()
        waiting = [asyncio.create_task(batcher.submit([str(10 * i), str(10 * i + 1)], 2)) for i in range(1, 6)]
        await settle()
        search.release()
        results = await asyncio.gather(*waiting)
        await first
        assert search.batches == [["1"], ["10", "11", "20", "21", "30", "31", "40", "41", "50", "51"]]
        for i, result in enumerate(results, start=1):  # each caller gets its own rows back
            assert ids_of(result) == [[10 * i, 10 * i + 1], [10 * i + 1, 10 * i + 2]]

    run(scenario)


def test_a_batch_holds_whole_requests_up_to_max_batch_size() -> None:
    async def scenario(search: GatedSearch, batcher: MicroBatcher) -> None:
        search.hold()
        first = asyncio.create_task(batcher.submit(["1"], 1))
        await search.running()
        waiting = [asyncio.create_task(batcher.submit([str(10 * i), str(10 * i + 1)], 1)) for i in range(1, 4)]
        await settle()
        search.release()
        await asyncio.gather(first, *waiting)
        assert search.batches == [["1"], ["10", "11", "20", "21"], ["30", "31"]]

    run(scenario, max_batch_size=4)


def test_a_failing_batch_fails_only_its_own_requests() -> None:
    async def scenario(search: GatedSearch, batcher: MicroBatcher) -> None:
        search.hold()
        doomed = [asyncio.create_task(batcher.submit(["boom"], 1))]
        await search.running()
        later = asyncio.create_task(batcher.submit(["7"], 1))
        await settle()
        search.release()
        with pytest.raises(BatchFailed, match="search failed: RuntimeError: boom in batch"):
            await doomed[0]
        assert ids_of(await later) == [[7]]
        assert search.batches == [["boom"], ["7"]]
        assert batcher.queued_queries == 0

    run(scenario)


def test_a_caller_that_went_away_is_dropped_from_the_queue() -> None:
    async def scenario(search: GatedSearch, batcher: MicroBatcher) -> None:
        search.hold()
        first = asyncio.create_task(batcher.submit(["1"], 1))
        await search.running()
        gone = asyncio.create_task(batcher.submit(["2", "3"], 1))
        stays = asyncio.create_task(batcher.submit(["4"], 1))
        await settle()
        gone.cancel()
        await settle()
        search.release()
        await first
        assert ids_of(await stays) == [[4]]
        assert search.batches == [["1"], ["4"]]  # the cancelled queries were never computed
        assert batcher.queued_queries == 0

    run(scenario)


def test_a_caller_that_left_during_its_batch_does_not_break_the_lane() -> None:
    async def scenario(search: GatedSearch, batcher: MicroBatcher) -> None:
        search.hold()
        first = asyncio.create_task(batcher.submit(["1"], 1))
        await search.running()
        first.cancel()
        await settle()
        search.release()
        assert ids_of(await batcher.submit(["5"], 1)) == [[5]]
        assert batcher.queued_queries == 0

    run(scenario)


def test_stop_fails_running_and_waiting_requests() -> None:
    async def main() -> None:
        search = GatedSearch()
        batcher = MicroBatcher(search, 64, 0, 1000, threads=1)
        await batcher.start()
        search.hold()
        running = asyncio.create_task(batcher.submit(["1"], 1))
        await search.running()
        waiting = asyncio.create_task(batcher.submit(["2"], 1))
        await settle()
        await batcher.stop()
        search.release()
        for task in (running, waiting):
            with pytest.raises(BatchFailed, match="shutting down"):
                await asyncio.wait_for(task, 5)

    asyncio.run(main())


def test_per_request_runner_admits_by_count_and_fails_only_the_failing_request() -> None:
    async def main() -> None:
        search = GatedSearch()
        runner: Scheduler = PerRequestRunner(search, threads=2, max_queue=3)
        await runner.start()
        try:
            search.hold()
            first = asyncio.create_task(runner.submit(["1", "2"], 1))
            await search.running()
            with pytest.raises(Overloaded, match=r"2 queries already waiting \(limit 3\)"):
                await runner.submit(["3", "4"], 1)
            search.release()
            assert ids_of(await first) == [[1], [2]]
            with pytest.raises(BatchFailed, match="boom in batch"):
                await runner.submit(["boom"], 1)
            assert ids_of(await runner.submit(["9"], 2)) == [[9, 10]]
            assert runner.queued_queries == 0
        finally:
            search.release()
            await runner.stop()

    asyncio.run(main())
