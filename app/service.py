"""The retriever: encoder + index + corpus, loaded from settings, with its readiness status."""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from app import __version__, metrics
from app.batcher import current_helpers
from app.corpus import CorpusError, CorpusStore, convert_jsonl
from app.demo import _locked, ensure_demo_index
from app.encoder import EncoderConfig, SentenceTransformerEncoder, resolve_model
from app.index import FaissIndex
from app.manifest import CORPUS_DIR, INDEX_FILE, MANIFEST_FILE, Manifest
from app.settings import Settings

log = logging.getLogger(__name__)


class LoadError(Exception):
    """Startup cannot complete; the message names the file or setting and the problem."""


@dataclass
class Status:
    """What /health and /info report; written by the loader thread, read by the event loop."""

    state: str = "loading"  # loading | ready | failed | shutting_down
    stage: str = "starting"
    progress: float = 0.0
    message: str = ""
    warmup: str = "off"  # off | running | done | failed
    warmup_progress: float = 0.0
    started_at: float = field(default_factory=time.time)
    ready_after_s: float | None = None

    def set_stage(self, stage: str, progress: float = 0.0) -> None:
        self.stage, self.progress = stage, progress
        log.info("loading: %s", stage)

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": self.state,
            "stage": self.stage,
            "progress": round(self.progress, 3),
        }
        if self.message:
            body["message"] = self.message
        body["warmup"] = {"state": self.warmup, "progress": round(self.warmup_progress, 3)}
        body["uptime_s"] = round(time.time() - self.started_at, 1)
        if self.ready_after_s is not None:
            body["ready_after_s"] = round(self.ready_after_s, 2)
        return body


@dataclass
class Sources:
    index_path: Path
    corpus_dir: Path
    manifest: Manifest | None


class Retriever:
    def __init__(self, encoder: SentenceTransformerEncoder, index: FaissIndex, corpus: CorpusStore) -> None:
        self.encoder, self.index, self.corpus = encoder, index, corpus

    def search(self, queries: list[str], topk: int) -> tuple[np.ndarray, np.ndarray]:
        # In a batching lane, both stages share the batch with the lane's helper threads.
        helpers = current_helpers()
        started = time.perf_counter()
        vectors = self.encoder.encode(queries, helpers) if helpers else self.encoder.encode(queries)
        encoded = time.perf_counter()
        scores, ids = self.index.search(vectors, topk, helpers) if helpers else self.index.search(vectors, topk)
        metrics.STAGE_SECONDS.labels("encode").observe(encoded - started)
        metrics.STAGE_SECONDS.labels("search").observe(time.perf_counter() - encoded)
        return scores, ids

    def render(self, scores: np.ndarray, ids: np.ndarray, return_scores: bool) -> bytes:
        """Search-R1's response, with each stored row spliced in as-is (no parse, no re-encode)."""
        row_bytes = self.corpus.row_bytes
        per_query: list[bytes] = []
        for query_scores, query_ids in zip(scores.tolist(), ids.tolist(), strict=True):
            if return_scores:
                items = [
                    b'{"document":' + row_bytes(i) + b',"score":' + repr(s).encode() + b"}"
                    for s, i in zip(query_scores, query_ids, strict=True)
                    if i >= 0
                ]
            else:
                items = [row_bytes(i) for i in query_ids if i >= 0]
            per_query.append(b"[" + b",".join(items) + b"]")
        return b'{"result":[' + b",".join(per_query) + b"]}"


def _corpus_cache_dir(corpus_path: Path, data_dir: Path) -> Path:
    beside = corpus_path.parent / f"{corpus_path.name}.store"
    if os.access(corpus_path.parent, os.W_OK):
        return beside
    digest = hashlib.sha1(str(corpus_path.resolve()).encode()).hexdigest()[:12]
    return data_dir / "corpora" / f"{corpus_path.name}-{digest}.store"


