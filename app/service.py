"""Loading: settings (+ manifest) -> encoder + index + corpus (a `Retriever`), with progress in a `Status`.

`app.engine.Engine` runs `load` on a background thread, then serves the `Retriever` it returns.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from app import __version__, metrics
from app.backends import Encoder, VectorIndex
from app.corpus import CorpusError, CorpusStore, ensure_corpus_store
from app.demo import ensure_demo_index
from app.devices import DeviceError, resolve_device
from app.encoder import SentenceTransformerEncoder
from app.errors import LoadError
from app.importer import resolve_manifest_model
from app.index import FaissIndex
from app.index_torch import TorchFlatIndex, placement
from app.lanes import Helpers
from app.manifest import CORPUS_DIR, INDEX_FILE, MANIFEST_FILE, Manifest
from app.recall_guard import RecallGuard, start_guard
from app.settings import Settings
from app.spec import EncoderSpec, IndexSpec, resolve_encoder, resolve_index

log = logging.getLogger(__name__)


@dataclass
class Status:
    """What /health and /info report; written by the loader thread, read by the event loop."""

    state: str = "loading"  # loading | ready | failed | shutting_down
    stage: str = "starting"
    progress: float = 0.0
    message: str = ""
    warmup: str = "off"  # off | running | done | failed
    warmup_progress: float = 0.0
    warmup_resident: float | None = None  # share of the files already in the page cache at start
    warmup_seconds: float | None = None
    full_query_s: float | None = None  # one query over the whole index, before ready
    started_at: float = field(default_factory=time.time)
    ready_after_s: float | None = None

    def set_stage(self, stage: str, progress: float = 0.0) -> None:
        self.stage, self.progress = stage, progress
        log.info("loading: %s", stage)

    def set_progress(self, progress: float) -> None:
        self.progress = progress

    def as_dict(self) -> dict[str, Any]:
        body: dict[str, Any] = {
            "status": self.state,
            "stage": self.stage,
            "progress": round(self.progress, 3),
        }
        if self.message:
            body["message"] = self.message
        body["warmup"] = {"state": self.warmup, "progress": round(self.warmup_progress, 3)}
        if self.warmup_resident is not None:
            body["warmup_detail"] = {
                "resident_at_start": round(self.warmup_resident, 3),
                "seconds": None if self.warmup_seconds is None else round(self.warmup_seconds, 2),
                "full_query_s": None if self.full_query_s is None else round(self.full_query_s, 3),
            }
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
    """What a search needs: the encoder and index backends, and the corpus rows the ids point to."""

    def __init__(
        self, encoder: Encoder, index: VectorIndex, corpus: CorpusStore, version: str = "", pipeline: bool = False
    ) -> None:
        self.encoder, self.index, self.corpus = encoder, index, corpus
        # Which index this is (the manifest's checksum of the index file, else its size and mtime).
        self.version = version or f"{index.type_name}:{index.count}"
        # Two stages (encode here, search on the torch index's owner thread): the batcher then encodes
        # the next batch while this one is searched (--pipeline).
        self.pipeline = pipeline and isinstance(index, TorchFlatIndex)
        self.build_recall: dict[str, Any] = {}  # the manifest's recall report (`retriever convert`)
        self.recall_guard: RecallGuard | None = None  # live exact re-checks of served answers
        self.waiting: Callable[[], bool] | None = None  # set by the engine once its scheduler runs

    def busy(self) -> bool:
        """Admitted queries wait for the compute lane (or no scheduler yet): background work waits."""
        return self.waiting is None or self.waiting()

    def search(
        self, queries: list[str], topk: int, helpers: Helpers | None = None, params: dict[str, int] | None = None
    ) -> Any:
        """Encode and search one batch; in a batching lane both stages share it with `helpers`.
        Pipelined: returns the Future of the search, queued on the index's owner thread.
        `params`: a request's nprobe / efSearch override (only FAISS indexes take one)."""
        started = time.perf_counter()
        try:
            vectors = self.encoder.encode(queries, helpers)
        finally:  # a remote encoder has a stage label of its own (encode_remote)
            stage = getattr(self.encoder, "stage", "encode")
            metrics.STAGE_SECONDS.labels(stage).observe(time.perf_counter() - started)
        encoded = time.perf_counter()
        if self.pipeline:
            metrics.STAGE_SECONDS.labels("encode").observe(encoded - started)
            pending = self.index.submit(vectors, topk)  # type: ignore[attr-defined]
            pending.add_done_callback(
                lambda _: metrics.STAGE_SECONDS.labels("search").observe(time.perf_counter() - encoded)
            )
            return pending
        if params:
            scores, ids = self.index.search(vectors, topk, helpers, params)  # type: ignore[call-arg]
        else:
            scores, ids = self.index.search(vectors, topk, helpers)
        metrics.STAGE_SECONDS.labels("search").observe(time.perf_counter() - encoded)
        if self.recall_guard is not None:
            self.recall_guard.offer(vectors, ids, topk)
        return scores, ids


