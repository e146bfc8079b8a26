"""The HTTP face in this process (httpx's ASGI transport, no socket): every refusal of
docs/validation.md with its status, detail and headers, and the Search-R1 answers, over an engine
built from a fake encoder and a real 100-row FAISS index."""

from __future__ import annotations

import asyncio
import contextlib
import json
import re
import threading
from collections.abc import AsyncIterator
from typing import Any

import httpx
import numpy as np
import pytest

from app.api import build_app
from app.corpus import CorpusStore
from app.engine import Engine
from app.index import FaissIndex
from app.lanes import Helpers
from app.settings import Settings
from tests.fast.conftest import ROWS, FakeEncoder, passage_text

pytestmark = pytest.mark.anyio

Parts = tuple[FakeEncoder, FaissIndex, CorpusStore]


class GatedEncoder(FakeEncoder):
    """Holds every encode at a gate while held; raises on the query "boom"."""

    def __init__(self) -> None:
        super().__init__()
        self.gate = threading.Event()
        self.gate.set()
        self.entered = threading.Event()

    def encode(self, texts: list[str], helpers: Helpers | None = None) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(10), "test never released the gate"
        if "boom" in texts:
            raise RuntimeError("encoder exploded")
        return super().encode(texts, helpers)


@contextlib.asynccontextmanager
async def serving(engine: Engine, start: bool = True) -> AsyncIterator[httpx.AsyncClient]:
    """A client of build_app(engine); with `start`, the app's lifespan runs and the engine is ready."""
    app = build_app(engine)
    async with contextlib.AsyncExitStack() as stack:
        if start:
            await stack.enter_async_context(app.router.lifespan_context(app))
            await engine.wait_ready()
        transport = httpx.ASGITransport(app=app)
        yield await stack.enter_async_context(httpx.AsyncClient(transport=transport, base_url="http://test"))


def engine_of(parts: Parts, **settings: Any) -> Engine:
    encoder, index, corpus = parts
    return Engine.from_parts(encoder, index, corpus, Settings(**settings))


@pytest.fixture()
async def client(parts: Parts) -> AsyncIterator[httpx.AsyncClient]:
    async with serving(engine_of(parts)) as running:
        yield running


def rejections(metrics_text: str, reason: str) -> float:
    match = re.search(rf'^retriever_rejections_total{{reason="{reason}"}} ([0-9.e+]+)$', metrics_text, re.M)
    assert match, f"no rejection counter for {reason}"
    return float(match.group(1))


# -- answers ----------------------------------------------------------------------------------


async def test_each_query_finds_its_own_passage_first_in_search_r1_shape(client: httpx.AsyncClient) -> None:
    queries = [passage_text(7), passage_text(42), passage_text(99)]
    response = await client.post("/retrieve", json={"queries": queries, "topk": 4, "return_scores": True})
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/json"
    result = response.json()["result"]
    assert [len(items) for items in result] == [4, 4, 4]
    for row, items in zip([7, 42, 99], result, strict=True):
        assert set(items[0]) == {"document", "score"}
        assert items[0]["document"] == {"id": str(row), "contents": f'"Title {row}"\n{passage_text(row)}'}
        assert items[0]["score"] == pytest.approx(1.0, abs=1e-5)
        scores = [item["score"] for item in items]
        assert scores == sorted(scores, reverse=True)


@pytest.mark.parametrize("topk", [None, 0])
async def test_null_or_zero_topk_means_the_default_and_rows_come_bare(client: httpx.AsyncClient, topk: Any) -> None:
    response = await client.post("/retrieve", json={"queries": [passage_text(3)], "topk": topk})
    assert response.status_code == 200
    rows = response.json()["result"][0]
    assert len(rows) == 3 and rows[0]["id"] == "3" and all("score" not in row for row in rows)


async def test_topk_above_the_row_count_returns_every_row_once(parts: Parts) -> None:
    async with serving(engine_of(parts, max_topk=500)) as client:
        response = await client.post("/retrieve", json={"queries": ["anything"], "topk": 500})
    rows = response.json()["result"][0]
    assert sorted(int(row["id"]) for row in rows) == list(range(ROWS))


async def test_health_livez_info_and_the_schema_limits(parts: Parts) -> None:
    engine = engine_of(parts, max_queries_per_request=7, max_topk=9)
    async with serving(engine) as client:
        health = await client.get("/health")
        assert health.status_code == 200 and health.json()["status"] == "ready"
        assert (await client.get("/livez")).json() == {"status": "alive"}
        info = (await client.get("/info")).json()
        assert info["index"]["vectors"] == ROWS and info["corpus"]["rows"] == ROWS
        assert info["limits"]["max_topk"] == 9 and info["model"]["name"] == "fake-encoder"
        fields = (await client.get("/openapi.json")).json()["components"]["schemas"]["RetrieveRequest"]["properties"]
        assert (fields["queries"]["minItems"], fields["queries"]["maxItems"]) == (1, 7)
        integer = next(option for option in fields["topk"]["anyOf"] if option.get("type") == "integer")
        assert (integer["minimum"], integer["maximum"]) == (0, 9)
        assert (await client.get("/docs")).status_code == 200