def ensure_corpus_store(corpus_path: Path, data_dir: Path, status: Status | None = None) -> Path:
    """Convert a Search-R1 jsonl into a store once; reuse it while the source is unchanged."""
    if not corpus_path.is_file():
        raise LoadError(f"{corpus_path}: corpus file not found")
    stat = corpus_path.stat()
    source = {"path": str(corpus_path.resolve()), "bytes": stat.st_size, "mtime_ns": stat.st_mtime_ns}
    store_dir = _corpus_cache_dir(corpus_path, data_dir)
    marker = store_dir / "source.json"

    def current() -> bool:
        try:
            return json.loads(marker.read_text())["source"] == source
        except (OSError, ValueError, KeyError):
            return False

    if current():
        return store_dir
    with _locked(store_dir.parent / f".{store_dir.name}.lock"):
        if current():
            return store_dir
        tmp = store_dir.parent / f".{store_dir.name}.converting-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        done = 0

        def on_bytes(count: int) -> None:
            nonlocal done
            done += count
            if status is not None:
                status.progress = done / max(stat.st_size, 1)

        if status is not None:
            status.set_stage(f"converting corpus {corpus_path.name} (once, cached in {store_dir})")
        try:
            report = convert_jsonl(corpus_path, tmp, skip_invalid=False, on_bytes=on_bytes)
            (tmp / "source.json").write_text(json.dumps({"source": source, "rows": report.rows}))
            shutil.rmtree(store_dir, ignore_errors=True)
            os.rename(tmp, store_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("converted %s: %d rows, %d blank lines", corpus_path, report.rows, report.blank_lines)
    return store_dir


def resolve_sources(settings: Settings, status: Status) -> Sources:
    if settings.index_path is not None or settings.corpus_path is not None:
        if settings.index_path is None or settings.corpus_path is None:
            raise LoadError("--index-path and --corpus-path go together (a bare FAISS index and its passages jsonl)")
        if not settings.index_path.is_file():
            raise LoadError(f"{settings.index_path}: index file not found")
        corpus_dir = ensure_corpus_store(settings.corpus_path, settings.data_dir, status)
        return Sources(settings.index_path, corpus_dir, None)
    index_dir = settings.index_dir
    if index_dir is None:
        status.set_stage("building the demo index (first start only)")
        index_dir = ensure_demo_index(
            settings.data_dir, settings.demo_limit, on_progress=lambda f: setattr(status, "progress", f)
        )
    manifest = Manifest.read(index_dir)
    if settings.verify_checksums:
        status.set_stage("verifying checksums")
    manifest.check_files(index_dir, checksums=settings.verify_checksums)
    return Sources(index_dir / INDEX_FILE, index_dir / CORPUS_DIR, manifest)


def load(settings: Settings, status: Status) -> Retriever:
    sources = resolve_sources(settings, status)
    manifest = sources.manifest
    if manifest is not None and settings.normalize is not None and settings.normalize != manifest.normalize:
        raise LoadError(
            f"{sources.index_path.parent / MANIFEST_FILE}: the index was built with normalize={manifest.normalize} "
            f"but normalize={settings.normalize} was asked (RETRIEVER_NORMALIZE); inner-product scores would be wrong"
        )
    model = settings.model or (manifest.model if manifest else None)
    status.set_stage(f"loading model {model or 'bundled demo model'}")
    encoder = SentenceTransformerEncoder(
        EncoderConfig(
            model=resolve_model(model),
            prefix=settings.query_prefix
            if settings.query_prefix is not None
            else (manifest.query_prefix if manifest else ""),
            normalize=settings.normalize
            if settings.normalize is not None
            else (manifest.normalize if manifest else True),
            max_length=settings.max_length or (manifest.max_length if manifest else None),
            device=settings.device,
            batch_size=settings.max_batch_size,
            allow_download=settings.allow_download,
        )
    )
    if settings.threads:
        import torch

        torch.set_num_threads(settings.threads)
    status.set_stage(f"loading index {sources.index_path}")
    index = FaissIndex(sources.index_path, use_mmap=settings.mmap, threads=settings.threads)
    index.set_search_params(settings.nprobe, settings.ef_search)
    if index.dimension != encoder.dimension:
        raise LoadError(
            f"{sources.index_path}: index dimension {index.dimension} does not match model "
            f"{encoder.name} (dimension {encoder.dimension}); pass the model the index was built with"
        )
    if manifest is not None and manifest.metric != index.metric:
        raise LoadError(f"{sources.index_path}: metric {index.metric} but the manifest says {manifest.metric}")
    status.set_stage("opening corpus store")
    try:
        corpus = CorpusStore(sources.corpus_dir)
    except CorpusError as exc:
        raise LoadError(str(exc)) from None
    if corpus.count != index.count:
        raise LoadError(
            f"{sources.corpus_dir}: corpus has {corpus.count} rows but the index {sources.index_path} "
            f"has {index.count} vectors; they must match row for row"
        )
    retriever = Retriever(encoder, index, corpus)
    status.set_stage("self-test query")
    if not index.self_test(encoder.encode(["health check"])):
        raise LoadError(f"{sources.index_path}: self-test query returned no result")
    metrics.INDEX_VECTORS.set(index.count)
    metrics.INDEX_BYTES.set(index.nbytes)
    metrics.CORPUS_BYTES.set(corpus.nbytes)
    metrics.INDEX_LOAD_SECONDS.set(index.load.seconds)
    metrics.INFO.labels(__version__, encoder.name, index.type_name, str(index.load.mapped).lower()).set(1)
    return retriever


WARMUP_STEP_BYTES = 64 * 1024 * 1024


def warm_up(retriever: Retriever, status: Status, step: int = WARMUP_STEP_BYTES) -> None:
    """Read the mapped index and corpus files into the page cache, so the first queries are not
    disk-bound (sequential reads: far faster than page faults on a cold cache, see touch_pages).

    The pages land in the page cache, shared by every worker. Progress (0..1 over index + corpus
    bytes) shows in /health and /info (`warmup`) and in retriever_warmup_progress; while readiness
    waits for the warm-up (--ready-before-warmup off) it is also the loading stage and progress.
    An index loaded into memory (not mapped) has nothing to warm: only the corpus is read.
    """
    blocking = status.state == "loading"
    status.warmup, status.warmup_progress = "running", 0.0
    metrics.WARMUP_PROGRESS.set(0.0)
    if blocking:
        status.set_stage("warming up: reading the index and corpus pages into the page cache")
    index_bytes = retriever.index.nbytes if retriever.index.load.mapped else 0
    sizes = index_bytes, retriever.corpus.nbytes
    total = max(sum(sizes), 1)
    started = time.perf_counter()

    def report(done: float) -> None:
        status.warmup_progress = min(1.0, done / total)
        if blocking:
            status.progress = status.warmup_progress
        metrics.WARMUP_PROGRESS.set(status.warmup_progress)

    try:
        if index_bytes:
            retriever.index.touch_pages(lambda fraction: report(fraction * sizes[0]), step)
        retriever.corpus.touch_pages(lambda fraction: report(sizes[0] + fraction * sizes[1]), step)
    except Exception as exc:  # warm-up is an optimisation; serving goes on
        log.warning("warm-up failed: %s", exc)
        status.warmup = "failed"
        return
    status.warmup, status.warmup_progress = "done", 1.0
    metrics.WARMUP_PROGRESS.set(1.0)
    log.info("warm-up done: %.1f MiB in %.2fs", sum(sizes) / 2**20, time.perf_counter() - started)


def info(retriever: Retriever, settings: Settings, status: Status) -> dict[str, Any]:
    index, encoder = retriever.index, retriever.encoder
    return {
        "version": __version__,
        "model": {
            "name": encoder.name,
            "dimension": encoder.dimension,
            "query_prefix": encoder.config.prefix,
            "normalize": encoder.config.normalize,
            "max_length": encoder.max_length,
            "device": settings.device,
        },
        "index": {
            "path": str(index.path),
            "type": index.type_name,
            "metric": index.metric,
            "vectors": index.count,
            "dimension": index.dimension,
            "bytes": index.nbytes,
            "mmap": index.load.mapped,
            "load": index.load.note,
            "load_seconds": round(index.load.seconds, 4),
            "search_params": index.search_params(),
        },
        "corpus": {
            "path": str(retriever.corpus.directory),
            "rows": retriever.corpus.count,
            "bytes": retriever.corpus.nbytes,
        },
        "batching": {
            "enabled": settings.batching,
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
            "max_query_tokens": encoder.max_length,
        },
        "warmup": {"state": status.warmup, "progress": round(status.warmup_progress, 3)},
        "pid": os.getpid(),
    }


class Loader(threading.Thread):
    """Loads in the background so /livez and /health answer (503 with progress) during a slow start."""

    def __init__(self, settings: Settings, status: Status) -> None:
        super().__init__(name="loader", daemon=True)
        self.settings, self.status = settings, status
        self.retriever: Retriever | None = None

    def run(self) -> None:
        try:
            retriever = load(self.settings, self.status)
        except Exception as exc:  # every load error becomes a readiness failure with its message
            self.status.state, self.status.message = "failed", str(exc)
            log.error("startup failed: %s", exc)
            return
        self.retriever = retriever
        if self.settings.warmup and not self.settings.ready_before_warmup:
            warm_up(retriever, self.status)
        self.status.stage, self.status.progress = "serving", 1.0
        self.status.ready_after_s = time.time() - self.status.started_at
        if self.status.state == "loading":
            self.status.state = "ready"
            metrics.READY.set(1)
        log.info("ready after %.1fs", self.status.ready_after_s)
        if self.settings.warmup and self.settings.ready_before_warmup:
            warm_up(retriever, self.status)
