"""The engine: one object that loads, answers searches, reports readiness and stops.

    engine = Engine(settings)            # or Engine.from_parts(encoder, index, corpus, settings)
    await engine.start()                 # loading runs on a background thread; returns at once
    await engine.wait_ready()            # optional: until it serves (raises LoadError if loading failed)
    result = await engine.search(["who wrote the aeneid"], topk=3)
    result.scores, result.ids, result.row_bytes(int(result.ids[0, 0]))
    await engine.stop()

It owns the loading (`app.service.load` on a thread, progress in `engine.status`), the scheduler
(`app.batcher.MicroBatcher`, or `PerRequestRunner` with `--batching off`) and readiness. Searches
that cannot be answered raise the domain errors of `app.errors` (`NotReady`, `BadRequest`,
`Overloaded`, `BatchFailed`); the HTTP face (`app.api`) maps them to statuses in one place.

Where new things plug in:
- An encoder backend: implement `app.backends.Encoder` (name, dimension, max_length,
  encode(texts, helpers), describe()) in its own module. Add its option to `Settings` (it becomes
  a `retriever serve` flag and a `RETRIEVER_*` variable by itself), carry it in
  `app.spec.EncoderSpec` (resolved once from settings + manifest), and return your backend from
  `app.service.open_encoder(spec)` when the spec asks for it.
- An index backend: implement `app.backends.VectorIndex` (count, dimension, metric, nbytes,
  type_name, mapped, load_seconds, search(vectors, topk, helpers), self_test, touch_pages,
  describe()); carry its option in `app.spec.IndexSpec` and return it from
  `app.service.open_index(spec)`.
- Tests and benchmarks that already hold the parts: `Engine.from_parts(encoder, index, corpus)`.
- An HTTP route: a module-level handler on `app.api.router` (or your own `APIRouter`, included
  in `app.api.build_app`); take the engine as a parameter `engine: EngineDep` (`app.api`), and
  raise `app.errors` classes (a new class gets its status in `app.api.ERROR_STATUS`).
"""

from __future__ import annotations

import asyncio
import contextlib
import gc
import logging
import os
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from app import __version__, metrics
from app.backends import Encoder, VectorIndex
from app.batcher import MicroBatcher, PerRequestRunner, Scheduler
from app.corpus import CorpusReadError, CorpusStore
from app.errors import BadRequest, LoadError, NotReady, Overloaded, StoreUnavailable
from app.lanes import ComputeLane
from app.result_cache import ResultCache
from app.schemas import RequestLimits
from app.service import Retriever, Status, full_query, load, stages, warm_up
from app.settings import Settings
from app.sharing import QuerySharing, Version

log = logging.getLogger(__name__)


@dataclass
class Serving:
    """One loaded index with its own scheduler: what a search binds to when it is admitted."""

    retriever: Retriever
    scheduler: Scheduler
    sharing: QuerySharing
    generation: int
    active: int = 0  # searches admitted and not yet answered
    retired: bool = False  # a newer one took over: release once `active` reaches 0


@dataclass(frozen=True)
class SearchResult:
    """One result list per query, in order: `scores` and `ids` are (queries, topk), best first;
    an id of -1 marks a missing hit (fewer rows than topk). `row_bytes(id)` is a corpus row."""

    scores: np.ndarray
    ids: np.ndarray
    corpus: CorpusStore

    def row_bytes(self, row: int) -> bytes:
        return self.corpus.row_bytes(row)


