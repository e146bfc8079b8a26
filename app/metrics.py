"""Prometheus metrics. Always in multiprocess mode, so `--workers N` and 1 worker look the same.

The directory comes from PROMETHEUS_MULTIPROC_DIR; `app.server` creates one when unset.
Names are listed in docs/CONTRACT.md; dashboards and alerts depend on them.
"""

from __future__ import annotations

import os
import resource
import time
from collections.abc import Iterator

from prometheus_client import REGISTRY, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client import multiprocess as prom_multiprocess
from prometheus_client.core import CounterMetricFamily, Metric

from app import procstat
from app.supervisor_state import RESTART_REASONS, read_restart_counts

# 1 ms .. 30 s: fine enough to tell a 5 ms answer from a 90 ms one.
LATENCY_BUCKETS = (
    0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.015, 0.02, 0.03, 0.05, 0.075, 0.1,
    0.15, 0.2, 0.3, 0.5, 0.75, 1.0, 1.5, 2.0, 3.0, 5.0, 7.5, 10.0, 15.0, 20.0, 30.0,
)  # fmt: skip
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 2048)

QUERIES = Counter("retriever_queries_total", "Queries answered.")
BATCH_SIZE = Histogram("retriever_batch_size", "Queries per encoder/FAISS batch.", buckets=BATCH_BUCKETS)
QUEUE_DEPTH = Gauge("retriever_queue_depth", "Queries waiting for a batch.", multiprocess_mode="livesum")
INFLIGHT = Gauge(
    "retriever_inflight_requests",
    "Admitted /retrieve requests not yet answered.",
    multiprocess_mode="livesum",
)
STAGE_SECONDS = Histogram(
    "retriever_stage_duration_seconds",
    "Time per stage: queue_wait and fetch per request; encode (or encode_remote) and search per batch.",
    ["stage"],
    buckets=LATENCY_BUCKETS,
)
REJECTIONS = Counter("retriever_rejections_total", "Refused requests by reason.", ["reason"])
RESULT_CACHE_LOOKUPS = Counter(
    "retriever_result_cache_lookups_total", "Result cache lookups by result (hit, miss).", ["result"]
)
for _result in ("hit", "miss"):
    RESULT_CACHE_LOOKUPS.labels(_result)
RESULT_CACHE_EVICTIONS = Counter("retriever_result_cache_evictions_total", "Answers evicted from the result cache.")
RESULT_CACHE_ENTRIES = Gauge(
    "retriever_result_cache_entries", "Answers held in the result cache.", multiprocess_mode="livesum"
)
RESULT_CACHE_BYTES = Gauge(
    "retriever_result_cache_bytes", "Bytes held by the result cache.", multiprocess_mode="livesum"
)
DEDUPLICATED_QUERIES = Counter(
    "retriever_deduplicated_queries_total",
    "Queries answered by joining an identical query already being computed (not computed again).",
)
INDEX_SWAPS = Counter("retriever_index_swaps_total", "Index hot swaps by outcome (ok, failed).", ["outcome"])
for _outcome in ("ok", "failed"):
    INDEX_SWAPS.labels(_outcome)
TOKEN_RELOADS = Counter(
    "retriever_auth_token_reloads_total", "Re-reads of a changed auth tokens file, by outcome.", ["outcome"]
)
for _outcome in ("ok", "failed"):  # exported at 0 before the first re-read, so rate() has data
    TOKEN_RELOADS.labels(_outcome)
REJECTION_REASONS = (
    "queue_full", "too_many_queries", "topk", "body_too_large", "body_timeout", "invalid", "unauthorized", "not_ready",
    "header_timeout", "store_unavailable", "not_found",
)  # fmt: skip
for _reason in REJECTION_REASONS:
    REJECTIONS.labels(_reason)  # exported as 0 from the start, so rate() sees the first refusal
DIALECT_REQUESTS = Counter(
    "retriever_dialect_requests_total",
    "Requests by wire dialect (search_r1, rllm, flashrag, mcp, ...) and outcome (ok or the refusal reason).",
    ["dialect", "outcome"],
)
for _dialect in ("search_r1", "single_query", "rllm", "browsecomp_plus", "flashrag", "asearcher", "mcp"):
    DIALECT_REQUESTS.labels(_dialect, "ok")  # exported as 0 from the start, as the rejections are
ENCODER_ERRORS = Counter(
    "retriever_encoder_errors_total",
    "Failed calls to the remote encoder service (--encoder-url), per try, by reason.",
    ["reason"],
)
ENCODER_ERROR_REASONS = ("timeout", "connect", "http_5xx", "http_429", "http_4xx", "invalid_response")
for _reason in ENCODER_ERROR_REASONS:
    ENCODER_ERRORS.labels(_reason)
