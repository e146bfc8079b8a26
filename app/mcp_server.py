"""MCP server (the `mcp` SDK): BrowseComp-Plus's `search` and `get_document` tools.

Two transports:
- streamable HTTP at `/mcp` on the server's own port (`install_http`): stateless JSON answers, so
  any worker can take any request; behind the same guards as every route (bearer tokens, body
  limit); searches go through the same engine and micro-batcher as `/retrieve`.
- stdio for local agents (`retriever mcp`, `serve_stdio`): either an engine in the process (the
  `retriever serve` flags choose the index), or `--server URL` to forward to a running retriever
  with its bearer token (`--token` / `RETRIEVER_MCP_TOKEN`).

Tool shapes follow BrowseComp-Plus's MCP server: `search(query)` answers a list of
`{docid, score, snippet}` (k fixed by the server, `--browsecomp-k`; an optional `k` overrides it),
`get_document(docid)` answers `{docid, title, text}`. Errors are tool errors carrying the same
message the HTTP API would give.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import AsyncIterator, Callable
from typing import Any, Protocol

import httpx
from fastapi import FastAPI
from mcp.server.mcpserver import MCPServer
from mcp.server.mcpserver.exceptions import ToolError

from app import __version__, metrics
from app.errors import NotFound, RetrieverError, ServingError
from app.settings import Settings

log = logging.getLogger(__name__)

SEARCH_DESCRIPTION = (
    "Search the corpus with a natural-language query; returns the top passages as "
    "{docid, score, snippet}, best first (k results: the server's default unless `k` is given)."
)
GET_DOCUMENT_DESCRIPTION = "Fetch one whole document by the docid a search returned: {docid, title, text}."


class ToolBackend(Protocol):
    """What the tools need: a search and a lookup by id (an engine here, or a server over HTTP)."""

    async def search(self, query: str, k: int | None) -> list[dict[str, Any]]: ...

    async def document(self, docid: str) -> dict[str, Any]: ...


class EngineBackend:
    """Tools answered by an engine in this process (the HTTP app's, or one `retriever mcp` loads)."""

    def __init__(self, get_engine: Callable[[], Any], wait_ready: bool = False) -> None:
        # wait_ready: a local agent's first call waits for the index to load (HTTP clients get
        # "not ready" at once, as /retrieve answers 503, and retry).
        self._get_engine, self._wait_ready = get_engine, wait_ready

    async def _engine(self) -> Any:
        engine = self._get_engine()
        if self._wait_ready:
            await engine.wait_ready()
        return engine

    async def search(self, query: str, k: int | None) -> list[dict[str, Any]]:
        from app.dialects import checked_count, hits
        from app.documents import doc_id

        engine = await self._engine()
        settings: Settings = engine.settings
        topk = settings.browsecomp_k if k is None else checked_count("k", k, settings.max_topk, "RETRIEVER_MAX_TOPK")
        found = await engine.search([query], topk)
        return [search_hit(doc_id(row, number), score, row) for number, score, row in hits(found, 0)]

    async def document(self, docid: str) -> dict[str, Any]:
        from app.dialects import find_document

        return await find_document(await self._engine(), docid)


class HttpBackend:
    """Tools forwarded to a running retriever: Search-R1's /retrieve and BrowseComp-Plus's /document."""

    def __init__(self, server_url: str, token: str | None, default_k: int, timeout_s: float = 60.0) -> None:
        headers = {"Authorization": f"Bearer {token}"} if token else {}
        self._client = httpx.AsyncClient(base_url=server_url.rstrip("/"), headers=headers, timeout=timeout_s)
        self._default_k = default_k

    async def search(self, query: str, k: int | None) -> list[dict[str, Any]]:
        body = {"queries": [query], "topk": k or self._default_k, "return_scores": True}
        answer = await self._post("/retrieve", body)
        return [
            search_hit(str(item["document"].get("id", "")), float(item["score"]), item["document"])
            for item in answer["result"][0]
        ]

    async def document(self, docid: str) -> dict[str, Any]:
        return (await self._post("/document", {"docid": docid}))["result"]

    async def _post(self, path: str, body: dict[str, Any]) -> Any:
        try:
            response = await self._client.post(path, json=body)
        except httpx.HTTPError as exc:
            raise ToolError(f"retriever at {self._client.base_url} unreachable: {type(exc).__name__}: {exc}") from None
        if response.status_code == 404:
            raise NotFound(_detail(response))
        if response.status_code != 200:
            raise ToolError(f"retriever answered {response.status_code}: {_detail(response)}")
        return response.json()

    async def aclose(self) -> None:
        await self._client.aclose()


def _detail(response: httpx.Response) -> str:
    try:
        detail = response.json().get("detail")
    except ValueError:
        detail = None
    return str(detail) if detail is not None else response.text[:500]


def search_hit(docid: str, score: float, row: dict[str, Any]) -> dict[str, Any]:
    """BrowseComp-Plus's search result: docid, score and the passage as `snippet` (whole contents)."""
    hit: dict[str, Any] = {"docid": docid, "score": score, "snippet": row.get("contents", "")}
    if isinstance(row.get("url"), str):
        hit["url"] = row["url"]
    return hit


def build_server(backend: ToolBackend, lifespan: Callable[[Any], Any] | None = None) -> MCPServer:
    """The MCP server with the two tools, answered by `backend` (`lifespan`: runs while it serves)."""
    server: MCPServer = MCPServer(
        "retriever",
        version=__version__,
        instructions="Dense retrieval over this server's corpus: `search` for passages, `get_document` by docid.",
        lifespan=lifespan,
    )

    @server.tool(name="search", description=SEARCH_DESCRIPTION)
    async def search(query: str, k: int | None = None) -> list[dict[str, Any]]:
        return await _answer(backend.search(query, k))

    @server.tool(name="get_document", description=GET_DOCUMENT_DESCRIPTION)
    async def get_document(docid: str) -> dict[str, Any]:
        return await _answer(backend.document(docid))

    return server


async def _answer(call: Any) -> Any:
    """Run a tool call, counted under dialect "mcp"; refusals become tool errors with their message."""
    try:
        result = await call
    except ServingError as exc:
        metrics.DIALECT_REQUESTS.labels("mcp", exc.reason or "failed").inc()
        raise ToolError(exc.detail) from None
    except RetrieverError as exc:  # e.g. `retriever mcp` could not load its index: say why
        metrics.DIALECT_REQUESTS.labels("mcp", "failed").inc()
        raise ToolError(str(exc)) from None
    except ToolError:
        metrics.DIALECT_REQUESTS.labels("mcp", "failed").inc()
        raise
    metrics.DIALECT_REQUESTS.labels("mcp", "ok").inc()
    return result


def install_http(app: FastAPI) -> None:
    """Serve the tools at `/mcp` on this app, answered by its engine (`app.state.engine`)."""
    settings: Settings = app.state.engine.settings
    server = build_server(EngineBackend(lambda: app.state.engine))
    # Stateless: no session to pin to one worker; JSON answers: no event stream to hold open.
    mcp_app = server.streamable_http_app(
        streamable_http_path="/mcp", stateless_http=True, json_response=True, host=settings.host
    )
    app.router.routes.extend(mcp_app.routes)
    outer = app.router.lifespan_context

    @contextlib.asynccontextmanager
    async def lifespan(target: Any) -> AsyncIterator[Any]:
        async with server.session_manager.run(), outer(target) as state:
            yield state

    app.router.lifespan_context = lifespan


async def serve_stdio(settings: Settings, server_url: str | None, token: str | None) -> None:
    """`retriever mcp`: the tools over stdin/stdout (logs go to stderr)."""
    if server_url:
        proxy = HttpBackend(server_url, token, settings.browsecomp_k)
        try:
            await build_server(proxy).run_stdio_async()
        finally:
            await proxy.aclose()
        return
    from app.engine import Engine

    engine = Engine(settings)

    # Load once serving has begun: the transport points fd 1 at stderr while it serves, so nothing
    # printed while the model loads reaches the protocol stream; the tools wait for the load.
    @contextlib.asynccontextmanager
    async def loaded(_: Any) -> AsyncIterator[None]:
        await engine.start()
        try:
            yield None
        finally:
            await engine.stop()

    await build_server(EngineBackend(lambda: engine, wait_ready=True), loaded).run_stdio_async()