# -- 400 / 404 / 405 / 413 / 415 / 422 ---------------------------------------------------------


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        (b'{"queries": ["caf\xe9"]}', "request body is not valid UTF-8 (byte 17: invalid continuation byte)"),
        (b'{"queries": ["x"], "topk": ' + b"9" * 5000 + b"}", "request body is not valid JSON: Exceeds the limit"),
        (b"[" * 5000 + b"]" * 5000, "request body is not valid JSON: nested too deeply"),
    ],
)
async def test_unparseable_body_is_400_naming_the_problem(client: httpx.AsyncClient, body: bytes, needle: str) -> None:
    response = await client.post("/retrieve", content=body, headers={"content-type": "application/json"})
    assert response.status_code == 400
    assert needle in response.json()["detail"]


async def test_unknown_path_is_404_and_wrong_method_is_405_with_allow(client: httpx.AsyncClient) -> None:
    missing = await client.get("/nope")
    assert (missing.status_code, missing.json()) == (404, {"detail": "Not Found"})
    wrong = await client.get("/retrieve")
    assert (wrong.status_code, wrong.json()) == (405, {"detail": "Method Not Allowed"})
    assert wrong.headers["allow"] == "POST"


async def test_body_over_the_limit_is_413_by_length_or_by_counting(parts: Parts) -> None:
    async def chunks() -> AsyncIterator[bytes]:
        yield b'{"queries": ["'
        for _ in range(10):
            yield b"a" * 500
        yield b'"]}'

    async with serving(engine_of(parts, max_body_bytes=2048)) as client:
        declared = await client.post("/retrieve", json={"queries": ["a" * 3000]})
        streamed = await client.post("/retrieve", content=chunks(), headers={"content-type": "application/json"})
        counted = rejections((await client.get("/metrics")).text, "body_too_large")
    for response in (declared, streamed):
        assert response.status_code == 413
        assert response.json() == {"detail": "request body exceeds the limit of 2048 bytes (RETRIEVER_MAX_BODY_BYTES)"}
    assert counted >= 2


async def test_body_not_received_in_time_is_408_and_closes(parts: Parts) -> None:
    async def trickle() -> AsyncIterator[bytes]:
        yield b'{"queries": '
        await asyncio.sleep(5)
        yield b'["x"]}'

    async with serving(engine_of(parts, body_read_timeout_s=0.2)) as client:
        response = await client.post("/retrieve", content=trickle(), headers={"content-type": "application/json"})
    assert response.status_code == 408
    assert response.headers["connection"] == "close"
    assert "request body not received within 0.2 s (got 12 bytes" in response.json()["detail"]


@pytest.mark.parametrize(("content_type", "shown"), [("text/plain", "'text/plain'"), (None, "no Content-Type")])
async def test_non_json_content_type_is_415(client: httpx.AsyncClient, content_type: str | None, shown: str) -> None:
    headers = {"content-type": content_type} if content_type else {}
    response = await client.post("/retrieve", content=b'{"queries": ["x"]}', headers=headers)
    assert response.status_code == 415
    assert response.json() == {"detail": f"Content-Type must be application/json (got {shown})"}


async def test_json_media_types_with_parameters_are_accepted(client: httpx.AsyncClient) -> None:
    for content_type in ("application/json; charset=utf-8", "application/vnd.api+json"):
        response = await client.post("/retrieve", content=b'{"queries": ["x"]}', headers={"content-type": content_type})
        assert response.status_code == 200, content_type


@pytest.mark.parametrize(
    ("payload", "detail", "reason"),
    [
        ({"queries": ["x"] * 6}, "queries: 6 queries exceed the limit of 5 per request", "too_many_queries"),
        ({"queries": ["x"], "topk": 11}, "topk: 11 exceeds the limit of 10 (RETRIEVER_MAX_TOPK)", "topk"),
        ({"queries": ["x"], "topk": -1}, "topk: must be positive, null or 0 (got -1)", "topk"),
        ({"queries": []}, "queries: must hold at least one query", "invalid"),
        ({"queries": ["ok", "a\ud800b"]}, "queries[1]: holds an unpaired surrogate (\\ud800 at char", "invalid"),
    ],
)
async def test_limits_are_422_naming_the_field_and_counted(
    parts: Parts, payload: Any, detail: str, reason: str
) -> None:
    async with serving(engine_of(parts, max_queries_per_request=5, max_topk=10)) as client:
        before = rejections((await client.get("/metrics")).text, reason)
        body = json.dumps(payload).encode()  # json.dumps escapes the lone surrogate as \ud800
        response = await client.post("/retrieve", content=body, headers={"content-type": "application/json"})
        after = rejections((await client.get("/metrics")).text, reason)
    assert response.status_code == 422
    assert detail in response.json()["detail"]
    assert after == before + 1


