"""The scheduler: admits requests, coalesces concurrent queries into batches, runs them off the loop.

Two strategies share one interface (`submit(queries, topk)`):
- `MicroBatcher`: one queue; whenever the compute lane is free it takes every waiting query
  (up to `max_batch_size`) as one batch: one encoder pass and one index scan for all of them.
  A lone caller is never delayed (no fixed wait unless `max_wait_ms` is set); under load,
  batches grow by themselves while the previous one runs.
- `PerRequestRunner`: each request encoded and searched on its own in a worker thread
  (the usual "run_in_executor per request" design; kept for comparison: `--batching off`).
Both refuse work past `max_queue` waiting queries with `Overloaded`, at once.

Batches run on a compute lane (`app.lanes.ComputeLane`): one batch at a time on every core; the
lane's helper threads are handed to the search with each batch.

Refusals and failures are the engine's domain errors (`app.errors.Overloaded`, `BatchFailed`),
whose messages are the HTTP answer's `detail`.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np

from app import metrics
from app.batch_cost import BatchCostModel
from app.errors import BatchFailed, Overloaded
from app.lanes import ComputeLane

log = logging.getLogger(__name__)

# (queries, topk, helpers[, a request's search params]) -> (scores, ids); or a Future of them when the
# search stage runs elsewhere (the torch index's owner thread): the batcher then pipelines (see
# PIPELINE_DEPTH). The fourth argument is passed only when a request sent a knob override.
SearchFn = Callable[..., "tuple[np.ndarray, np.ndarray] | Future[tuple[np.ndarray, np.ndarray]]"]

# Batch forming: when the lane frees up and fewer queries wait than the last batch held (its callers
# are still reading their answers and sending the next request), wait a little for them rather than
# run a sliver: a Flat scan costs nearly as much for 1 query as for 64. Bounded by a fraction of the
# last batch's compute time, so the wait never costs more than a small share of a batch.
GATHER_FRACTION = 0.2
GATHER_MAX_S = 0.1
# Two-stage batches (a search fn that returns a Future: encoded in the lane, searched on the index's
# owner thread): batches handed to the search stage and not yet answered, at most. 2 = one searching
# while the next is encoded, so the lane encodes batch N+1 while batch N is searched, and no further.
PIPELINE_DEPTH = 2


@dataclass
class _Job:
    queries: list[str]
    topk: int
    future: asyncio.Future[tuple[np.ndarray, np.ndarray]]
    enqueued: float = field(default_factory=time.perf_counter)
    params: dict[str, int] | None = None  # per-request knob override: batched only with equal ones


class Scheduler:
    """Common admission accounting."""

    def __init__(
        self, search: SearchFn, max_queue: int, max_queue_wait_s: float = 0.0, max_batch_size: int = 1
    ) -> None:
        self._search = search
        self.max_queue = max_queue
        self.max_queue_wait_s = max_queue_wait_s
        self.max_batch_size = max_batch_size
        self.queued_queries = 0  # waiting plus running
        self.running_queries = 0  # in the batch being computed
        self.running_since = 0.0  # perf_counter() when it started
        self.batch_cost = BatchCostModel()  # batch time against batch size, learned from the batches run

    def _observe_batch(self, queries: int, seconds: float) -> None:
        self.batch_cost.observe(queries, seconds)

    def estimated_wait_s(self, count: int) -> float:
        """Seconds until `count` more queries would be answered, from the batches the queue would form."""
        waiting = self.queued_queries - self.running_queries
        running_for_s = time.perf_counter() - self.running_since if self.running_queries else 0.0
        return self.batch_cost.estimated_wait_s(
            waiting, count, self.max_batch_size, self.running_queries, running_for_s
        )

    def refusal(self, count: int) -> Overloaded | None:
        """The refusal `count` more queries would meet now, or None when they would be admitted."""
        if self.queued_queries + count > self.max_queue and self.queued_queries > 0:
            return Overloaded(
                f"overloaded: {self.queued_queries} queries already waiting (limit {self.max_queue}); retry later"
            )
        if self.max_queue_wait_s and self.queued_queries > 0:
            # A count alone cannot bound the wait: it depends on the machine and the index. Refuse
            # when the work ahead would take longer than a client should wait (verl gives up at 30 s),
            # costing it as the batches it will form (a Flat batch of 64 costs about what 1 does).
            wait_s = self.estimated_wait_s(count)
            if wait_s > self.max_queue_wait_s:
                return Overloaded(
                    f"overloaded: about {wait_s:.1f} s of work already waiting "
                    f"(limit {self.max_queue_wait_s:g} s); retry later"
                )
        return None

    def _admit(self, count: int) -> None:
        refused = self.refusal(count)
        if refused is not None:
            raise refused
        self.queued_queries += count
        metrics.QUEUE_DEPTH.set(self.queued_queries)

    def _release(self, count: int) -> None:
        self.queued_queries -= count
        metrics.QUEUE_DEPTH.set(self.queued_queries)

    async def start(self) -> None:
        return None

    async def stop(self) -> None:
        return None

    def waiting(self) -> bool:
        """Admitted queries not answered yet (background work yields to them)."""
        return self.queued_queries > 0

    async def submit(
        self, queries: list[str], topk: int, params: dict[str, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError


class MicroBatcher(Scheduler):
    def __init__(
        self,
        search: SearchFn,
        max_batch_size: int,
        max_wait_ms: float,
        max_queue: int,
        threads: int = 0,
        max_queue_wait_s: float = 0.0,
    ) -> None:
        super().__init__(search, max_queue, max_queue_wait_s, max_batch_size)
        self.max_wait_s = max_wait_ms / 1000.0
        self._pending: deque[_Job] = deque()
        self._wakeup = asyncio.Event()
        # One lane: batches run one after another, each on every core (threads: 0 = all cores).
        self.lane = ComputeLane(threads)
        self._task: asyncio.Task[None] | None = None
        self._last_size = 0
        self._last_compute_s = 0.0
        self._searching: deque[asyncio.Future[None]] = deque()

    async def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="micro-batcher")

    def waiting(self) -> bool:
        """Queries waiting for the lane (those of the running batch are not: the lane has them)."""
        return bool(self._pending)

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
        for searching in self._searching:  # handed to the index owner: let them finish
            with contextlib.suppress(Exception, asyncio.CancelledError):
                await searching
        self._fail(list(self._pending), "search failed: server is shutting down")
        self.lane.shutdown()

    @staticmethod
    def _fail(jobs: list[_Job], detail: str, failure: BatchFailed | None = None) -> None:
        """Fail the jobs with `failure` (a backend's own error, kept as it is) or a BatchFailed(detail)."""
        for job in jobs:
            if not job.future.done():
                job.future.set_exception(failure or BatchFailed(detail))

    async def submit(
        self, queries: list[str], topk: int, params: dict[str, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        self._admit(len(queries))
        job = _Job(queries, topk, asyncio.get_running_loop().create_future(), params=params or None)
        self._pending.append(job)
        self._wakeup.set()
        return await job.future

    def _take_batch(self) -> list[_Job]:
        jobs: list[_Job] = []
        size = 0
        while self._pending:
            job = self._pending[0]
            if job.future.done():  # caller went away while waiting
                self._pending.popleft()
                self._release(len(job.queries))
                continue
            if jobs and (size + len(job.queries) > self.max_batch_size or job.params != jobs[0].params):
                break
            self._pending.popleft()
            jobs.append(job)
            size += len(job.queries)
        return jobs

    async def _run(self) -> None:
        loop = asyncio.get_running_loop()
        while True:
            if not self._pending:
                self._wakeup.clear()
                await self._wakeup.wait()
            if self.max_wait_s and self.queued_queries < self.max_batch_size:
                await asyncio.sleep(self.max_wait_s)
            else:
                await self._gather()
            jobs = self._take_batch()
            if not jobs:
                continue
            await self._execute(loop, jobs)

    async def _gather(self) -> None:
        """Wait (briefly) for the callers of the last batch to come back, so batches stay whole."""
        target = min(self._last_size, self.max_batch_size)
        if self.queued_queries >= target:
            return
        deadline = time.perf_counter() + min(GATHER_FRACTION * self._last_compute_s, GATHER_MAX_S)
        while self.queued_queries < target:
            remaining = deadline - time.perf_counter()
            if remaining <= 0:
                return
            self._wakeup.clear()
            with contextlib.suppress(asyncio.TimeoutError):
                await asyncio.wait_for(self._wakeup.wait(), remaining)

    async def _execute(self, loop: asyncio.AbstractEventLoop, jobs: list[_Job]) -> None:
        started = time.perf_counter()
        texts = [query for job in jobs for query in job.queries]
        topk = max(job.topk for job in jobs)
        for job in jobs:
            metrics.STAGE_SECONDS.labels("queue_wait").observe(started - job.enqueued)
        metrics.BATCH_SIZE.observe(len(texts))
        self.running_queries, self.running_since = len(texts), time.perf_counter()
        handed_over = False
        try:
            extra = (jobs[0].params,) if jobs[0].params else ()  # only when a request sent an override
            outcome = await loop.run_in_executor(
                self.lane.executor, self._search, texts, topk, self.lane.helpers, *extra
            )
            if isinstance(outcome, Future):  # encoded; the search runs on the index owner (--pipeline)
                handed_over = True
                self._searching.append(asyncio.ensure_future(self._complete(jobs, texts, started, outcome)))
            else:
                scores, ids = outcome
        except Exception as exc:  # one failed batch fails only its own requests
            if isinstance(exc, BatchFailed):  # a backend's own answer (e.g. its encoder service is down)
                log.warning("batch of %d queries failed: %s", len(texts), exc)
                self._fail(jobs, exc.detail, exc)
            else:
                log.exception("batch of %d queries failed", len(texts))
                self._fail(jobs, f"search failed: {type(exc).__name__}: {exc}")
            return
        except asyncio.CancelledError:  # stop() while this batch runs: its callers must not wait forever
            self._fail(jobs, "search failed: server is shutting down")
            raise
        finally:
            self.running_queries = 0
            if not handed_over:
                self._account(texts, started)
        if handed_over:
            # Form the next batch at once, unless PIPELINE_DEPTH batches are already handed over: then
            # wait for the oldest (a bounded hand-off: encode N+1 while N is searched, no further).
            while len(self._searching) >= PIPELINE_DEPTH or (self._searching and self._searching[0].done()):
                await self._searching.popleft()
            return
        self._deliver(jobs, scores, ids)

    async def _complete(
        self, jobs: list[_Job], texts: list[str], started: float, pending: Future[tuple[np.ndarray, np.ndarray]]
    ) -> None:
        """The search stage of a pipelined batch: answer its callers when the index owner is done."""
        try:
            scores, ids = await asyncio.wrap_future(pending)
        except Exception as exc:
            log.error("batch of %d queries failed", len(texts), exc_info=exc)
            self._fail(jobs, f"search failed: {type(exc).__name__}: {exc}")
            return
        except asyncio.CancelledError:
            self._fail(jobs, "search failed: server is shutting down")
            raise
        finally:
            self._account(texts, started)
        self._deliver(jobs, scores, ids)

    def _account(self, texts: list[str], started: float) -> None:
        self._release(len(texts))
        self._last_size, self._last_compute_s = len(texts), time.perf_counter() - started
        self._observe_batch(len(texts), self._last_compute_s)

    @staticmethod
    def _deliver(jobs: list[_Job], scores: np.ndarray, ids: np.ndarray) -> None:
        row = 0
        for job in jobs:
            count = len(job.queries)
            if not job.future.done():
                job.future.set_result((scores[row : row + count, : job.topk], ids[row : row + count, : job.topk]))
            row += count


class PerRequestRunner(Scheduler):
    def __init__(self, search: SearchFn, threads: int, max_queue: int) -> None:
        super().__init__(search, max_queue)
        self._executor = ThreadPoolExecutor(max_workers=threads, thread_name_prefix="request")

    async def stop(self) -> None:
        self._executor.shutdown(wait=False, cancel_futures=True)

    async def submit(
        self, queries: list[str], topk: int, params: dict[str, int] | None = None
    ) -> tuple[np.ndarray, np.ndarray]:
        self._admit(len(queries))
        loop = asyncio.get_running_loop()
        enqueued = time.perf_counter()

        def run() -> tuple[np.ndarray, np.ndarray]:
            metrics.STAGE_SECONDS.labels("queue_wait").observe(time.perf_counter() - enqueued)
            metrics.BATCH_SIZE.observe(len(queries))
            return self._search(queries, topk, None, params) if params else self._search(queries, topk, None)

        try:
            return await loop.run_in_executor(self._executor, run)
        except BatchFailed:
            raise
        except Exception as exc:
            raise BatchFailed(f"search failed: {type(exc).__name__}: {exc}") from exc
        finally:
            self._release(len(queries))
