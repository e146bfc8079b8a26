"""HTTP face: /health, /livez, /info, /metrics and /admin/reload here; `POST /retrieve` (Search-R1's
contract and the other trainers' shapes) and the other dialects' routes in `app.dialects`; MCP at
/mcp (`app.mcp_server`).

Handlers are module-level functions on `router`; `build_app` puts them, the guards (body limit,
bearer tokens, CORS), the exception handlers and the metrics around one `app.engine.Engine`.
Domain errors (`app.errors`) become statuses in one place: `ERROR_STATUS` / `serving_error`.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
import os
import signal
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import HTMLResponse, JSONResponse, Response
from prometheus_fastapi_instrumentator import Instrumentator
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.middleware.cors import CORSMiddleware

from app import __version__, dialects, mcp_server, metrics
from app.encoder_remote import encoder_outage
from app.engine import Engine
from app.errors import (
    BadRequest,
    BatchFailed,
    EncoderUnavailable,
    NotFound,
    NotReady,
    Overloaded,
    ServingError,
    StoreUnavailable,
)
from app.guards import AuthMiddleware, BodyLimitMiddleware, EarlyRefusalMiddleware, TokenSource
from app.schemas import error_response
from app.settings import Settings
from app.supervisor_state import SUPERVISOR_PID_ENV

log = logging.getLogger(__name__)

# Domain error -> HTTP status. Overloaded answers with `overload_status` (503 or 429) instead;
# those in RETRY_LATER carry Retry-After: retry_after_s.
ERROR_STATUS: dict[type[ServingError], int] = {
    EncoderUnavailable: 503,  # before BatchFailed, its base: the first match wins
    NotReady: 503,
    Overloaded: 503,
    BadRequest: 422,
    NotFound: 404,
    BatchFailed: 500,
    StoreUnavailable: 503,
}
RETRY_LATER: tuple[type[ServingError], ...] = (NotReady, Overloaded, StoreUnavailable, EncoderUnavailable)

router = APIRouter()
# POST paths that search: refused before their body is read when admission would refuse them anyway.
SEARCH_PATHS = {"/retrieve", "/search", "/batch_search"}


async def get_engine(request: Request) -> Engine:
    """The engine behind this app (a dependency: `engine: Annotated[Engine, Depends(get_engine)]`).
    Async on purpose: FastAPI runs a plain `def` dependency in its thread pool, a thread hop per request."""
    return request.app.state.engine


EngineDep = Annotated[Engine, Depends(get_engine)]


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


# -- exception handlers (registered by build_app) ---------------------------------------------


async def serving_error(request: Request, exc: Exception) -> JSONResponse:
    """Every domain error of a search: its status, its detail, Retry-After where retrying helps."""
    assert isinstance(exc, ServingError)
    settings: Settings = request.app.state.engine.settings
    status = next((code for kind, code in ERROR_STATUS.items() if isinstance(exc, kind)), 500)
    if isinstance(exc, Overloaded):
        status = settings.overload_status
    if exc.reason:
        metrics.REJECTIONS.labels(exc.reason).inc()
    retry_after = settings.retry_after_s if isinstance(exc, RETRY_LATER) else None
    return _error(status, exc.detail, retry_after)


async def invalid_request(request: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, RequestValidationError)
    metrics.REJECTIONS.labels("invalid").inc()
    content_type = request.headers.get("content-type")
    if content_type is None or not _is_json(content_type):
        # The framework did not even parse such a body; "not a valid dictionary" would mislead.
        got = repr(content_type[:100]) if content_type is not None else "no Content-Type"
        return _error(415, f"Content-Type must be application/json (got {got})")
    return _error(422, _validation_detail(exc))


async def http_error(_: Request, exc: Exception) -> JSONResponse:
    assert isinstance(exc, StarletteHTTPException)
    detail = exc.detail
    if exc.status_code == 400 and exc.__cause__ is not None:
        detail = _body_parse_problem(exc.__cause__)
    return _error(exc.status_code, detail, headers=exc.headers)  # keeps e.g. Allow on a 405


async def unexpected_error(_: Request, exc: Exception) -> JSONResponse:
    log.exception("unhandled error")
    return _error(500, f"internal error ({type(exc).__name__}); see the server log")


# -- routes -----------------------------------------------------------------------------------


@router.get("/health")
async def health(engine: EngineDep) -> JSONResponse:
    """200 when model and index are loaded and the self-query worked; 503 with progress before."""
    status = engine.status
    ready = engine.ready
    shown = "ready" if ready else ("loading" if status.state == "ready" else status.state)
    body = status.as_dict() | {"status": shown, "index_version": engine.serving_version}
    if engine.last_reload is not None:
        body["reload"] = engine.last_reload
    if ready and engine.retriever is not None and (outage := encoder_outage(engine.retriever.encoder, engine.settings)):
        ready, body["status"], body["message"] = False, "encoder_unavailable", outage
    return JSONResponse(body, 200 if ready else 503)


@router.get("/livez")
async def livez() -> dict[str, str]:
    """Alive while the process runs; never depends on the index (a slow load is not a crash)."""
    return {"status": "alive"}


@router.get("/info")
async def get_info(engine: EngineDep) -> JSONResponse:
    body = engine.info()
    if body is None:
        return JSONResponse({"version": __version__, "status": engine.status.as_dict()}, 503)
    return JSONResponse(body)


class ReloadRequest(BaseModel):
    index_dir: str | None = Field(
        None, description="Index directory to serve next; default: the configured --index-dir again."
    )


@router.post(
    "/admin/reload",
    status_code=202,
    responses={
        400: error_response("Body is not UTF-8 JSON"),
        401: error_response("Missing or wrong bearer token (when authentication is on)"),
        409: error_response("A reload is already running"),
        413: error_response("Body larger than max_body_bytes"),
        415: error_response("Content-Type is not application/json"),
        422: error_response("Invalid request (the detail names the field)"),
    },
)
async def admin_reload(engine: EngineDep, request: ReloadRequest | None = None) -> JSONResponse:
    """Hot swap: load an index directory in the background and serve it once it passes its self-test
    (in-flight batches finish on the old one). With `--workers N`, every worker reloads (the
    supervisor passes the signal on). Poll /health's `reload` and `index_version` for the outcome.
    Needs a bearer token whenever authentication is on."""
    target = Path(request.index_dir) if request is not None and request.index_dir else None
    supervisor = os.environ.get(SUPERVISOR_PID_ENV)
    if supervisor is not None and target is None:
        os.kill(int(supervisor), signal.SIGHUP)  # every worker, this one included, reloads
        return JSONResponse({"reloading": True, "workers": "all", "serving": engine.serving_version}, 202)
    if supervisor is not None:
        raise BadRequest(
            "index_dir: with --workers N, point the configured --index-dir (a `current` link) at the new "
            "directory and reload without a body, so that every worker serves the same index"
        )
    if not engine.reload(target):
        return _error(409, "a reload is already running; poll /health for its outcome")
    return JSONResponse(
        {"reloading": True, "target": str(target or engine.settings.index_dir), "serving": engine.serving_version}, 202
    )


@router.get("/metrics", include_in_schema=False)
async def get_metrics() -> Response:
    metrics.sample_process()
    return Response(metrics.render_latest(), media_type="text/plain; version=0.0.4; charset=utf-8")


# -- the app ----------------------------------------------------------------------------------


async def _sample_process_forever() -> None:
    while True:
        metrics.sample_process()
        await asyncio.sleep(5)


@contextlib.asynccontextmanager
async def lifespan(app: FastAPI) -> AsyncIterator[None]:
    engine: Engine = app.state.engine
    metrics.mark_started()
    # SIGHUP: reload the index (kill -HUP 1 in the pod; the supervisor passes it to every worker).
    # Installed before loading starts, so a reload asked meanwhile is deferred, not ignored; then
    # unblocked (app.server starts workers with it blocked), which delivers one that already waited.
    with contextlib.suppress(NotImplementedError, RuntimeError, ValueError):  # not the main thread (tests)
        asyncio.get_running_loop().add_signal_handler(signal.SIGHUP, engine.reload_latest)
        signal.pthread_sigmask(signal.SIG_UNBLOCK, {signal.SIGHUP})
    await engine.start()
    sampler = asyncio.create_task(_sample_process_forever())
    if engine.settings.load_before_serving:
        # uvicorn accepts connections only after this returns: clients wait in the listen backlog
        # (or go to the other workers) instead of meeting a loading worker's 503.
        with contextlib.suppress(Exception):  # a failed load is reported by the engine's listeners
            await engine.wait_ready()
    yield
    sampler.cancel()
    await engine.stop()
    metrics.mark_dead()


def _openapi_with_limits(app: FastAPI) -> dict[str, Any]:
    """The generated schema, plus the request limits the engine applies and, with authentication
    on, the bearer scheme (Swagger UI's Authorize button; the open paths need none)."""
    if app.openapi_schema is None:
        engine = app.state.engine
        retriever = engine.retriever
        knobs = getattr(retriever.index, "search_params", dict)() if retriever is not None else None
        schema = FastAPI.openapi(app)
        dialects.document_openapi(schema, engine.settings)
        engine.limits.apply_to_openapi(schema, knobs)
        open_paths = getattr(app.state, "open_paths", None)
        if open_paths is not None:
            schema.setdefault("components", {})["securitySchemes"] = {
                "bearerAuth": {"type": "http", "scheme": "bearer", "description": "A token from the tokens file."}
            }
            schema["security"] = [{"bearerAuth": []}]
            for path, operations in schema.get("paths", {}).items():
                if path in open_paths:
                    for operation in operations.values():
                        operation["security"] = []
        if retriever is None:  # the index's knobs are not known yet: describe them again once loaded
            app.openapi_schema = None
            return schema
    return app.openapi_schema


DOCS_ASSETS = "/docs/assets"
DOCS_PATHS = (
    "/docs",
    "/openapi.json",
    f"{DOCS_ASSETS}/swagger-ui-bundle.js",
    f"{DOCS_ASSETS}/swagger-ui.css",
    f"{DOCS_ASSETS}/favicon.png",
)


def _add_docs(app: FastAPI) -> None:
    """Swagger UI from assets shipped in the image (fastapi-offline's copy): the image runs offline,
    where a CDN-hosted /docs would be a blank page."""
    import fastapi_offline
    from fastapi.openapi.docs import get_swagger_ui_html
    from starlette.staticfiles import StaticFiles

    assets = Path(fastapi_offline.__file__).parent / "static"
    app.mount(DOCS_ASSETS, StaticFiles(directory=assets), name="docs-assets")

    async def docs() -> HTMLResponse:
        return get_swagger_ui_html(
            openapi_url="/openapi.json",
            title="retriever - API",
            swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
            swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
            swagger_favicon_url=f"{DOCS_ASSETS}/favicon.png",
            swagger_ui_parameters={"persistAuthorization": True},
        )

    app.add_api_route("/docs", docs, methods=["GET"], include_in_schema=False)


def build_app(engine: Engine | Settings | None = None) -> FastAPI:
    """The HTTP app around `engine` (or a new Engine from these settings, or from the environment)."""
    if not isinstance(engine, Engine):
        engine = Engine(engine)
    settings = engine.settings
    app = FastAPI(
        title="retriever",
        version=__version__,
        description="Dense retrieval, Search-R1 wire format: one shared FAISS index, dynamic micro-batching.",
        lifespan=lifespan,
        docs_url=None,
        redoc_url=None,
    )
    app.state.engine = engine
    app.include_router(dialects.router)  # POST /retrieve (every dialect's shape), /search, /access, ...
    app.include_router(router)
    mcp_server.install_http(app)  # POST /mcp
    _add_docs(app)

    Instrumentator(
        should_group_status_codes=True,
        should_instrument_requests_inprogress=True,
        inprogress_labels=True,
        excluded_handlers=["/metrics", "/health", "/livez"],
    ).instrument(app, latency_lowr_buckets=metrics.LATENCY_BUCKETS)

    # Inside authentication (added first: innermost), outside everything that reads the body: a
    # search that admission would refuse is refused from its headers alone.
    app.add_middleware(
        EarlyRefusalMiddleware,
        refusal=engine.refusal,
        paths=SEARCH_PATHS,
        status=settings.overload_status,
        retry_after_s=settings.retry_after_s,
    )
    tokens = TokenSource(settings)
    if tokens.tokens:
        open_paths = {p.strip() for p in settings.auth_open_paths.split(",") if p.strip()}
        if settings.docs_without_token:
            open_paths |= set(DOCS_PATHS)
        app.state.open_paths = open_paths
        app.add_middleware(AuthMiddleware, tokens=tokens, open_paths=open_paths)
    if settings.cors_origins.strip():
        origins = [o.strip() for o in settings.cors_origins.split(",") if o.strip()]
        app.add_middleware(CORSMiddleware, allow_origins=origins, allow_methods=["GET", "POST"], allow_headers=["*"])
    app.add_middleware(
        BodyLimitMiddleware, max_bytes=settings.max_body_bytes, read_timeout_s=settings.body_read_timeout_s
    )

    app.add_exception_handler(ServingError, serving_error)
    app.add_exception_handler(RequestValidationError, invalid_request)
    app.add_exception_handler(StarletteHTTPException, http_error)
    app.add_exception_handler(Exception, unexpected_error)
    app.openapi = functools.partial(_openapi_with_limits, app)  # type: ignore[method-assign]
    return app


def create_app(settings: Settings | None = None) -> FastAPI:
    """uvicorn factory (`app.api:create_app`, used by `--reload`): an app with its own engine."""
    return build_app(settings)