INDEX_VECTORS = Gauge("retriever_index_vectors", "Vectors in the index.", multiprocess_mode="max")
INDEX_BYTES = Gauge("retriever_index_bytes", "Size of the index file.", multiprocess_mode="max")
CORPUS_BYTES = Gauge("retriever_corpus_bytes", "Size of the corpus store.", multiprocess_mode="max")
INDEX_LOAD_SECONDS = Gauge("retriever_index_load_seconds", "Time to load the index.", multiprocess_mode="max")
READY = Gauge("retriever_ready", "1 when every live worker answers /health with 200.", multiprocess_mode="livemin")
WARMUP_PROGRESS = Gauge("retriever_warmup_progress", "Page warm-up progress, 0..1.", multiprocess_mode="livemin")
INFO = Gauge(
    "retriever_info",
    "Build and index information.",
    ["version", "model", "index_type", "mmap"],
    multiprocess_mode="max",
)
INDEX_DEVICE_BYTES = Gauge(
    "retriever_index_device_bytes",
    "Accelerator memory the index holds (0 when FAISS searches it on the CPU).",
    ["device"],
    multiprocess_mode="max",
)
STAGE_DEVICE = Gauge(
    "retriever_stage_device_info",
    "Where each stage runs: 1 for the device and dtype of stage encode and of stage search.",
    ["stage", "device", "dtype"],
    multiprocess_mode="max",
)
RSS_BYTES = Gauge(
    "retriever_process_resident_memory_bytes", "Resident memory per worker process.", multiprocess_mode="liveall"
)
PSS_BYTES = Gauge(
    "retriever_process_pss_bytes", "Proportional set size per worker process.", multiprocess_mode="liveall"
)
ANON_BYTES = Gauge(
    "retriever_process_anonymous_memory_bytes",
    "Anonymous memory per worker (proportional share): what a memory limit must hold, never reclaimable.",
    multiprocess_mode="liveall",
)
FILE_MAPPED_BYTES = Gauge(
    "retriever_process_file_mapped_bytes",
    "File pages mapped per worker (proportional share): the mapped index and corpus, reclaimable page cache.",
    multiprocess_mode="liveall",
)
CPU_SECONDS = Gauge("retriever_process_cpu_seconds", "CPU seconds used per worker.", multiprocess_mode="liveall")
START_TIME = Gauge("retriever_process_start_time_seconds", "Worker start time (unix).", multiprocess_mode="liveall")
# Live recall guard (app/recall_guard.py): served answers compared with an exact search, in the background.
LIVE_RECALL = Gauge(
    "retriever_live_recall",
    "Mean recall of served answers against exact search over the last recall_window samples (k: 1 or topk).",
    ["k"],
    multiprocess_mode="livemin",
)
LIVE_RECALL_FLOOR = Gauge(
    "retriever_live_recall_floor", "Configured recall floor (RETRIEVER_RECALL_FLOOR).", multiprocess_mode="max"
)
LIVE_RECALL_SAMPLES = Counter("retriever_live_recall_samples_total", "Served queries checked against exact search.")
LIVE_RECALL_DROPPED = Counter(
    "retriever_live_recall_dropped_total", "Sampled queries dropped unchecked because the guard's queue was full."
)


def read_memory() -> dict[str, int]:
    """RSS, PSS and PSS split into anonymous and file pages, in bytes, from /proc/self/smaps_rollup."""
    try:
        totals = procstat.rollup("self")
    except OSError:
        return {}
    return {key.lower(): totals[key] for key in ("Rss", "Pss", "Pss_Anon", "Pss_File") if key in totals}


def sample_process() -> None:
    memory = read_memory()
    if "rss" in memory:
        RSS_BYTES.set(memory["rss"])
    if "pss" in memory:
        PSS_BYTES.set(memory["pss"])
    if "pss_anon" in memory:
        ANON_BYTES.set(memory["pss_anon"])
        FILE_MAPPED_BYTES.set(memory.get("pss_file", 0))
    usage = resource.getrusage(resource.RUSAGE_SELF)
    CPU_SECONDS.set(usage.ru_utime + usage.ru_stime)


def mark_started() -> None:
    START_TIME.set(time.time())
    sample_process()


def render_latest() -> bytes:
    """The merged view of every worker's metrics."""
    if not multiproc_dir():
        return generate_latest(REGISTRY)
    registry = CollectorRegistry()
    prom_multiprocess.MultiProcessCollector(registry)
    registry.register(SupervisorCollector())
    return generate_latest(registry)


class SupervisorCollector:
    """Worker restarts counted by the supervisor (see `app.supervisor_state`)."""

    def collect(self) -> Iterator[Metric]:
        family = CounterMetricFamily(
            "retriever_worker_restarts", "Workers replaced by the supervisor, by reason.", labels=["reason"]
        )
        counts = read_restart_counts(multiproc_dir())
        for reason in RESTART_REASONS:
            family.add_metric([reason], counts.get(reason, 0))
        yield family


def multiproc_dir() -> str | None:
    return os.environ.get("PROMETHEUS_MULTIPROC_DIR")


def mark_dead() -> None:
    """Drop this worker's live gauges (livesum/livemin) from the merged view."""
    if multiproc_dir():
        prom_multiprocess.mark_process_dead(os.getpid())
