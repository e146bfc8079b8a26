"""HTTP API: Search-R1's `POST /retrieve`, plus /health, /livez, /info and /metrics."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from prometheus_fastapi_instrumentator import Instrumentator
from pydantic import BaseModel, BeforeValidator, ConfigDict, Field, StrictBool, StrictStr
from pydantic_core import PydanticCustomError
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from app import __version__, metrics, server
from app.batcher import BatchFailed, MicroBatcher, Overloaded, PerRequestRunner, Scheduler
from app.guards import AuthMiddleware, BodyLimitMiddleware, load_tokens
from app.service import Loader, Retriever, Status, info
from app.settings import Settings

log = logging.getLogger(__name__)


def _json_integer(value: object) -> object:
    """JSON Schema's integer: 3 or 3.0, never true or "3" (which pydantic's lax mode would take)."""
    if isinstance(value, (bool, str)):
        raise PydanticCustomError("int_type", "Input should be a valid integer")
    return value


class RetrieveRequest(BaseModel):
    """Search-R1's request. Unknown fields are ignored, as its server does. Values are taken as
    their OpenAPI schema types say, without coercion: no "3" for 3, no 0 for false."""

    model_config = ConfigDict(extra="ignore")

    queries: list[StrictStr] = Field(..., description="Questions to search for; one result list each, in order.")
    topk: Annotated[int, BeforeValidator(_json_integer)] | None = Field(
        None, description="Passages per query; null or 0 means the server default (3)."
    )
    return_scores: StrictBool = Field(False, description="Wrap each passage as {document, score}.")


class Document(BaseModel):
    model_config = ConfigDict(extra="allow")
    id: str | int | None = None
    contents: str


class ScoredDocument(BaseModel):
    document: Document
    score: float


class RetrieveResponse(BaseModel):
    result: list[list[ScoredDocument]] | list[list[Document]]


class ValidationProblem(BaseModel):
    loc: list[str | int]
    msg: str
    type: str


class ErrorBody(BaseModel):
    """Every error answer: `{"detail": "message"}`, or one entry per invalid field for schema errors."""

    detail: str | list[ValidationProblem]


def _error_response(description: str) -> dict[str, Any]:
    return {"model": ErrorBody, "description": description}


class ApiError(Exception):
    def __init__(self, status: int, detail: str, reason: str | None = None, retry_after: int | None = None) -> None:
        super().__init__(detail)
        self.status, self.detail, self.reason, self.retry_after = status, detail, reason, retry_after


def _error(
    status: int, detail: Any, retry_after: int | None = None, headers: dict[str, str] | None = None
) -> JSONResponse:
    headers = dict(headers or {})
    if retry_after is not None:
        headers["Retry-After"] = str(retry_after)
    return JSONResponse({"detail": detail}, status_code=status, headers=headers or None)


def _is_json(content_type: str) -> bool:
    media = content_type.split(";", 1)[0].strip().lower()
    return media == "application/json" or (media.startswith("application/") and media.endswith("+json"))


def _body_parse_problem(cause: BaseException) -> str:
    """Why the framework could not parse a body (it only says 'There was an error parsing the body')."""
    if isinstance(cause, UnicodeDecodeError):
        return f"request body is not valid UTF-8 (byte {cause.start}: {cause.reason}); send UTF-8 JSON"
    if isinstance(cause, RecursionError):
        return "request body is not valid JSON: nested too deeply"
    return f"request body is not valid JSON: {str(cause)[:200] or type(cause).__name__}"


def _unpaired_surrogate(queries: list[str]) -> str | None:
    """JSON may escape lone surrogates (\\ud800); they are not text and the tokenizer fails on them."""
    for position, query in enumerate(queries):
        if query.isascii():
            continue
        try:
            query.encode("utf-8")
        except UnicodeEncodeError as exc:
            return (
                f"queries[{position}]: holds an unpaired surrogate (\\u{ord(query[exc.start]):04x} at "
                f"character {exc.start}), which is not valid Unicode"
            )
    return None


def _validation_detail(exc: RequestValidationError) -> list[dict[str, Any]]:
    """Field path and message per problem; never echo the (possibly huge) input back."""
    return [
        {
            "loc": list(err.get("loc", ())),
            "msg": err.get("msg", "invalid"),
            "type": err.get("type", "invalid"),
        }
        for err in exc.errors()[:20]
    ]


class Runtime:
    """What the handlers share: settings, status, and (once loaded) the retriever and scheduler."""

    def __init__(self, settings: Settings) -> None:
        self.settings = settings
        self.status = Status()
        self.loader = Loader(settings, self.status)
        self.scheduler: Scheduler | None = None
        self.inflight = 0

    @property
    def retriever(self) -> Retriever | None:
        return self.loader.retriever

    def ready_scheduler(self) -> tuple[Retriever, Scheduler]:
        retriever, scheduler = self.retriever, self.scheduler
        if retriever is None or scheduler is None:
            detail = f"not ready: {self.status.state} ({self.status.stage}, {self.status.progress:.0%})"
            if self.status.message:
                detail += f": {self.status.message}"
            raise ApiError(503, detail, "not_ready", self.settings.retry_after_s)
        return retriever, scheduler

    async def attach_scheduler(self) -> None:
        """Wait for the loader, then start the scheduler on this event loop."""
        while self.loader.is_alive() or self.retriever is None:
            if self.status.state == "failed":
                server.request_exit(server.EXIT_LOAD_FAILED)
                return
            await asyncio.sleep(0.05)
        retriever = self.retriever
        assert retriever is not None
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
        self.scheduler = scheduler

    def begin_shutdown(self) -> None:
        """First SIGTERM: fail readiness at once so endpoints drop this pod; keep serving meanwhile."""
        self.status.state = "shutting_down"
        metrics.READY.set(0)


async def _sample_process_forever() -> None:
    while True:
        metrics.sample_process()
        await asyncio.sleep(5)


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or Settings()
    runtime = Runtime(settings)

    @contextlib.asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        metrics.mark_started()
        metrics.READY.set(0)
        server.on_shutdown_signal(runtime.begin_shutdown)
        runtime.loader.start()
        attach = asyncio.create_task(runtime.attach_scheduler())
        sampler = asyncio.create_task(_sample_process_forever())
        yield
        runtime.status.state = "shutting_down"
        metrics.READY.set(0)
        for task in (attach, sampler):
            task.cancel()
        if runtime.scheduler is not None:
            await runtime.scheduler.stop()
            runtime.scheduler = None
        server.forget_shutdown_hook(runtime.begin_shutdown)
        metrics.mark_dead()

    app = FastAPI(
        title="retriever",
        version=__version__,
        description="Dense retrieval, Search-R1 wire format: one shared FAISS index, dynamic micro-batching.",
        lifespan=lifespan,
    )
    app.state.runtime = runtime

    Instrumentator(
        should_group_status_codes=True,
        should_instrument_requests_inprogress=True,
        inprogress_labels=True,
        excluded_handlers=["/metrics", "/health", "/livez"],
    ).instrument(app, latency_lowr_buckets=metrics.LATENCY_BUCKETS)

    tokens = load_tokens(settings)
    if tokens:
        open_paths = {p.strip() for p in settings.auth_open_paths.split(",") if p.strip()}
        app.add_middleware(AuthMiddleware, tokens=tokens, open_paths=open_paths)
    if settings.cors_origins.strip():
        origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"], allow_headers=["*"])
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_body_bytes, read_timeout_s=settings.body_read_timeout_s
    )

    @app.exception_handler(ApiError)
    async def _api_error(_: Request, exc: ApiError) -> JSONResponse:
        if exc.reason:
            metrics.REJECTIONS.labels(exc.reason).inc()
        return _error(exc.status, exc.detail, exc.retry_after)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request: Request, exc: RequestValidationError) -> JSONResponse:
        metrics.REJECTIONS.labels("invalid").inc()
        content_type = request.headers.get("content-type")
        if content_type is None or not _is_json(content_type):
            # The framework did not even parse such a body; "not a valid dictionary" would mislead.
            got = repr(content_type[:100]) if content_type is not None else "no Content-Type"
            return _error(415, f"Content-Type must be application/json (got {got})")
        return _error(422, _validation_detail(exc))

    @app.exception_handler(StarletteHTTPException)
    async def _http_error(_: Request, exc: StarletteHTTPException) -> JSONResponse:
        detail = exc.detail
        if exc.status_code == 400 and exc.__cause__ is not None:
            detail = _body_parse_problem(exc.__cause__)
        return _error(exc.status_code, detail, headers=exc.headers)  # keeps e.g. Allow on a 405

    @app.exception_handler(Exception)
    async def _unexpected(_: Request, exc: Exception) -> JSONResponse:
        log.exception("unhandled error")
        return _error(500, f"internal error ({type(exc).__name__}); see the server log")

    @app.post(
        "/retrieve",
        response_model=RetrieveResponse,
        responses={
            400: _error_response("Body is not UTF-8 JSON"),
            401: _error_response("Missing or wrong bearer token (when authentication is on)"),
            408: _error_response("Body not received within body_read_timeout_s"),
            413: _error_response("Body larger than max_body_bytes"),
            415: _error_response("Content-Type is not application/json"),
            422: _error_response("Invalid request or a limit exceeded"),
            503: _error_response("Not ready, or overloaded (with Retry-After)"),
        },
    )
    async def retrieve(request: RetrieveRequest) -> Response:
        """Search-R1's contract: one list per query, input order, best first."""
        retriever, scheduler = runtime.ready_scheduler()
        topk = _checked_topk(request, settings)
        if not request.queries:
            raise ApiError(422, "queries: must hold at least one query", "invalid")
        if len(request.queries) > settings.max_queries_per_request:
            raise ApiError(
                422,
                f"queries: {len(request.queries)} queries exceed the limit of "
                f"{settings.max_queries_per_request} per request (RETRIEVER_MAX_QUERIES_PER_REQUEST)",
                "too_many_queries",
            )
        if (problem := _unpaired_surrogate(request.queries)) is not None:
            raise ApiError(422, problem, "invalid")
        runtime.inflight += 1
        metrics.INFLIGHT.set(runtime.inflight)
        try:
            scores, ids = await scheduler.submit(request.queries, topk)
        except Overloaded as exc:
            raise ApiError(
                settings.overload_status,
                f"overloaded: {exc}; retry later",
                "queue_full",
                settings.retry_after_s,
            ) from None
        except BatchFailed as exc:
            raise ApiError(500, f"search failed: {exc}") from None
        finally:
            runtime.inflight -= 1
            metrics.INFLIGHT.set(runtime.inflight)
        started = time.perf_counter()
        body = retriever.render(scores, ids, request.return_scores)
        metrics.STAGE_SECONDS.labels("fetch").observe(time.perf_counter() - started)
        metrics.QUERIES.inc(len(request.queries))
        return Response(content=body, media_type="application/json")

    @app.get("/health")
    async def health() -> JSONResponse:
        """200 when model and index are loaded and the self-query worked; 503 with progress before."""
        status = runtime.status
        ready = status.state == "ready" and runtime.scheduler is not None
        shown = "ready" if ready else ("loading" if status.state == "ready" else status.state)
        return JSONResponse(status.as_dict() | {"status": shown}, 200 if ready else 503)

    @app.get("/livez")
    async def livez() -> dict[str, str]:
        """Alive while the process runs; never depends on the index (a slow load is not a crash)."""
        return {"status": "alive"}

    @app.get("/info")
    async def get_info() -> JSONResponse:
        if runtime.retriever is None:
            return JSONResponse({"version": __version__, "status": runtime.status.as_dict()}, 503)
        return JSONResponse(info(runtime.retriever, settings, runtime.status))

    @app.get("/metrics", include_in_schema=False)
    async def get_metrics() -> Response:
        metrics.sample_process()
        return Response(metrics.render_latest(), media_type="text/plain; version=0.0.4; charset=utf-8")

    def openapi_with_limits() -> dict[str, Any]:
        """The generated schema, plus the request limits of this server's settings."""
        if app.openapi_schema is None:
            schema = FastAPI.openapi(app)
            fields = schema["components"]["schemas"]["RetrieveRequest"]["properties"]
            fields["queries"].update(minItems=1, maxItems=settings.max_queries_per_request)
            for option in fields["topk"].get("anyOf", [fields["topk"]]):
                if option.get("type") == "integer":
                    option.update(minimum=0, maximum=settings.max_topk)
        return app.openapi_schema

    app.openapi = openapi_with_limits  # type: ignore[method-assign]
    return app


def _checked_topk(request: RetrieveRequest, settings: Settings) -> int:
    topk = request.topk
    if topk is None or topk == 0:
        return settings.default_topk
    if topk < 0:
        raise ApiError(422, f"topk: must be positive, null or 0 (got {topk})", "topk")
    if topk > settings.max_topk:
        raise ApiError(422, f"topk: {topk} exceeds the limit of {settings.max_topk} (RETRIEVER_MAX_TOPK)", "topk")
    return topk