class Engine:
    """Loads in the background, then answers searches through its scheduler; see the module doc."""

    def __init__(self, settings: Settings | None = None, retriever: Retriever | None = None) -> None:
        self.settings = settings or Settings()
        self.status = Status()
        self.limits = RequestLimits.from_settings(self.settings)
        self.inflight = 0
        self._retriever = retriever  # given (from_parts) or set by the loader thread; the newest loaded
        self._current: Serving | None = None  # what new searches use; replaced by a hot swap
        self._reloading: asyncio.Task[None] | None = None
        # A reload asked while the first load (or, by signal, another reload) runs: that load may have
        # read the old `current` link, so this one runs when it ends (its target; True: --index-dir).
        self._reload_pending: Path | bool = False
        self.last_reload: dict[str, Any] | None = None  # outcome of the latest reload, for /health and /info
        self._serving: asyncio.Task[None] | None = None
        self._failure_listeners: list[Callable[[str], None]] = []
        self._generation = 0  # bumped for every retriever installed: part of every cache key
        cache = None
        if self.settings.result_cache:
            cache = ResultCache(
                self.settings.result_cache_entries, self.settings.result_cache_bytes, metrics.RESULT_CACHE_EVICTIONS.inc
            )
        self.result_cache = cache

    @classmethod
    def from_parts(
        cls, encoder: Encoder, index: VectorIndex, corpus: CorpusStore, settings: Settings | None = None
    ) -> Engine:
        """An engine over backends already built (tests, benchmarks): no loading from files."""
        return cls(settings, Retriever(encoder, index, corpus))

    # -- state -------------------------------------------------------------------------------

    @property
    def retriever(self) -> Retriever | None:
        """The loaded parts (None while loading); /info shows them as soon as they exist."""
        return self._retriever

    @property
    def corpus(self) -> CorpusStore | None:
        return self._retriever.corpus if self._retriever is not None else None

    @property
    def _scheduler(self) -> Scheduler | None:
        return self._current.scheduler if self._current is not None else None

    @property
    def serving_version(self) -> str | None:
        """The version of the index new searches use (a hot swap changes it)."""
        return self._current.retriever.version if self._current is not None else None

    @property
    def ready(self) -> bool:
        """Serving searches: loaded, the scheduler running, and not shutting down."""
        return self.status.state == "ready" and self._current is not None

    @property
    def lane(self) -> ComputeLane | None:
        """The compute lane batches run on (None before serving, or with batching off)."""
        return self._scheduler.lane if isinstance(self._scheduler, MicroBatcher) else None

    def on_load_failed(self, listener: Callable[[str], None]) -> None:
        """Call `listener(message)` (on the event loop) if loading fails; the server exits on it."""
        self._failure_listeners.append(listener)

    # -- lifecycle ---------------------------------------------------------------------------

    async def start(self) -> None:
        """Begin loading on a background thread (so /health and /livez answer meanwhile); the
        scheduler starts on this event loop once loading is done."""
        if self._serving is not None:
            return
        metrics.READY.set(0)
        loop = asyncio.get_running_loop()
        loaded: asyncio.Future[Retriever] = loop.create_future()
        if self._retriever is not None:
            loaded.set_result(self._retriever)
        else:
            threading.Thread(target=self._load, args=(loop, loaded), name="loader", daemon=True).start()
        self._serving = asyncio.create_task(self._serve_when_loaded(loaded), name="engine-start")

    async def wait_ready(self) -> None:
        """Until the engine serves; LoadError with the loader's message if loading failed."""
        if self._serving is None:
            raise RuntimeError("Engine.start() was not called")
        await asyncio.shield(self._serving)
        if self.status.state == "failed":
            raise LoadError(self.status.message)

    def begin_shutdown(self) -> None:
        """First SIGTERM: fail readiness at once so endpoints drop this pod; keep serving meanwhile."""
        self.status.state = "shutting_down"
        metrics.READY.set(0)

    async def stop(self) -> None:
        """Refuse new searches, fail the queued ones, stop the scheduler. Loading in progress is
        abandoned (its thread is a daemon: it never holds the process up)."""
        self.begin_shutdown()
        if self._serving is not None:
            self._serving.cancel()
            self._serving = None
        if self._reloading is not None:
            self._reloading.cancel()
        if self._current is not None:
            await self._current.scheduler.stop()
            self._current = None

    def _load(self, loop: asyncio.AbstractEventLoop, loaded: asyncio.Future[Retriever]) -> None:
        """Loader thread: load (and warm up, when readiness waits for it), then hand over to the loop."""
        error: Exception | None = None
        try:
            retriever = load(self.settings, self.status)
            self._retriever = retriever
            if self.settings.warmup and not self.settings.ready_before_warmup:
                # Ready means fast: the files are in the page cache and a query over the whole
                # index has answered (its time shows in /health) before the pod takes traffic.
                warm_up(retriever, self.status)
                full_query(retriever, self.status)
        except Exception as exc:  # every load error becomes a readiness failure with its message
            self.status.state, self.status.message = "failed", str(exc)
            log.error("startup failed: %s", exc)
            error = exc

        def hand_over() -> None:
            if loaded.done():  # stopped meanwhile
                return
            if error is not None:
                loaded.set_exception(error)
            else:
                loaded.set_result(retriever)

        with contextlib.suppress(RuntimeError):  # the loop closed while loading: nobody waits any more
            loop.call_soon_threadsafe(hand_over)

    async def _serve_when_loaded(self, loaded: asyncio.Future[Retriever]) -> None:
        try:
            retriever = await loaded
        except Exception as exc:
            for listener in self._failure_listeners:
                listener(str(exc))
            return
        settings = self.settings
        await self._install(retriever)
        status = self.status
        status.stage, status.progress = "serving", 1.0
        status.ready_after_s = time.time() - status.started_at
        if status.state == "loading":  # not when a SIGTERM came first
            status.state = "ready"
            metrics.READY.set(1)
        log.info("ready after %.1fs", status.ready_after_s)
        self._run_pending_reload()
        if settings.warmup and settings.ready_before_warmup:
            threading.Thread(target=warm_up, args=(retriever, status), name="warm-up", daemon=True).start()

    async def _install(self, retriever: Retriever) -> None:
        """Start a scheduler over `retriever` and make it the one new searches use."""
        settings = self.settings
        scheduler: Scheduler
        if settings.batching:
            scheduler = MicroBatcher(
                retriever.search,
                settings.max_batch_size,
                settings.max_wait_ms,
                settings.max_queue,
                max_queue_wait_s=settings.max_queue_wait_s,
            )
        else:
            scheduler = PerRequestRunner(retriever.search, settings.per_request_threads, settings.max_queue)
        await scheduler.start()
        retriever.waiting = scheduler.waiting  # background work (the recall guard) yields to queued queries
        self._generation += 1
        sharing = QuerySharing(scheduler.submit, self.result_cache, settings.dedup_queries)
        self._retriever = retriever
        self._current = Serving(retriever, scheduler, sharing, self._generation)

    # -- hot swap ----------------------------------------------------------------------------

    def reload(self, index_dir: Path | None = None) -> bool:
        """Load `index_dir` (default: the configured --index-dir again, whose `current` link may
        point elsewhere now) in the background; when it has loaded and passed its self-test, new
        searches use it, batches already admitted finish on the old one, and the old one is then
        released (unmapped). False when a reload is already running; asked during the first load, it
        runs once that load serves. A failed load changes nothing but `last_reload` (the reason) and
        the metric."""
        if self._reloading is not None and not self._reloading.done():
            return False
        if self._current is None and self.status.state == "loading":
            self._reload_pending = index_dir or True
            log.info("reload asked during the first load: it runs once that load serves")
            return True
        target = index_dir or self.settings.index_dir
        self._reloading = asyncio.create_task(self._reload(target), name="index-reload")
        self._reloading.add_done_callback(lambda _: self._run_pending_reload())
        return True

    def reload_latest(self) -> None:
        """SIGHUP's reload: the configured --index-dir again, and never lost. Asked while another
        reload runs (it may have read the old link), it runs once more when that one ends."""
        if not self.reload():
            self._reload_pending = True

    def _run_pending_reload(self) -> None:
        if self._reload_pending and self.status.state in ("ready", "loading"):
            pending, self._reload_pending = self._reload_pending, False
            self.reload(pending if isinstance(pending, Path) else None)

    async def _reload(self, target: Path | None) -> None:
        started = time.time()
        self.last_reload = {"state": "loading", "target": str(target), "started_at": started}
        try:
            if target is None:
                raise LoadError("nothing to reload: the server was started without --index-dir")
            if self._current is None:
                raise LoadError("nothing to swap yet: the first load has not finished")
            settings = self.settings.model_copy(update={"index_dir": target, "index_path": None, "corpus_path": None})
            log.info("reload: loading %s", target)
            retriever = await asyncio.to_thread(load, settings, Status())
        except Exception as exc:  # any load error: the old index keeps serving
            log.error("reload of %s failed, still serving %s: %s", target, self.serving_version, exc)
            metrics.INDEX_SWAPS.labels("failed").inc()
            self.last_reload |= {"state": "failed", "message": str(exc), "seconds": round(time.time() - started, 2)}
            return
        old = self._current
        await self._install(retriever)
        metrics.INDEX_SWAPS.labels("ok").inc()
        self.last_reload |= {"state": "done", "version": retriever.version, "seconds": round(time.time() - started, 2)}
        log.info("reload: now serving %s (%s); draining the old index", retriever.version, target)
        old.retired = True
        if old.active == 0:
            await self._release(old)

    async def _release(self, serving: Serving) -> None:
        """The old index once its last admitted search is answered: stop its lane, drop its maps."""
        await serving.scheduler.stop()
        if serving.retriever.recall_guard is not None:
            serving.retriever.recall_guard.stop()
        # A device index (torch) frees its GPU memory and stops its owner thread now: its searches
        # all ran through the stopped scheduler.
        close_index = getattr(serving.retriever.index, "close", None)
        if close_index is not None:
            await asyncio.to_thread(close_index)
        # The index and corpus mappings go with their last reference (a response being rendered
        # may still hold the corpus for a moment): no explicit close under a reader. The retriever
        # and its scheduler point at each other (`waiting`, the bound search): break that cycle and
        # drop both, so the mappings go now, not at some later cyclic collection.
        serving.retriever.waiting = None
        serving.retriever = serving.scheduler = serving.sharing = None  # type: ignore[assignment]
        gc.collect()
        log.info("reload: old index released")

    # -- answering ---------------------------------------------------------------------------

    async def search(
        self, queries: list[str], topk: int | None, search_params: dict[str, int] | None = None
    ) -> SearchResult:
        """Top `topk` rows per query (None or 0: the default). `search_params`: a per-request
        nprobe / efSearch override (None: the server's settings). Raises NotReady, BadRequest
        (limits, invalid text, a knob the index lacks), Overloaded (refused at admission) or BatchFailed."""
        serving = self._current
        if serving is None:
            raise NotReady(self._not_ready_detail())
        topk = self.limits.check(queries, topk)
        retriever = serving.retriever
        params = check_search_params(search_params, retriever.index)
        self.inflight += 1
        serving.active += 1
        metrics.INFLIGHT.set(self.inflight)
        try:
            version = Version(f"{retriever.version}#{serving.generation}", retriever.encoder.name)
            if params:  # an override is never shared or cached: the cache keys hold no knobs
                scores, ids = await serving.scheduler.submit(queries, topk, params)
            else:
                scores, ids = await serving.sharing.search(queries, topk, version)
        finally:
            self.inflight -= 1
            serving.active -= 1
            metrics.INFLIGHT.set(self.inflight)
            if serving.retired and serving.active == 0:
                asyncio.get_running_loop().create_task(self._release(serving))
        try:
            retriever.corpus.check_readable()
        except CorpusReadError as exc:
            raise StoreUnavailable(str(exc)) from None
        return SearchResult(scores, ids, retriever.corpus)

    def _result_cache_info(self) -> dict[str, Any]:
        cache = self.result_cache
        if cache is None:
            return {"enabled": False}
        looked_up = cache.stats.hits + cache.stats.misses
        return {
            "enabled": True,
            "entries": len(cache),
            "bytes": cache.bytes,
            "max_entries": cache.max_entries,
            "max_bytes": cache.max_bytes,
            "hits": cache.stats.hits,
            "misses": cache.stats.misses,
            "evictions": cache.stats.evictions,
            "hit_rate": round(cache.stats.hits / looked_up, 4) if looked_up else None,
        }

    def refusal(self) -> Overloaded | None:
        """What a search of even one query would be refused with right now (None: it would be
        admitted, or the engine is not serving yet). The HTTP face asks before reading a body."""
        serving = self._current
        return serving.scheduler.refusal(1) if serving is not None else None

    def _not_ready_detail(self) -> str:
        status = self.status
        detail = f"not ready: {status.state} ({status.stage}, {status.progress:.0%})"
        if status.message:
            detail += f": {status.message}"
        return detail

    def info(self) -> dict[str, Any] | None:
        """/info's body once the parts are loaded (None before)."""
        retriever, settings, status = self._retriever, self.settings, self.status
        if retriever is None:
            return None
        return {
            "version": __version__,
            "index_version": self.serving_version,
            "last_reload": self.last_reload,
            "model": retriever.encoder.describe(),
            "index": retriever.index.describe() | {"recall_at_build": retriever.build_recall or None},
            "stages": stages(retriever),
            "corpus": {
                "path": str(retriever.corpus.directory),
                "rows": retriever.corpus.count,
                "bytes": retriever.corpus.nbytes,
            },
            "batching": {
                "enabled": settings.batching,
                "pipeline": retriever.pipeline,
                "max_batch_size": settings.max_batch_size,
                "max_wait_ms": settings.max_wait_ms,
                "max_queue": settings.max_queue,
                "overload_status": settings.overload_status,
            },
            "limits": {
                "default_topk": settings.default_topk,
                "max_topk": settings.max_topk,
                "max_queries_per_request": settings.max_queries_per_request,
                "max_body_bytes": settings.max_body_bytes,
                "max_query_tokens": retriever.encoder.max_length,
            },
            "result_cache": self._result_cache_info(),
            "recall_guard": retriever.recall_guard.snapshot() if retriever.recall_guard else None,
            "dedup_queries": settings.dedup_queries,
            "warmup": {"state": status.warmup, "progress": round(status.warmup_progress, 3)},
            "pid": os.getpid(),
        }


def check_search_params(asked: dict[str, int] | None, index: VectorIndex) -> dict[str, int] | None:
    """A request's knob override as the index can apply it; BadRequest naming the field otherwise."""
    if not asked:
        return None
    available: dict[str, int] = getattr(index, "search_params", dict)()
    for name, value in asked.items():
        if name not in available:
            raise BadRequest(f"search_params.{name}: the served index ({index.type_name}) has no {name}")
        if name == "nprobe" and value > available["nlist"]:
            raise BadRequest(f"search_params.nprobe: {value} exceeds the index's {available['nlist']} lists")
    return asked
