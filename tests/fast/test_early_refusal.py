"""Admission before parsing: when even one query would be refused, a search is refused from its headers."""

from __future__ import annotations

import asyncio
import contextlib
import threading

import httpx
import numpy as np
import pytest

from app.api import build_app
from app.engine import Engine
from app.settings import Settings
from tests.fast.conftest import FakeEncoder

pytestmark = pytest.mark.anyio


class HeldEncoder(FakeEncoder):
    def __init__(self) -> None:
        super().__init__()
        self.gate, self.entered = threading.Event(), threading.Event()

    def encode(self, texts: list[str], helpers=None) -> np.ndarray:
        self.entered.set()
        assert self.gate.wait(10), "test never released the gate"
        return super().encode(texts, helpers)


async def test_a_full_queue_refuses_without_reading_the_body(parts) -> None:
    _, index, corpus = parts
    encoder = HeldEncoder()
    engine = Engine.from_parts(encoder, index, corpus, Settings(max_queue=4, retry_after_s=3))
    app = build_app(engine)
    async with contextlib.AsyncExitStack() as stack:
        await stack.enter_async_context(app.router.lifespan_context(app))
        await engine.wait_ready()
        client = await stack.enter_async_context(
            httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://test")
        )
        running = asyncio.create_task(client.post("/retrieve", json={"queries": ["a", "b", "c", "d"]}))
        assert await asyncio.to_thread(encoder.entered.wait, 10)
        # Not JSON: read and parsed, it would be a 422; refused from the headers, it never is.
        refused = await client.post("/retrieve", content=b"{not json", headers={"content-type": "application/json"})
        health = await client.get("/health")  # other paths are not refused
        encoder.gate.set()
        assert (await running).status_code == 200
        after = await client.post("/retrieve", content=b"{not json", headers={"content-type": "application/json"})
    assert refused.status_code == 503
    assert refused.json() == {"detail": "overloaded: 4 queries already waiting (limit 4); retry later"}
    assert refused.headers["retry-after"] == "3" and refused.headers["connection"] == "close"
    assert health.status_code == 200
    assert after.status_code == 422  # with room again, the body is read (and found wanting)