def resolve_sources(settings: Settings, status: Status) -> Sources:
    if settings.index_path is not None or settings.corpus_path is not None:
        if settings.index_path is None or settings.corpus_path is None:
            raise LoadError("--index-path and --corpus-path go together (a bare FAISS index and its passages jsonl)")
        if not settings.index_path.is_file():
            raise LoadError(f"{settings.index_path}: index file not found")
        corpus_dir = ensure_corpus_store(
            settings.corpus_path,
            settings.data_dir,
            on_stage=status.set_stage,
            on_progress=status.set_progress,
            cache_size_limit_bytes=settings.cache_size_limit_bytes,
        )
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
    manifest.check_files(
        index_dir, checksums=settings.verify_checksums, on_fraction=lambda f: setattr(status, "progress", f)
    )
    return Sources(index_dir / INDEX_FILE, index_dir / CORPUS_DIR, manifest)


def open_encoder(spec: EncoderSpec) -> Encoder:
    """The encoder backend the spec asks for."""
    if spec.runtime != "torch":
        from app.encoder_onnx import open_exported_encoder

        return open_exported_encoder(spec.runtime, spec.export_dir, spec.query_prefix, spec.normalize)
    encoder = SentenceTransformerEncoder(spec.config())
    if spec.threads:
        import torch

        torch.set_num_threads(spec.threads)
    return encoder


def open_index(spec: IndexSpec, status: Status | None = None) -> VectorIndex:
    """The index backend the spec asks for: FAISS on the CPU, or torch exact search on spec.device
    (README "GPU")."""
    if spec.backend == "torch":
        return TorchFlatIndex.from_file(
            spec.path,
            resolve_device(spec.device, "--index-device"),
            spec.dtype,
            progress=(lambda fraction: setattr(status, "progress", fraction)) if status else None,
        )
    index = FaissIndex(spec.path, use_mmap=spec.mmap, threads=spec.threads)
    index.set_search_params(spec.nprobe, spec.ef_search)
    return index


def index_version(sources: Sources) -> str:
    """The manifest's checksum of the index file, else the file's size and modification time."""
    record = sources.manifest.files.get(INDEX_FILE) if sources.manifest is not None else None
    if record is not None and record.sha256:
        return f"sha256:{record.sha256[:16]}"
    stat = sources.index_path.stat()
    return f"file:{stat.st_size}:{stat.st_mtime_ns}"


