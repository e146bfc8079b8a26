"""The MCP server, through the `mcp` package's own client: over streamable HTTP at /mcp (behind the
bearer tokens) and over stdio (`retriever mcp`, with an index loaded in the process or forwarding
to a running server). Each session lists the tools and calls both, and gets the documents
`/retrieve` gives for the same query."""

from __future__ import annotations

import asyncio
import json
import sys
from collections.abc import AsyncIterator, Iterator
from contextlib import asynccontextmanager
from pathlib import Path
from typing import Any

import httpx
import httpx2
import pytest
from mcp import ClientSession, StdioServerParameters, stdio_client
from mcp.client.streamable_http import streamable_http_client

from tests.helpers import ROOT, RunningServer, run_server

TOKEN = "mcp-test-token"
QUERY = "ancient greek philosopher"


@pytest.fixture(scope="module")
def auth_server(demo_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {"RETRIEVER_AUTH_TOKENS": TOKEN}
    with run_server(["--index-dir", str(demo_index)], tmp_path_factory.mktemp("mcp"), env=env) as running:
        yield running


def expected_hits(server: RunningServer, k: int) -> list[dict[str, Any]]:
    response = httpx.post(
        f"{server.url}/retrieve",
        json={"queries": [QUERY], "topk": k, "return_scores": True},
        headers={"Authorization": f"Bearer {TOKEN}"},
        timeout=30,
    )
    assert response.status_code == 200, response.text
    return response.json()["result"][0]


def tool_json(result: Any) -> Any:
    """A tool's answer as the client reads it: the JSON text content."""
    assert not result.is_error, result.content
    return (
        json.loads(result.content[0].text) if len(result.content) == 1 else [json.loads(c.text) for c in result.content]
    )


async def exercise(session: ClientSession) -> tuple[list[str], list[dict[str, Any]], dict[str, Any]]:
    """List the tools, search, then fetch the first hit's document."""
    await session.initialize()
    names = sorted(tool.name for tool in (await session.list_tools()).tools)
    found = await session.call_tool("search", {"query": QUERY, "k": 3})
    assert not found.is_error, found.content
    hits = found.structured_content["result"]
    document = tool_json(await session.call_tool("get_document", {"docid": hits[0]["docid"]}))
    missing = await session.call_tool("get_document", {"docid": "no-such-document"})
    assert missing.is_error and "no-such-document" in missing.content[0].text
    return names, hits, document


def check(server: RunningServer, names: list[str], hits: list[dict[str, Any]], document: dict[str, Any]) -> None:
    assert names == ["get_document", "search"]
    expected = expected_hits(server, 3)
    assert [hit["docid"] for hit in hits] == [item["document"]["id"] for item in expected]
    assert [hit["snippet"] for hit in hits] == [item["document"]["contents"] for item in expected]
    for hit, item in zip(hits, expected, strict=True):
        assert hit["score"] == pytest.approx(item["score"], abs=1e-4)
    assert document["docid"] == hits[0]["docid"]
    assert document["text"] == expected[0]["document"]["contents"]
    assert document["title"] == expected[0]["document"]["title"]


@asynccontextmanager
async def http_session(server: RunningServer, token: str | None) -> AsyncIterator[ClientSession]:
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    async with (
        httpx2.AsyncClient(headers=headers, timeout=60) as client,
        streamable_http_client(f"{server.url}/mcp", http_client=client) as (read, write),
        ClientSession(read, write) as session,
    ):
        yield session


def test_mcp_over_streamable_http_lists_and_calls_both_tools(auth_server: RunningServer) -> None:
    async def run() -> tuple[list[str], list[dict[str, Any]], dict[str, Any]]:
        async with http_session(auth_server, TOKEN) as session:
            return await exercise(session)

    check(auth_server, *asyncio.run(run()))


def test_mcp_over_http_needs_the_bearer_token(auth_server: RunningServer) -> None:
    initialize = {"jsonrpc": "2.0", "id": 1, "method": "initialize", "params": {}}
    headers = {"Accept": "application/json, text/event-stream"}
    response = httpx.post(f"{auth_server.url}/mcp", json=initialize, headers=headers, timeout=10)
    assert response.status_code == 401
    wrong = httpx.post(f"{auth_server.url}/mcp", json=initialize, headers=headers | {"Authorization": "Bearer no"})
    assert wrong.status_code == 401


def test_mcp_tool_calls_are_counted_as_their_dialect(auth_server: RunningServer) -> None:
    def counted() -> float:
        text = httpx.get(f"{auth_server.url}/metrics", timeout=10).text
        prefix = 'retriever_dialect_requests_total{dialect="mcp",outcome="ok"} '
        line = next((row for row in text.splitlines() if row.startswith(prefix)), None)
        return float(line.rsplit(" ", 1)[1]) if line else 0.0

    async def run() -> None:
        async with http_session(auth_server, TOKEN) as session:
            await session.initialize()
            await session.call_tool("search", {"query": QUERY})

    before = counted()
    asyncio.run(run())
    assert counted() == before + 1


def stdio_params(args: list[str], env: dict[str, str] | None = None) -> StdioServerParameters:
    return StdioServerParameters(
        command=sys.executable,
        args=["-m", "app", "mcp", *args],
        cwd=str(ROOT),
        env={"HF_HUB_OFFLINE": "1", "RETRIEVER_DATA_DIR": str(ROOT / ".cache"), "PATH": "/usr/bin:/bin"} | (env or {}),
    )


async def stdio_exercise(params: StdioServerParameters) -> tuple[list[str], list[dict[str, Any]], dict[str, Any]]:
    async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
        return await asyncio.wait_for(exercise(session), timeout=240)


def test_mcp_over_stdio_with_the_index_in_process(demo_index: Path, auth_server: RunningServer) -> None:
    params = stdio_params(["--index-dir", str(demo_index)])
    check(auth_server, *asyncio.run(stdio_exercise(params)))


def test_mcp_over_stdio_forwarding_to_a_server_with_its_token(auth_server: RunningServer) -> None:
    params = stdio_params(["--server", auth_server.url], env={"RETRIEVER_MCP_TOKEN": TOKEN})
    check(auth_server, *asyncio.run(stdio_exercise(params)))


def test_mcp_stdio_forwarding_without_the_token_reports_the_refusal(auth_server: RunningServer) -> None:
    async def run() -> Any:
        params = stdio_params(["--server", auth_server.url])
        async with stdio_client(params) as (read, write), ClientSession(read, write) as session:
            await session.initialize()
            return await session.call_tool("search", {"query": QUERY})

    result = asyncio.run(run())
    assert result.is_error and "401" in result.content[0].text
