"""A loopback HTTP stub of POST /retrieve, for running the chart's client commands locally."""

from __future__ import annotations

import json
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

# A well-formed Search-R1 answer (return_scores: true) for one query.
GOOD = {
    "result": [
        [
            {"document": {"id": "8", "contents": '"Paradise Lost"\nEpic poem by John Milton.'}, "score": 0.83},
            {"document": {"id": "9", "contents": '"John Milton"\nEnglish poet.'}, "score": 0.61},
        ]
    ]
}


class Stub:
    """A loopback HTTP server answering POST /retrieve with `answer(request_json) -> (status, body)`."""

    def __init__(self, answer: Callable[[dict[str, Any]], tuple[int, Any]]) -> None:
        self.requests: list[tuple[dict[str, str], dict[str, Any]]] = []
        stub = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self) -> None:
                body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
                stub.requests.append((dict(self.headers), body))
                status, payload = answer(body) if self.path == "/retrieve" else (404, {"detail": "Not Found"})
                data = (payload if isinstance(payload, str) else json.dumps(payload)).encode()
                self.send_response(status)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(data)))
                self.end_headers()
                self.wfile.write(data)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.server.server_address[1]}/retrieve"


@contextmanager
def stub_server(answer: Callable[[dict[str, Any]], tuple[int, Any]]) -> Iterator[Stub]:
    stub = Stub(answer)
    thread = threading.Thread(target=stub.server.serve_forever, kwargs={"poll_interval": 0.02}, daemon=True)
    thread.start()
    try:
        yield stub
    finally:
        stub.server.shutdown()
        stub.server.server_close()