def load(settings: Settings, status: Status) -> Retriever:
    sources = resolve_sources(settings, status)
    manifest = sources.manifest
    if manifest is not None and settings.normalize is not None and settings.normalize != manifest.normalize:
        raise LoadError(
            f"{sources.index_path.parent / MANIFEST_FILE}: the index was built with normalize={manifest.normalize} "
            f"but normalize={settings.normalize} was asked (RETRIEVER_NORMALIZE); inner-product scores would be wrong"
        )
    try:  # a device that does not exist fails here, before any weights are read
        resolve_device(settings.device, "--device")
        resolve_device(settings.index_device, "--index-device")
    except DeviceError as exc:
        raise LoadError(str(exc)) from None
    if manifest is not None:  # a model copied into the index directory (`retriever import`) loads from there
        manifest = dataclasses.replace(manifest, model=resolve_manifest_model(manifest, sources.index_path.parent))
    encoder_spec = resolve_encoder(settings, manifest)
    encoder: Encoder
    if settings.encoder_url:  # the model runs in an encoder service; no torch here
        from app.encoder_remote import remote_encoder_from

        if encoder_spec.runtime != "torch":
            raise LoadError(
                f"--encoder-url and --encoder-runtime {encoder_spec.runtime} exclude each other: the encoder "
                "service runs the model (drop one of them)"
            )

        encoder = remote_encoder_from(settings, encoder_spec, status.set_stage)
    else:
        status.set_stage(f"loading model {encoder_spec.model or 'bundled demo model'}")
        encoder = open_encoder(encoder_spec)
    status.set_stage(f"loading index {sources.index_path}")
    index = open_index(resolve_index(settings, sources.index_path), status)
    if index.dimension != encoder.dimension:
        remote_url = getattr(encoder, "url", None)
        served_by = f" served by {remote_url}" if remote_url else ""
        raise LoadError(
            f"{sources.index_path}: index dimension {index.dimension} does not match model "
            f"{encoder.name}{served_by} (dimension {encoder.dimension}); pass the model the index was built with"
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
    retriever = Retriever(
        encoder, index, corpus, index_version(sources), pipeline=settings.pipeline and settings.batching
    )
    retriever.build_recall = manifest.recall if manifest is not None else {}
    try:  # the guard waits for the scheduler (retriever.waiting) before it checks anything
        retriever.recall_guard = start_guard(settings, manifest, index, busy=retriever.busy)
    except ValueError as exc:
        raise LoadError(str(exc)) from None
    status.set_stage("self-test query")
    if not index.self_test(encoder.encode(["health check"])):
        raise LoadError(f"{sources.index_path}: self-test query returned no result")
    metrics.INDEX_VECTORS.set(index.count)
    metrics.INDEX_BYTES.set(index.nbytes)
    metrics.CORPUS_BYTES.set(corpus.nbytes)
    metrics.INDEX_LOAD_SECONDS.set(index.load_seconds)
    metrics.INFO.labels(__version__, encoder.name, index.type_name, str(index.mapped).lower()).set(1)
    record_placement(retriever)
    return retriever


def record_placement(retriever: Retriever) -> None:
    """Metrics of where each stage runs and the device memory the index holds."""
    placed = placement(retriever.index)
    model = retriever.encoder.describe()
    metrics.INDEX_DEVICE_BYTES.labels(placed["device"]).set(placed["device_bytes"])
    metrics.STAGE_DEVICE.labels("encode", model.get("device", "cpu"), model.get("dtype", "float32")).set(1)
    metrics.STAGE_DEVICE.labels("search", placed["device"], placed["dtype"]).set(1)


def stages(retriever: Retriever) -> dict[str, Any]:
    """/info's `stages`: the device (and dtype) of each stage."""
    model = retriever.encoder.describe()
    placed = placement(retriever.index)
    return {
        "encode": {"device": model.get("device", "cpu"), "dtype": model.get("dtype", "float32")},
        "search": {key: placed[key] for key in ("backend", "device", "dtype")},
    }


WARMUP_STEP_BYTES = 64 * 1024 * 1024


def warm_up(retriever: Retriever, status: Status, step: int = WARMUP_STEP_BYTES) -> None:
    """Read the mapped index and corpus files into the page cache, so the first queries are not
    disk-bound (sequential reads with readahead advice: app/warmup.py). Skipped when the pages are
    resident already (a restart on a warm node).

    The pages land in the page cache, shared by every worker. Progress (0..1 over index + corpus
    bytes) shows in /health and /info (`warmup`) and in retriever_warmup_progress; while readiness
    waits for the warm-up (the default) it is also the loading stage and progress.
    An index loaded into memory (not mapped) has nothing to warm: only the corpus is read.
    """
    from app.warmup import RESIDENT_ENOUGH, read_into_cache, resident_fraction

    blocking = status.state == "loading"
    status.warmup, status.warmup_progress = "running", 0.0
    metrics.WARMUP_PROGRESS.set(0.0)
    index_path = getattr(retriever.index, "path", None)
    paths = ([Path(index_path)] if retriever.index.mapped and index_path else []) + retriever.corpus.files()
    started = time.perf_counter()
    try:
        resident = resident_fraction(paths)
        status.warmup_resident = resident
        total = sum(p.stat().st_size for p in paths)
        if resident >= RESIDENT_ENOUGH:
            log.info(
                "warm-up: %.1f%% of %.2f GB already in the page cache; nothing to read", 100 * resident, total / 1e9
            )
        else:
            if blocking:
                status.set_stage(
                    f"warming up: reading {total / 1e9:.2f} GB of index and corpus into the page cache "
                    f"({100 * resident:.0f}% resident)"
                )

            def report(done: int, total: int) -> None:
                status.warmup_progress = min(1.0, done / max(total, 1))
                if blocking:
                    status.progress = status.warmup_progress
                metrics.WARMUP_PROGRESS.set(status.warmup_progress)

            read_into_cache(paths, report, block=min(step, 8 * 1024 * 1024))
            seconds = time.perf_counter() - started
            log.info(
                "warm-up done: %.2f GB in %.1fs (%.2f GB/s)", total / 1e9, seconds, total / 1e9 / max(seconds, 1e-9)
            )
    except Exception as exc:  # warm-up is an optimisation; serving goes on
        log.warning("warm-up failed: %s", exc)
        status.warmup = "failed"
        return
    status.warmup, status.warmup_progress = "done", 1.0
    status.warmup_seconds = time.perf_counter() - started
    metrics.WARMUP_PROGRESS.set(1.0)


def full_query(retriever: Retriever, status: Status) -> None:
    """One query over the whole index before ready: what the first client will wait for."""
    status.set_stage("one query over the whole index")
    started = time.perf_counter()
    # The backends directly, not Retriever.search: not a served query (no stage metrics, no recall sample).
    retriever.index.search(retriever.encoder.encode(["warm-up query"]), 1)
    status.full_query_s = time.perf_counter() - started
    log.info("a query over all %d vectors answered in %.2fs", retriever.index.count, status.full_query_s)