async def test_truncated_json_is_422_json_decode_error(client: httpx.AsyncClient) -> None:
    response = await client.post("/retrieve", content=b'{"queries": ["x"', headers={"content-type": "application/json"})
    assert response.status_code == 422
    assert response.json()["detail"][0]["msg"].startswith("JSON decode error")


@pytest.mark.parametrize(
    ("payload", "location"),
    [
        ({"topk": 3}, ["body", "queries"]),
        ({"queries": "who wrote x"}, ["body", "queries"]),
        ({"queries": [1]}, ["body", "queries", 0]),
        ({"queries": ["x"], "topk": "3"}, ["body", "topk"]),
        ({"queries": ["x"], "topk": True}, ["body", "topk"]),
        ({"queries": ["x"], "return_scores": 0}, ["body", "return_scores"]),
    ],
)
async def test_schema_errors_are_422_listing_each_field(
    client: httpx.AsyncClient, payload: Any, location: list[Any]
) -> None:
    response = await client.post("/retrieve", json=payload)
    assert response.status_code == 422
    problems = response.json()["detail"]
    assert isinstance(problems, list) and location in [problem["loc"] for problem in problems]
    assert all(set(problem) == {"loc", "msg", "type"} for problem in problems)


async def test_tokens_guard_every_path_but_the_open_ones(parts: Parts) -> None:
    async with serving(engine_of(parts, auth_tokens="tok-1,tok-2")) as client:
        refused = await client.post("/retrieve", json={"queries": ["x"]})
        wrong = await client.post("/retrieve", json={"queries": ["x"]}, headers={"authorization": "Bearer tok-3"})
        allowed = await client.post("/retrieve", json={"queries": ["x"]}, headers={"authorization": "Bearer tok-2"})
        docs = await client.get("/docs")
        health = await client.get("/health")
    for response in (refused, wrong, docs):
        assert (response.status_code, response.json()) == (401, {"detail": "unauthorized"})
        assert response.headers["www-authenticate"] == "Bearer"
    assert allowed.status_code == 200 and health.status_code == 200


# -- 503 / 429 / 500 ---------------------------------------------------------------------------


async def test_not_ready_is_503_with_retry_after_and_progress(parts: Parts) -> None:
    engine = engine_of(parts, retry_after_s=4)
    async with serving(engine, start=False) as client:
        response = await client.post("/retrieve", json={"queries": ["x"]})
        health = await client.get("/health")
        info = await client.get("/info")
    assert response.status_code == 503
    assert response.headers["retry-after"] == "4"
    assert response.json() == {"detail": "not ready: loading (starting, 0%)"}
    assert health.status_code == 503 and health.json()["status"] == "loading"
    assert info.status_code == 200  # the parts exist: /info shows them before the scheduler runs


@pytest.mark.parametrize("overload_status", [503, 429])
async def test_overload_is_refused_at_once_with_retry_after(parts: Parts, overload_status: int) -> None:
    encoder = GatedEncoder()
    _, index, corpus = parts
    settings = Settings(max_queue=4, overload_status=overload_status, retry_after_s=2)
    engine = Engine.from_parts(encoder, index, corpus, settings)
    async with serving(engine) as client:
        encoder.gate.clear()
        first = asyncio.create_task(client.post("/retrieve", json={"queries": ["a", "b", "c"]}))
        assert await asyncio.to_thread(encoder.entered.wait, 10)
        refused = await client.post("/retrieve", json={"queries": ["d", "e"]})
        encoder.gate.set()
        answered = await first
        counted = rejections((await client.get("/metrics")).text, "queue_full")
    assert refused.status_code == overload_status
    assert refused.headers["retry-after"] == "2"
    assert refused.json() == {"detail": "overloaded: 3 queries already waiting (limit 4); retry later"}
    assert answered.status_code == 200 and len(answered.json()["result"]) == 3
    assert counted >= 1


async def test_a_failed_search_is_500_without_a_trace_and_the_next_one_works(parts: Parts) -> None:
    encoder = GatedEncoder()
    _, index, corpus = parts
    async with serving(Engine.from_parts(encoder, index, corpus, Settings())) as client:
        failed = await client.post("/retrieve", json={"queries": ["boom"]})
        fine = await client.post("/retrieve", json={"queries": [passage_text(5)], "topk": 1})
    assert failed.status_code == 500
    assert failed.json() == {"detail": "search failed: RuntimeError: encoder exploded"}
    assert fine.json()["result"][0][0]["id"] == "5"


async def test_shutting_down_fails_readiness_but_keeps_answering(parts: Parts) -> None:
    engine = engine_of(parts)
    async with serving(engine) as client:
        engine.begin_shutdown()
        health = await client.get("/health")
        answered = await client.post("/retrieve", json={"queries": ["x"]})
    assert health.status_code == 503 and health.json()["status"] == "shutting_down"
    assert answered.status_code == 200
