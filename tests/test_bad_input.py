"""Hostile and malformed requests against a real server on loopback.

Every case must get a 4xx whose JSON body names the problem (never a 5xx, never a traceback),
and after every case the server must still answer a normal query quickly (no stuck worker).
test_api.py already covers: 513 queries, topk 101 / -1, empty query list, missing `queries`,
`queries` as a string or a list of ints, topk "many", return_scores "maybe", a body over
8 MiB announced by Content-Length, and a 30 kB query.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import select
import socket
import time
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import httpx
import pytest

from tests.helpers import RunningServer, run_server

# The body read timeout of this module's server: short, so slow-body cases stay quick.
BODY_TIMEOUT_S = 2.0
# A normal query must come back within this long after any abuse (a stuck worker never does).
QUICK_S = 10.0
NORMAL = {"queries": ["ancient greek philosopher"], "topk": 3, "return_scores": True}


@pytest.fixture(scope="module")
def abuse_server(demo_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    env = {"RETRIEVER_BODY_READ_TIMEOUT_S": str(BODY_TIMEOUT_S)}
    with run_server(["--index-dir", str(demo_index)], tmp_path_factory.mktemp("abuse"), env=env) as running:
        yield running


def assert_still_serving(server: RunningServer) -> float:
    started = time.monotonic()
    response = httpx.post(f"{server.url}/retrieve", json=NORMAL, timeout=QUICK_S)
    elapsed = time.monotonic() - started
    assert response.status_code == 200, response.text[:500]
    assert len(response.json()["result"][0]) == 3
    assert elapsed < QUICK_S
    return elapsed


@pytest.fixture(autouse=True)
def _server_survives(abuse_server: RunningServer) -> Iterator[None]:
    """After each case: a normal query is answered quickly, and the server logged no traceback."""
    yield
    assert abuse_server.process.poll() is None, "server died"
    assert_still_serving(abuse_server)
    log = abuse_server.log()
    assert "Traceback" not in log and "unhandled error" not in log, log[-3000:]


def send(server: RunningServer, body: bytes, content_type: str | None = "application/json") -> httpx.Response:
    headers = {"content-type": content_type} if content_type is not None else {}
    return httpx.post(f"{server.url}/retrieve", content=body, headers=headers, timeout=60)


def assert_clear_error(response: httpx.Response, status: int, needle: str) -> None:
    assert response.status_code == status, (response.status_code, response.text[:500])
    assert response.headers["content-type"] == "application/json"
    detail = response.json()["detail"]
    assert needle in json.dumps(detail), detail
    assert "Traceback" not in response.text and 'File "' not in response.text


NESTED = 100_000  # far past Python's recursion limit (1,000)


@pytest.mark.parametrize(
    ("body", "status", "needle"),
    [
        # wrong types
        (b'{"queries": {"q": "x"}}', 422, "Input should be a valid list"),
        (b'{"queries": null}', 422, "Input should be a valid list"),
        (b'{"queries": [null, "x"]}', 422, '["body", "queries", 0]'),
        (b'{"queries": [["x"]]}', 422, "Input should be a valid string"),
        (b'{"queries": ["x"], "topk": 2.5}', 422, "fractional part"),
        (b'{"queries": ["x"], "topk": [3]}', 422, '["body", "topk"]'),
        (b'{"queries": ["x"], "topk": 1e400}', 422, "finite number"),
        (b'{"queries": ["x"], "return_scores": [true]}', 422, '["body", "return_scores"]'),
        (b'["x", "y"]', 422, "valid dictionary"),
        (b'"who wrote the aeneid"', 422, "valid dictionary"),
        (b"null", 422, '["body"]'),
        # missing or broken body
        (b"", 422, "Field required"),
        (b'{"queries": ["x"]', 422, "JSON decode error"),
        (b"{'queries': ['x']}", 422, "JSON decode error"),
        # huge and negative topk (101 and -1 are in test_api.py)
        (b'{"queries": ["x"], "topk": 1000000000000000000000000000000}', 422, "exceeds the limit of 100"),
        (b'{"queries": ["x"], "topk": -1000000000000000000000000000000}', 422, "topk: must be positive"),
        (b'{"queries": ["x"], "topk": ' + b"9" * 5000 + b"}", 400, "integer string conversion"),
        # thousands of queries: refused on the count, before any encoding
        (json.dumps({"queries": ["x"] * 5000}).encode(), 422, "5000 queries exceed the limit of 512"),
        (json.dumps({"queries": ["x"] * 100_000}).encode(), 422, "100000 queries exceed the limit of 512"),
        # not UTF-8
        ('{"queries": ["café"]}'.encode("latin-1"), 400, "not valid UTF-8"),
        (b'{"queries": ["\xc3\x28"]}', 400, "not valid UTF-8"),
        # JSON escapes that are not text: an unpaired surrogate would fail the tokenizer
        (b'{"queries": ["fine", "bad \\ud800 half"]}', 422, "queries[1]: holds an unpaired surrogate"),
        (b'{"queries": ["\\udfff"]}', 422, "unpaired surrogate (\\\\udfff"),
        # deeply nested JSON, at the top and inside an ignored field
        (b"[" * NESTED + b"]" * NESTED, 400, "nested too deeply"),
        (b'{"queries": ["x"], "extra": ' + b"[" * NESTED + b"]" * NESTED + b"}", 400, "nested too deeply"),
        (b'{"queries": ' + b"[" * 500 + b"]" * 500 + b"}", 422, "Input should be a valid string"),
    ],
    ids=lambda v: v[:40].decode("latin-1") if isinstance(v, bytes) else str(v),
)
def test_malformed_bodies_get_a_clear_4xx(abuse_server: RunningServer, body: bytes, status: int, needle: str) -> None:
    started = time.monotonic()
    response = send(abuse_server, body)
    assert_clear_error(response, status, needle)
    assert time.monotonic() - started < QUICK_S


@pytest.mark.parametrize(
    ("content_type", "needle"),
    [
        ("text/plain", "got 'text/plain'"),
        ("application/x-www-form-urlencoded", "got 'application/x-www-form-urlencoded'"),
        ("multipart/form-data; boundary=x", "got 'multipart/form-data; boundary=x'"),
        (None, "got no Content-Type"),
    ],
)
def test_wrong_content_type_is_415(abuse_server: RunningServer, content_type: str | None, needle: str) -> None:
    response = send(abuse_server, json.dumps(NORMAL).encode(), content_type)
    assert_clear_error(response, 415, "Content-Type must be application/json")
    assert needle in response.json()["detail"]


@pytest.mark.parametrize("content_type", ["application/json; charset=utf-8", "application/vnd.search+json"])
def test_json_content_types_with_parameters_are_accepted(abuse_server: RunningServer, content_type: str) -> None:
    response = send(abuse_server, json.dumps(NORMAL).encode(), content_type)
    assert response.status_code == 200
    assert len(response.json()["result"][0]) == 3


def test_empty_and_blank_queries_are_answered_like_any_query(abuse_server: RunningServer) -> None:
    """Search-R1 sends one request per turn for the whole batch: an empty query from one rollout
    must not fail the others, so empty and blank strings are searched like any text."""
    queries = ["", "   \n\t ", "Paradise Lost", "\u0000"]
    response = send(abuse_server, json.dumps({"queries": queries, "topk": 2, "return_scores": True}).encode())
    assert response.status_code == 200
    result = response.json()["result"]
    assert [len(items) for items in result] == [2, 2, 2, 2]
    alone = send(abuse_server, json.dumps({"queries": ["Paradise Lost"], "topk": 2, "return_scores": True}).encode())
    assert result[2] == alone.json()["result"][0], "a blank neighbour changed another query's answer"


def test_unpaired_surrogate_does_not_fail_concurrent_requests(abuse_server: RunningServer) -> None:
    """Before the check, the tokenizer raised inside the shared batch and every request in it got a 500."""
    bad = b'{"queries": ["x\\ud83d"], "topk": 3}'

    async def fire() -> list[httpx.Response]:
        async with httpx.AsyncClient(timeout=QUICK_S * 3) as client:
            headers = {"content-type": "application/json"}
            requests = [client.post(f"{abuse_server.url}/retrieve", content=bad, headers=headers)]
            requests += [client.post(f"{abuse_server.url}/retrieve", json=NORMAL) for _ in range(8)]
            return await asyncio.gather(*requests)

    first, *others = asyncio.run(fire())
    assert_clear_error(first, 422, "unpaired surrogate")
    assert [r.status_code for r in others] == [200] * 8


def test_maximum_number_of_queries_is_answered(abuse_server: RunningServer) -> None:
    queries = [f"question number {i}" for i in range(512)]
    response = httpx.post(f"{abuse_server.url}/retrieve", json={"queries": queries, "topk": 1}, timeout=120)
    assert response.status_code == 200
    result = response.json()["result"]
    assert len(result) == 512 and all(len(items) == 1 for items in result)


def test_streamed_body_over_the_limit_is_413(abuse_server: RunningServer) -> None:
    """No Content-Length (chunked): the limit is enforced by counting, not by the header."""
    chunk = b" " * (1024 * 1024)

    def body() -> Iterator[bytes]:
        yield b'{"queries": ["x"], "pad": "'
        for _ in range(12):  # 12 MiB > 8 MiB
            yield chunk
        yield b'"}'

    response = httpx.post(
        f"{abuse_server.url}/retrieve", content=body(), headers={"content-type": "application/json"}, timeout=60
    )
    assert_clear_error(response, 413, "exceeds the limit of 8388608 bytes")


def test_multi_megabyte_query_does_not_stall_other_requests(abuse_server: RunningServer) -> None:
    """A 7 MB query used to hold the shared batch for ~20 s while the tokenizer split all of it."""
    huge = json.dumps({"queries": ["word " * 1_400_000], "topk": 1}).encode()
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(send, abuse_server, huge)
        time.sleep(1.0)  # the big body is uploaded and being handled
        elapsed = assert_still_serving(abuse_server)
        response = pending.result(timeout=120)
    assert response.status_code == 200
    assert len(response.json()["result"][0]) == 1
    assert elapsed < QUICK_S


def test_wrong_methods_and_paths(abuse_server: RunningServer) -> None:
    get = httpx.get(f"{abuse_server.url}/retrieve")
    assert_clear_error(get, 405, "Method Not Allowed")
    assert get.headers["allow"] == "POST"  # the error handler used to drop this header
    trace = httpx.request("TRACE", f"{abuse_server.url}/health")
    assert_clear_error(trace, 405, "Method Not Allowed")
    assert "GET" in trace.headers["allow"]
    assert_clear_error(httpx.get(f"{abuse_server.url}/no/such/path"), 404, "Not Found")


# -- slow bodies (slowloris) ------------------------------------------------------------------


@dataclass
class SlowResult:
    response: bytes
    closed_after_s: float | None  # when the server closed the connection; None: never


def slow_bodies(url: str, count: int, announced: int, trickle: bool, limit_s: float) -> list[SlowResult]:
    """Open `count` connections announcing `announced` body bytes; send one byte every 0.25 s
    (or nothing) until the server answers and closes, or `limit_s` passes."""
    parts = urlsplit(url)
    head = (
        f"POST /retrieve HTTP/1.1\r\nHost: {parts.netloc}\r\nContent-Type: application/json\r\n"
        f"Content-Length: {announced}\r\n\r\n{{"
    ).encode()
    sockets = [socket.create_connection((parts.hostname, parts.port), timeout=5) for _ in range(count)]
    received = {s: b"" for s in sockets}
    closed: dict[socket.socket, float] = {}
    started = time.monotonic()
    try:
        for sock in sockets:
            sock.sendall(head)
        while len(closed) < count and time.monotonic() - started < limit_s:
            open_ = [s for s in sockets if s not in closed]
            if trickle:
                for sock in open_:
                    with contextlib.suppress(OSError):  # the server closed its side: the read below sees it
                        sock.send(b" ")
            readable, _, _ = select.select(open_, [], [], 0.25)
            for sock in readable:
                try:
                    data = sock.recv(65536)
                except OSError:
                    data = b""
                received[sock] += data
                if not data:
                    closed[sock] = time.monotonic() - started
    finally:
        for sock in sockets:
            sock.close()
    return [SlowResult(received[s], closed.get(s)) for s in sockets]


def assert_408(result: SlowResult) -> None:
    head, _, body = result.response.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 408 "), result.response[:300]
    assert b"connection: close" in head.lower()
    detail = json.loads(body)["detail"]
    assert f"request body not received within {BODY_TIMEOUT_S:g} s" in detail
    assert result.closed_after_s is not None, "the server kept the connection open"
    assert BODY_TIMEOUT_S * 0.8 <= result.closed_after_s <= BODY_TIMEOUT_S + 5


@pytest.mark.parametrize("trickle", [True, False], ids=["one-byte-every-250ms", "headers-then-silence"])
def test_slow_bodies_get_408_and_do_not_block_others(abuse_server: RunningServer, trickle: bool) -> None:
    with ThreadPoolExecutor(1) as pool:
        pending = pool.submit(slow_bodies, abuse_server.url, 20, 10_000, trickle, BODY_TIMEOUT_S + 8)
        time.sleep(0.5)  # all 20 connections are open and stalled
        assert_still_serving(abuse_server)
        results = pending.result(timeout=60)
    for result in results:
        assert_408(result)


def test_slow_headers_do_not_block_others(abuse_server: RunningServer) -> None:
    """Half-sent request lines never reach the app (uvicorn holds them); they must not stop others."""
    parts = urlsplit(abuse_server.url)
    sockets = [socket.create_connection((parts.hostname, parts.port), timeout=5) for _ in range(50)]
    try:
        for sock in sockets:
            sock.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Ty")
        assert_still_serving(abuse_server)
    finally:
        for sock in sockets:
            sock.close()
