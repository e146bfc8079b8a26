"""The HTTP contract, against a real server on loopback with the real model and FAISS index."""

from __future__ import annotations

import asyncio
import json
import re
from pathlib import Path

import httpx
import numpy as np
import pytest

from app.corpus import CorpusStore
from app.demo import labelled_queries
from tests.helpers import DEMO_LIMIT, RunningServer


def post(server: RunningServer, payload: object, **kwargs: object) -> httpx.Response:
    return httpx.post(f"{server.url}/retrieve", json=payload, timeout=30, **kwargs)  # type: ignore[arg-type]


def test_search_r1_payload_with_scores(server: RunningServer) -> None:
    queries = ["Art movement", "ancient greek philosopher", "programming language"]
    response = post(server, {"queries": queries, "topk": 3, "return_scores": True})
    assert response.status_code == 200
    result = response.json()["result"]
    assert len(result) == len(queries)
    for items in result:
        assert len(items) == 3
        scores = [item["score"] for item in items]
        assert scores == sorted(scores, reverse=True)
        for item in items:
            assert set(item) == {"document", "score"}
            doc = item["document"]
            # Search-R1 splits the first line (quoted title) from the text.
            title, text = doc["contents"].split("\n", 1)
            assert title.startswith('"') and title.endswith('"') and text
            assert {"id", "contents", "title"} <= set(doc)


def test_search_r1_payload_without_scores(server: RunningServer) -> None:
    response = post(server, {"queries": ["Art movement"], "topk": 2, "return_scores": False})
    assert response.status_code == 200
    rows = response.json()["result"][0]
    assert len(rows) == 2
    assert all("contents" in row and "score" not in row for row in rows)
    # return_scores defaults to false, as in Search-R1.
    default = post(server, {"queries": ["Art movement"], "topk": 2})
    assert default.json() == response.json()


@pytest.mark.parametrize("topk", [None, 0])
def test_null_or_zero_topk_uses_default(server: RunningServer, topk: int | None) -> None:
    response = post(server, {"queries": ["Art movement"], "topk": topk, "return_scores": True})
    assert response.status_code == 200
    assert len(response.json()["result"][0]) == 3


def test_labelled_queries_find_their_article(server: RunningServer) -> None:
    pairs = labelled_queries(DEMO_LIMIT)[:60]
    response = post(server, {"queries": [q for q, _ in pairs], "topk": 10, "return_scores": True})
    result = response.json()["result"]
    hits_at_10 = sum(
        any(item["document"]["id"] == str(row) for item in items) for (_, row), items in zip(pairs, result, strict=True)
    )
    # Short descriptions are weak queries; most should still find their article in the top 10.
    assert hits_at_10 >= 0.6 * len(pairs), f"{hits_at_10}/{len(pairs)}"


def test_results_equal_brute_force_numpy(server: RunningServer, demo_index: Path, encoder) -> None:
    store = CorpusStore(demo_index / "corpus")
    passages = encoder.encode([store.row(i)["contents"] for i in range(store.count)])
    queries = [q for q, _ in labelled_queries(DEMO_LIMIT)[:25]] + ["who wrote the aeneid", "jazz"]
    expected_scores = encoder.encode(queries) @ passages.T
    response = post(server, {"queries": queries, "topk": 5, "return_scores": True})
    for qi, items in enumerate(response.json()["result"]):
        got_ids = [int(item["document"]["id"]) for item in items]
        got_scores = np.array([item["score"] for item in items])
        best = np.argsort(-expected_scores[qi])[:5]
        np.testing.assert_allclose(got_scores, expected_scores[qi][best], atol=1e-4)
        # Ids agree except where two passages tie to within float error.
        for rank, (got, want) in enumerate(zip(got_ids, best, strict=True)):
            if got != want:
                assert abs(expected_scores[qi][got] - expected_scores[qi][want]) < 1e-4, (qi, rank)
    store.close()


def test_fifty_concurrent_requests_keep_their_own_results(server: RunningServer) -> None:
    queries = [q for q, _ in labelled_queries(DEMO_LIMIT)[:50]]
    singles = [post(server, {"queries": [q], "topk": 3}).json()["result"][0] for q in queries[:10]]

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=60) as client:
            return await asyncio.gather(
                *(
                    client.post(f"{server.url}/retrieve", json={"queries": [q, q + " history"], "topk": 3})
                    for q in queries
                )
            )

    before = _metric(server, "retriever_batch_size_count")
    responses = asyncio.run(fire())
    after = _metric(server, "retriever_batch_size_count")
    assert all(r.status_code == 200 for r in responses)
    for i, response in enumerate(responses):
        result = response.json()["result"]
        assert len(result) == 2
        if i < 10:
            assert result[0] == singles[i], f"request {i} got another request's answer"
    # Coalesced: 50 concurrent requests must have run in fewer batches than requests.
    assert 0 < after - before < 50, f"{after - before} batches for 50 requests"


def _metric(server: RunningServer, name: str) -> float:
    text = httpx.get(f"{server.url}/metrics", timeout=10).text
    match = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
    assert match, f"{name} missing from /metrics"
    return float(match.group(1))


@pytest.mark.parametrize(
    ("payload", "status", "needle"),
    [
        ({"queries": ["x"] * 513}, 422, "513 queries exceed the limit of 512"),
        ({"queries": ["x"], "topk": 101}, 422, "topk: 101 exceeds the limit of 100"),
        ({"queries": ["x"], "topk": -1}, 422, "topk: must be positive"),
        ({"queries": []}, 422, "queries: must hold at least one query"),
        ({"topk": 3}, 422, "queries"),
        ({"queries": "who wrote x"}, 422, "queries"),
        ({"queries": [1, 2]}, 422, "queries"),
        ({"queries": ["x"], "topk": "many"}, 422, "topk"),
        ({"queries": ["x"], "return_scores": "maybe"}, 422, "return_scores"),
    ],
)
def test_limit_and_validation_errors_name_the_field(
    server: RunningServer, payload: object, status: int, needle: str
) -> None:
    response = post(server, payload)
    assert response.status_code == status
    assert needle in json.dumps(response.json()["detail"])
    assert "Traceback" not in response.text


def test_body_over_limit_is_413(server: RunningServer) -> None:
    body = json.dumps({"queries": ["a" * 1000] * 9000}).encode()  # ~9 MB > 8 MiB default
    response = httpx.post(
        f"{server.url}/retrieve", content=body, headers={"content-type": "application/json"}, timeout=30
    )
    assert response.status_code == 413
    assert "exceeds the limit of 8388608 bytes" in response.json()["detail"]


def test_long_query_is_truncated_not_rejected(server: RunningServer) -> None:
    response = post(server, {"queries": ["history of art " * 2000], "topk": 1})
    assert response.status_code == 200
    assert len(response.json()["result"][0]) == 1


def test_health_livez_info_docs(server: RunningServer) -> None:
    health = httpx.get(f"{server.url}/health").json()
    assert health["status"] == "ready"
    assert httpx.get(f"{server.url}/livez").json() == {"status": "alive"}
    info = httpx.get(f"{server.url}/info").json()
    assert info["index"]["vectors"] == DEMO_LIMIT
    assert info["index"]["dimension"] == info["model"]["dimension"] == 384
    assert info["index"]["type"] == "IndexFlatIP"
    assert info["index"]["mmap"] is True
    assert info["corpus"]["rows"] == DEMO_LIMIT
    assert info["batching"]["enabled"] is True
    assert httpx.get(f"{server.url}/docs").status_code == 200
    schema = httpx.get(f"{server.url}/openapi.json").json()
    assert "/retrieve" in schema["paths"]
