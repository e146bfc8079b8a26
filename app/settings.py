"""All configuration in one object: env vars `RETRIEVER_*`, overridden by CLI flags."""

from __future__ import annotations

from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="RETRIEVER_", extra="ignore")

    # -- where the data comes from
    index_dir: Path | None = Field(None, description="Index directory made by `retriever build`.")
    index_path: Path | None = Field(None, description="A bare FAISS index file (Search-R1's e5_Flat.index).")
    corpus_path: Path | None = Field(None, description="Passages .jsonl matching --index-path row by row.")
    data_dir: Path = Field(Path(".cache"), description="Demo index and converted corpora are cached here.")
    cache_size_limit_bytes: int | None = Field(
        None,
        ge=0,
        description="Size limit of --data-dir (the chart's cacheSizeLimit): a corpus store that "
        "would not fit fails startup at once instead of getting the pod evicted.",
    )
    demo_limit: int | None = Field(None, ge=1, description="Build the demo from only the first N articles.")

    # -- encoder
    model: str | None = Field(None, description="sentence-transformers model path or name (default: manifest).")
    query_prefix: str | None = Field(None, description="Prepended to every query, e.g. 'query: ' for e5.")
    normalize: bool | None = Field(None, description="L2-normalise query embeddings (default: manifest).")
    max_length: int | None = Field(None, ge=8, description="Tokens per query; longer queries are truncated.")
    device: str = Field("cpu", description="Torch device: cpu, cuda, cuda:1.")
    encoder_runtime: Literal["torch", "onnx", "openvino"] = Field(
        "torch",
        description="Encoder runtime: torch, or onnx / openvino over the export in the index directory "
        "(`retriever export-onnx INDEX_DIR` makes it; same embeddings, about half torch's CPU per query).",
    )
    allow_download: bool = Field(False, description="Let the model loader reach a hub (off: offline only).")
    threads: int = Field(0, ge=0, description="Torch and FAISS threads per worker (0: all cores).")

    # -- remote encoder service (instead of the in-process model)
    encoder_url: str | None = Field(
        None, description="Base URL of an embedding server (e.g. http://encoder:7997); the model then runs there."
    )
    encoder_api: Literal["openai", "tei"] = Field(
        "openai", description="openai: POST /v1/embeddings (infinity, vLLM, TEI); tei: TEI's POST /embed."
    )
    encoder_model: str | None = Field(
        None, description="Model name to ask the encoder service for (default: its first)."
    )
    encoder_same_model: bool = Field(
        False, description="Accept an encoder service model whose name differs from the index's (same model)."
    )
    encoder_timeout_s: float = Field(10.0, gt=0, description="Timeout per call to the encoder service.")
    encoder_retries: int = Field(2, ge=0, le=10, description="Retries per batch on connection errors, 429 and 5xx.")
    encoder_startup_timeout_s: float = Field(
        300.0, ge=0, description="How long startup waits for the encoder service to answer."
    )
    encoder_unhealthy_after_s: float = Field(
        30.0, gt=0, description="/health turns 503 once the encoder service is unreachable this long."
    )
    encoder_probe_interval_s: float = Field(5.0, gt=0, description="How often the encoder service's /health is polled.")
    encoder_api_key: str | None = Field(None, description="Bearer token sent to the encoder service.")

    # -- index
    mmap: bool = Field(True, description="Memory-map the index and corpus so workers share one copy.")
    nprobe: int | None = Field(None, ge=1, description="IVF lists probed per query.")
    ef_search: int | None = Field(None, ge=1, description="HNSW efSearch.")
    warmup: bool = Field(
        True, description="Read the mapped index and corpus into the page cache (skipped when already resident)."
    )
    ready_before_warmup: bool = Field(
        False, description="Report ready while warm-up still runs (off: ready means a full-index query is fast)."
    )
    verify_checksums: bool = Field(False, description="Check sha256 of every file against the manifest.")

    # -- live recall guard (approximate indexes: served answers re-checked exactly in the background)
    recall_sample_fraction: float = Field(
        0.01, ge=0, le=1, description="Share of served queries re-searched exactly (0: guard off)."
    )
    recall_reference: Path | None = Field(
        None, description="Exact (Flat) index to check against (default: the one `convert` recorded)."
    )
    recall_queue: int = Field(32, ge=1, description="Samples waiting for the guard; beyond it they are dropped.")
    recall_window: int = Field(200, ge=1, description="Samples averaged into the live recall gauges.")
    recall_floor: float = Field(0.9, ge=0, le=1, description="Live recall@topk below this fires an alert.")

    # -- request limits
    default_topk: int = Field(3, ge=1, description="topk used when a request sends null or 0.")
    max_topk: int = Field(100, ge=1, description="Largest topk a request may ask for.")
    max_queries_per_request: int = Field(512, ge=1, description="Largest `queries` list per request.")
    max_body_bytes: int = Field(8 * 1024 * 1024, ge=1024, description="Largest request body.")
    body_read_timeout_s: float = Field(30.0, gt=0, description="Most seconds to receive a request body (else 408).")

    # -- trainers' dialects (app/dialects.py)
    browsecomp_k: int = Field(
        5, ge=1, description="Results for requests that carry no count (BrowseComp-Plus's /retrieve, MCP search)."
    )

    # -- batching and admission
    batching: bool = Field(True, description="Coalesce concurrent requests into shared batches.")
    dedup_queries: bool = Field(
        True, description="Compute identical queries once: within a request and joining one already in flight."
    )
    result_cache: bool = Field(
        False,
        description="Keep recent answers (keyed by index version, model, query, topk) for repeated searches.",
    )
    result_cache_entries: int = Field(100_000, ge=1, description="Most answers the result cache holds.")
    result_cache_bytes: int = Field(64 * 1024 * 1024, ge=1024, description="Most bytes the result cache holds.")
    max_batch_size: int = Field(256, ge=1, description="Most queries in one encoder/FAISS batch.")
    max_wait_ms: float = Field(0.0, ge=0, description="Extra wait for more queries when a batch is not full.")
    max_queue: int = Field(4096, ge=1, description="Most queries waiting; beyond it requests are refused.")
    max_queue_wait_s: float = Field(
        10.0, ge=0, description="Refuse when the queued work would take longer than this (0: count limit only)."
    )
    per_request_threads: int = Field(32, ge=1, description="Worker threads when batching is off.")
    overload_status: Literal[429, 503] = Field(503, description="Status for refused requests.")
    retry_after_s: int = Field(1, ge=0, description="Retry-After seconds sent with refusals.")

    # -- server
    host: str = Field("127.0.0.1", description="Bind address (the container uses 0.0.0.0).")
    port: int = Field(8000, ge=0, le=65535, description="Listen port.")
    workers: int = Field(1, ge=1, description="Worker processes; all map the same index pages.")
    log_level: str = Field("info", description="critical, error, warning, info, debug.")
    limit_concurrency: int | None = Field(None, ge=1, description="uvicorn: connections+tasks before 503.")
    reload: bool = Field(False, description="Restart on code changes (development only).")
    header_read_timeout_s: float = Field(
        10.0, ge=0, description="Most seconds to receive a request's headers, else the connection closes (0: off)."
    )
    limit_max_requests: int | None = Field(
        None, ge=1, description="Recycle a worker after about this many requests (in-flight ones finish first)."
    )
    load_before_serving: bool = Field(
        False, description="Load before accepting connections (the supervisor sets it for replacement workers)."
    )
    heartbeat_timeout_s: float = Field(
        30.0, gt=0, description="Kill and replace a worker whose event loop has not beaten for this long."
    )
    timeout_keep_alive_s: int = Field(30, ge=1, description="Idle keep-alive connection timeout.")
    graceful_timeout_s: float = Field(30.0, ge=0, description="Time to finish in-flight work on SIGTERM.")
    shutdown_delay_s: float = Field(0.0, ge=0, description="Keep admitting for this long after SIGTERM.")

    # -- access control
    auth_tokens: str | None = Field(None, description="Comma-separated bearer tokens.")
    auth_tokens_file: Path | None = Field(None, description="File with one bearer token per line.")
    docs_without_token: bool = Field(
        False, description="Serve /docs and its schema without a token (its Authorize button takes one for calls)."
    )
    auth_open_paths: str = Field("/health,/livez,/metrics", description="Paths that never need a token.")
    cors_origins: str = Field("", description="Comma-separated CORS origins; empty: CORS off.")

    # -- GPU tier: where each stage runs (torch exact search of a Flat index, docs in README "GPU")
    index_device: str = Field("cpu", description="Where the index is searched: cpu, cuda, cuda:N.")
    index_backend: Literal["auto", "faiss", "torch"] = Field(
        "auto", description="auto: FAISS on cpu, torch exact search (Flat indexes) on cuda."
    )
    index_dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Storage dtype of the torch index (auto: float16 on cuda, float32 on cpu)."
    )
    encoder_dtype: Literal["auto", "float32", "float16", "bfloat16"] = Field(
        "auto", description="Encoder weights dtype (auto: float16 on cuda, float32 on cpu)."
    )
    pipeline: bool = Field(False, description="Encode batch N+1 while batch N is searched (torch backend).")
