"""Slow clients cannot hold the server: 500 half-open connections, and other clients are still answered.

Each slow client sends part of its request headers and then nothing. The server must keep
answering everyone else while they hang, and close them once the header bound has passed.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.helpers import RunningServer, run_server

HALF_OPEN = 500
HEADER_TIMEOUT_S = 3.0


@pytest.fixture(scope="module")
def slow_header_server(demo_index: Path, tmp_path_factory: pytest.TempPathFactory) -> Iterator[RunningServer]:
    args = ["--index-dir", str(demo_index), "--header-read-timeout-s", str(HEADER_TIMEOUT_S)]
    with run_server(args, tmp_path_factory.mktemp("slow")) as running:
        yield running


def open_half_requests(url: str, count: int) -> list[socket.socket]:
    host, port = url.removeprefix("http://").split(":")
    sockets = []
    for _ in range(count):
        sock = socket.create_connection((host, int(port)), timeout=5)
        sock.sendall(b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: appl")  # never finished
        sockets.append(sock)
    return sockets


def closed_by_server(sock: socket.socket, wait_s: float) -> bool:
    sock.settimeout(wait_s)
    try:
        return sock.recv(1024) == b""
    except TimeoutError:
        return False
    except ConnectionResetError:
        return True


def test_half_open_connections_do_not_stop_other_clients(slow_header_server: RunningServer) -> None:
    sockets = open_half_requests(slow_header_server.url, HALF_OPEN)
    try:
        started = time.monotonic()
        answered = 0
        with httpx.Client(base_url=slow_header_server.url, timeout=10) as client:
            while time.monotonic() - started < HEADER_TIMEOUT_S * 0.6 and answered < 20:
                response = client.post("/retrieve", json={"queries": ["jazz"], "topk": 2})
                assert response.status_code == 200, response.text
                answered += 1
        held_s = time.monotonic() - started
        assert answered >= 1
        # Past the bound, the server has closed the slow connections.
        time.sleep(HEADER_TIMEOUT_S)
        closed = sum(closed_by_server(sock, wait_s=0.2) for sock in sockets[:50])
        print(
            f"\n{HALF_OPEN} half-open connections: {answered} other requests answered (200) in {held_s:.2f} s "
            f"while they hung; {closed} of 50 sampled closed by the server {HEADER_TIMEOUT_S:.0f} s later "
            f"(header timeout {HEADER_TIMEOUT_S} s)"
        )
        assert closed == 50, f"only {closed} of 50 slow connections were closed after {HEADER_TIMEOUT_S * 2:.0f} s"
    finally:
        for sock in sockets:
            sock.close()
    metrics = httpx.get(f"{slow_header_server.url}/metrics", timeout=10).text
    line = next(x for x in metrics.splitlines() if x.startswith('retriever_rejections_total{reason="header_timeout"}'))
    assert float(line.split()[-1]) >= HALF_OPEN


def test_a_request_within_the_bound_is_served_normally(slow_header_server: RunningServer) -> None:
    host, port = slow_header_server.url.removeprefix("http://").split(":")
    body = b'{"queries": ["jazz"], "topk": 1}'
    with socket.create_connection((host, int(port)), timeout=10) as sock:
        head = b"POST /retrieve HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        sock.sendall(head)
        time.sleep(HEADER_TIMEOUT_S / 3)  # slow, but inside the bound
        sock.sendall(b"Content-Length: %d\r\n\r\n" % len(body) + body)
        reply = sock.recv(65536)
    assert reply.startswith(b"HTTP/1.1 200"), reply[:200]
