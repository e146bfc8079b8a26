"""No duplicate work: identical queries are computed once, and repeated searches come from a cache.

GRPO samples 5-16 rollouts per prompt that often open with the same search, and evaluation re-runs
the same prompts. In front of the scheduler, per query (text + topk):
- a cached answer (`app.result_cache`, when on) is used as it is;
- an identical query already in flight (another request's, or earlier in the same request) is
  joined: its answer is fanned out to every request that asked;
- only the rest is submitted, once each, to the scheduler (and so to one batch).
The cache key holds the index generation and the model, so an answer never crosses an index
swap or a model change.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass

import numpy as np

from app import metrics
from app.result_cache import CacheKey, ResultCache

Submit = Callable[[list[str], int], Awaitable[tuple[np.ndarray, np.ndarray]]]
Answer = tuple[np.ndarray, np.ndarray]  # one query's (scores, ids), each (topk,)


@dataclass(frozen=True)
class Version:
    """What an answer depends on besides the query: which index (and which load of it) and model."""

    index: str
    model: str


class QuerySharing:
    def __init__(self, submit: Submit, cache: ResultCache | None, dedup: bool) -> None:
        self._submit, self.cache, self.dedup = submit, cache, dedup
        self._in_flight: dict[CacheKey, asyncio.Future[Answer]] = {}

    async def search(self, queries: list[str], topk: int, version: Version) -> tuple[np.ndarray, np.ndarray]:
        if self.cache is None and not self.dedup:
            return await self._submit(queries, topk)
        keys = [CacheKey(version.index, version.model, query, topk) for query in queries]
        answers: list[Answer | None] = [None] * len(queries)
        joined: dict[int, asyncio.Future[Answer]] = {}
        owned: dict[CacheKey, asyncio.Future[Answer]] = {}
        for position, key in enumerate(keys):
            cached = self.cache.get(key) if self.cache is not None else None
            if cached is not None:
                answers[position] = cached
                metrics.RESULT_CACHE_LOOKUPS.labels("hit").inc()
                continue
            if self.cache is not None:
                metrics.RESULT_CACHE_LOOKUPS.labels("miss").inc()
            future = self._in_flight.get(key) if self.dedup else None
            if future is not None or key in owned:
                joined[position] = future if future is not None else owned[key]
                metrics.DEDUPLICATED_QUERIES.inc()
                continue
            future = asyncio.get_running_loop().create_future()
            owned[key] = future
            if self.dedup:
                self._in_flight[key] = future
        if owned:
            await self._compute(list(owned), topk, owned)
        for position, future in joined.items():
            answers[position] = await self._joined(future, keys[position], topk)
        for key, future in owned.items():
            if future.done() and not future.cancelled() and future.exception() is None:
                for position, other in enumerate(keys):
                    if other == key and answers[position] is None:
                        answers[position] = future.result()
        return _stack(answers)

    async def _compute(self, keys: list[CacheKey], topk: int, owned: dict[CacheKey, asyncio.Future[Answer]]) -> None:
        try:
            scores, ids = await self._submit([key.query for key in keys], topk)
        except BaseException as exc:
            for key in keys:
                future = owned[key]
                if not future.done():
                    # Joiners learn why; a caller that went away (cancelled) lets them compute it themselves.
                    if isinstance(exc, asyncio.CancelledError):
                        future.cancel()
                    else:
                        future.set_exception(exc)
                        future.exception()  # retrieved: no "never retrieved" warning when nobody joined
            raise
        finally:
            for key in keys:
                if self._in_flight.get(key) is owned[key]:
                    del self._in_flight[key]
        for row, key in enumerate(keys):
            answer = (scores[row], ids[row])
            owned[key].set_result(answer)
            if self.cache is not None:
                self.cache.put(key, *answer)
        if self.cache is not None:
            metrics.RESULT_CACHE_ENTRIES.set(len(self.cache))
            metrics.RESULT_CACHE_BYTES.set(self.cache.bytes)

    async def _joined(self, future: asyncio.Future[Answer], key: CacheKey, topk: int) -> Answer:
        try:
            return await asyncio.shield(future)
        except asyncio.CancelledError:
            if not future.cancelled():
                raise  # this caller itself went away
        # The request computing it went away before the answer: compute it here.
        scores, ids = await self._submit([key.query], topk)
        return scores[0], ids[0]


def _stack(answers: list[Answer | None]) -> tuple[np.ndarray, np.ndarray]:
    assert all(answer is not None for answer in answers)
    width = min(len(answer[1]) for answer in answers)  # type: ignore[index]
    scores = np.stack([answer[0][:width] for answer in answers])  # type: ignore[index]
    ids = np.stack([answer[1][:width] for answer in answers])  # type: ignore[index]
    return scores, ids
