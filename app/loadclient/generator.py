"""`retriever load`: drive any deployment with C concurrent callers and report throughput and latency.

Closed model (`run_load`, the CLI): C callers, each sending its next request as soon as the previous
one is answered, one keep-alive connection each (verl's ~120 tool workers behave like this).
Open model (`run_open_loop`): requests start at a fixed rate whatever the answers. The client is a lean
HTTP/1.1 implementation on asyncio streams (uvloop when installed): a general-purpose client costs
about a millisecond of CPU per request, which on a small machine shared with the server would be
measured as server time. Request bodies are prepared before the clock starts.

Every run is bounded: by `requests` and, when given, by `duration`; requests still in flight at the
end get `grace` seconds to finish and are then abandoned (reported as `unfinished`, not as errors).
An optional warm-up excludes the first seconds from the figures.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import ssl
import time
from collections import Counter
from collections.abc import Coroutine, Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, TypeVar
from urllib.parse import urlsplit

import numpy as np

DEFAULT_QUESTIONS = (
    "who wrote paradise lost",
    "what is the capital of australia",
    "when did the second world war end",
    "how does photosynthesis work",
    "who painted the mona lisa",
    "what is the largest planet in the solar system",
    "which river flows through cairo",
    "who discovered penicillin",
    "what language is spoken in brazil",
    "when was the printing press invented",
    "who composed the four seasons",
    "what is the boiling point of water",
    "where is mount kilimanjaro",
    "who was the first president of the united states",
    "what causes earthquakes",
    "what is the speed of light",
)

MAX_BODIES = 4096  # distinct request bodies prepared up front (they repeat beyond that)
T = TypeVar("T")


@dataclass
class LoadResult:
    server: str
    requests: int
    concurrency: int
    queries_per_request: int
    elapsed_s: float
    ok: int
    errors: int
    timeouts: int
    statuses: dict[str, int]
    requests_per_s: float
    qps: float
    success_rate: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    max_ms: float
    unfinished: int = 0
    warmup_s: float = 0.0
    window_s: float = 0.0
    # Closed-loop throughput by Little's law, C x Q / mean latency: exact in steady state and not
    # quantised by answers that arrive in batches (a window holds few batches of a slow index).
    qps_closed: float = 0.0
    latencies_ms: list[float] = field(default_factory=list, repr=False)
    # When each successful answer arrived, in seconds from the start of the measured window.
    answered_at_s: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("latencies_ms")
        data.pop("answered_at_s")
        return data


class HttpError(Exception):
    """The server broke the HTTP exchange (closed early, malformed answer)."""


class _Target:
    def __init__(self, server: str) -> None:
        parts = urlsplit(server if "://" in server else f"http://{server}")
        if parts.scheme not in ("http", "https"):
            raise ValueError(f"{server}: only http:// and https:// servers are supported")
        if not parts.hostname:
            raise ValueError(f"{server}: no host in the server URL")
        self.host = parts.hostname
        self.port = parts.port or (443 if parts.scheme == "https" else 80)
        self.ssl: ssl.SSLContext | None = ssl.create_default_context() if parts.scheme == "https" else None
        default_port = (parts.scheme == "https" and self.port == 443) or (parts.scheme == "http" and self.port == 80)
        self.host_header = self.host if default_port else f"{self.host}:{self.port}"
        if ":" in self.host and not default_port:  # IPv6 literal
            self.host_header = f"[{self.host}]:{self.port}"
        self.path = parts.path.rstrip("/") + "/retrieve"


class _Connection:
    """One keep-alive HTTP/1.1 connection; reopened after an error or `Connection: close`."""

    def __init__(self, target: _Target) -> None:
        self.target = target
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reused = False
        self.retry_after: str | None = None  # of the last answer

    async def _open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            self.target.host, self.target.port, ssl=self.target.ssl, limit=1 << 20
        )
        self.reused = False

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def request(self, message: bytes) -> tuple[int, bytes]:
        """Send one prepared request; retry once on a fresh connection if a reused one was closed."""
        for attempt in (0, 1):
            if self.writer is None:
                await self._open()
            was_reused = self.reused
            try:
                return await self._exchange(message)
            except (ConnectionError, asyncio.IncompleteReadError, HttpError):
                self.close()
                if attempt or not was_reused:
                    raise
        raise AssertionError("unreachable")

    async def _exchange(self, message: bytes) -> tuple[int, bytes]:
        reader, writer = self.reader, self.writer
        assert reader is not None and writer is not None
        writer.write(message)
        head = await reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        try:
            status = int(lines[0].split(b" ", 2)[1])
        except (IndexError, ValueError):
            raise HttpError(f"malformed status line {lines[0][:80]!r}") from None
        length: int | None = None
        chunked = close = False
        self.retry_after = None
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            if name == b"content-length":
                length = _number(value, 10)
            elif name == b"transfer-encoding":
                chunked = b"chunked" in value.lower()
            elif name == b"connection":
                close = b"close" in value.lower()
            elif name == b"retry-after":
                self.retry_after = value.strip().decode("latin-1")
        if chunked:
            parts = []
            while True:
                size = _number((await reader.readuntil(b"\r\n")).split(b";")[0], 16)
                if size == 0:
                    while await reader.readuntil(b"\r\n") != b"\r\n":  # trailers, then the blank line
                        pass
                    break
                parts.append(await reader.readexactly(size))
                await reader.readexactly(2)
            body = b"".join(parts)
        elif length is not None:
            body = await reader.readexactly(length)
        else:  # no framing: the body runs to the end of the connection
            body = await reader.read()
            close = True
        if close:
            self.close()
        else:
            self.reused = True
        return status, body


def _number(text: bytes, base: int) -> int:
    try:
        return int(text.strip(), base)
    except ValueError:
        raise HttpError(f"malformed length {text[:40]!r}") from None


def _prepare(
    target: _Target, queries_per_request: int, topk: int, token: str | None, questions: Sequence[str]
) -> list[bytes]:
    """Whole HTTP messages, ready to write; request n uses questions n*Q .. n*Q+Q-1 (cyclic)."""
    if not questions:
        raise ValueError("no questions to send")
    period = len(questions) // math.gcd(len(questions), queries_per_request)
    auth = f"authorization: Bearer {token}\r\n" if token else ""
    messages = []
    for n in range(min(period, MAX_BODIES)):
        batch = [questions[(n * queries_per_request + i) % len(questions)] for i in range(queries_per_request)]
        body = json.dumps({"queries": batch, "topk": topk, "return_scores": True}).encode()
        head = (
            f"POST {target.path} HTTP/1.1\r\nhost: {target.host_header}\r\ncontent-type: application/json\r\n"
            f"accept: application/json\r\n{auth}content-length: {len(body)}\r\n\r\n"
        )
        messages.append(head.encode("latin-1") + body)
    return messages


async def _bounded(coro: Coroutine[Any, Any, T], timeout: float | None) -> T:
    return await (asyncio.wait_for(coro, timeout) if timeout else coro)


async def _exchange(connection: _Connection, message: bytes, timeout: float | None) -> str:
    """Send one prepared request; the outcome as a key: "200", "503", "200-malformed", "timeout", or an
    error name. A connection that failed is closed."""
    try:
        status, body = await _bounded(connection.request(message), timeout)
    except asyncio.TimeoutError:
        connection.close()
        return "timeout"
    except (OSError, asyncio.IncompleteReadError, HttpError) as exc:
        connection.close()
        return type(exc).__name__
    return str(status) if status != 200 or body.startswith(b'{"result":') else "200-malformed"


async def run_load(
    server: str,
    requests: int,
    concurrency: int,
    queries_per_request: int = 1,
    topk: int = 3,
    timeout: float | None = 30.0,
    duration: float | None = None,
    token: str | None = None,
    questions: Sequence[str] = DEFAULT_QUESTIONS,
    warmup: float = 0.0,
    grace: float | None = None,
) -> LoadResult:
    """`concurrency` callers send back-to-back requests until `requests` are sent or `duration` passes.

    Requests answered during the first `warmup` seconds are sent but not counted. After the end,
    requests in flight get `grace` seconds (default: `timeout`) and are then abandoned.
    """
    target = _Target(server)
    messages = _prepare(target, queries_per_request, topk, token, questions)
    latencies: list[float] = []
    answered_at: list[float] = []
    statuses: Counter[str] = Counter()  # answers inside the measured window
    timeouts = 0
    issued = 0
    started = time.perf_counter()
    measure_from = started + warmup
    deadline = measure_from + duration if duration else None
    last_done = measure_from

    async def caller() -> None:
        nonlocal issued, timeouts, last_done
        connection = _Connection(target)
        try:
            while issued < requests and (deadline is None or time.perf_counter() < deadline):
                message = messages[issued % len(messages)]
                issued += 1
                sent = time.perf_counter()
                key = await _exchange(connection, message, timeout)
                done = time.perf_counter()
                if done < measure_from:
                    continue  # warm-up
                statuses[key] += 1
                last_done = done
                if key == "timeout":
                    timeouts += 1
                elif key == "200":
                    latencies.append((done - sent) * 1000)
                    answered_at.append(done - measure_from)
        finally:
            connection.close()

    tasks = [asyncio.ensure_future(caller()) for _ in range(concurrency)]
    if deadline is not None:
        await asyncio.wait(tasks, timeout=max(0.0, deadline - time.perf_counter()))
        await asyncio.wait(tasks, timeout=grace if grace is not None else timeout)
    else:
        await asyncio.wait(tasks)
    unfinished = sum(not task.done() for task in tasks)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    elapsed = time.perf_counter() - started
    ok = statuses.get("200", 0)
    total = sum(statuses.values())
    if duration and time.perf_counter() >= measure_from + duration:
        # Throughput over the measured window only: answers that arrive while the last requests
        # drain (fewer callers left) would understate it.
        window = duration
        answered = sum(at < duration for at in answered_at)
    else:
        end = max(last_done, measure_from) if unfinished else time.perf_counter()
        window = max(end - measure_from, 1e-9)
        answered = ok
    pct = np.percentile(latencies, [50, 95, 99]).tolist() if latencies else [float("nan")] * 3
    return LoadResult(
        server=server,
        requests=total,
        concurrency=concurrency,
        queries_per_request=queries_per_request,
        elapsed_s=round(elapsed, 3),
        ok=ok,
        errors=total - ok,
        timeouts=timeouts,
        statuses=dict(statuses),
        requests_per_s=round(answered / window, 2),
        qps=round(answered * queries_per_request / window, 2),
        success_rate=round(ok / total, 4) if total else 0.0,
        p50_ms=round(pct[0], 2),
        p95_ms=round(pct[1], 2),
        p99_ms=round(pct[2], 2),
        max_ms=round(max(latencies), 2) if latencies else float("nan"),
        unfinished=unfinished,
        warmup_s=warmup,
        window_s=round(window, 3),
        qps_closed=round(concurrency * queries_per_request * 1000 / float(np.mean(latencies)), 2) if latencies else 0.0,
        latencies_ms=latencies,
        answered_at_s=answered_at,
    )


@dataclass
class Answer:
    """One open-loop request: its status ("200", "503", "timeout", an exception name), its latency
    from the moment it was due (so client-side queueing counts), and its Retry-After header."""

    status: str
    latency_s: float
    retry_after: str | None


async def run_open_loop(
    server: str,
    rate: float,
    duration: float,
    queries_per_request: int = 1,
    topk: int = 3,
    timeout: float = 30.0,
    token: str | None = None,
    questions: Sequence[str] = DEFAULT_QUESTIONS,
    max_connections: int = 1024,
) -> list[Answer]:
    """Open model: request n is due at n / rate seconds whatever the answers, for `duration` seconds.

    Bounded: rate x duration requests, each given `timeout` seconds. Connections are reused when
    idle and opened on demand up to `max_connections`; a request that finds none waits for one, and
    that wait is part of its latency (no coordinated omission).
    """
    if rate <= 0 or duration <= 0:
        raise ValueError("rate and duration must be positive")
    target = _Target(server)
    messages = _prepare(target, queries_per_request, topk, token, questions)
    idle: list[_Connection] = []
    opened = 0
    freed = asyncio.Condition()
    answers: list[Answer] = []

    async def one(n: int, due: float) -> None:
        nonlocal opened
        async with freed:
            while not idle and opened >= max_connections:
                await freed.wait()
            if idle:
                connection = idle.pop()
            else:
                connection = _Connection(target)
                opened += 1
        try:
            key = await _exchange(connection, messages[n % len(messages)], timeout)
        except asyncio.CancelledError:  # abandoned at the end of the run
            connection.close()
            raise
        retry_after = connection.retry_after if key[0].isdigit() else None  # an HTTP answer, not an error
        answers.append(Answer(key, time.perf_counter() - due, retry_after))
        async with freed:
            idle.append(connection)
            freed.notify()

    total = max(1, int(rate * duration))
    tasks = []
    started = time.perf_counter()
    for n in range(total):
        due = started + n / rate
        delay = due - time.perf_counter()
        await asyncio.sleep(max(delay, 0.0))  # yields even when behind, so answers keep flowing
        tasks.append(asyncio.ensure_future(one(n, due)))
    if tasks:
        await asyncio.wait(tasks, timeout=timeout + 5.0)
    for task in tasks:
        task.cancel()
    for task in tasks:
        with contextlib.suppress(asyncio.CancelledError):
            await task
    for connection in idle:
        connection.close()
    return answers


def run(coro: Coroutine[Any, Any, T]) -> T:
    """asyncio.run on uvloop when it is installed (less client CPU per request)."""
    try:
        import uvloop
    except ImportError:
        return asyncio.run(coro)
    return uvloop.run(coro)


def main(args: argparse.Namespace) -> int:
    if args.requests < 1 or args.concurrency < 1 or args.queries_per_request < 1:
        raise SystemExit("retriever load: error: --requests, --concurrency and --queries-per-request must be >= 1")
    try:
        result = run(
            run_load(
                args.server,
                args.requests,
                args.concurrency,
                args.queries_per_request,
                args.topk,
                args.timeout,
                args.duration,
                args.token,
                warmup=getattr(args, "warmup", 0.0) or 0.0,
            )
        )
    except ValueError as exc:
        raise SystemExit(f"retriever load: error: {exc}") from None
    print(
        f"server        {result.server}\n"
        f"requests      {result.requests} ({result.queries_per_request} queries each)\n"
        f"concurrency   {result.concurrency}\n"
        f"elapsed       {result.elapsed_s:.2f} s (measured window {result.window_s:.2f} s)\n"
        f"throughput    {result.requests_per_s:.1f} requests/s, {result.qps:.1f} queries/s\n"
        f"success rate  {result.success_rate:.2%}  statuses {result.statuses}"
        + (f"  unfinished {result.unfinished}" if result.unfinished else "")
        + "\n"
        f"latency       p50 {result.p50_ms:.1f} ms  p95 {result.p95_ms:.1f} ms  p99 {result.p99_ms:.1f} ms"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result.summary(), indent=2) + "\n")
    return 0 if result.errors == 0 else 1
