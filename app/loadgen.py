"""`retriever load`: drive any deployment with C concurrent callers and report throughput and latency."""

from __future__ import annotations

import argparse
import asyncio
import json
import time
from collections import Counter
from dataclasses import asdict, dataclass, field
from pathlib import Path

import httpx
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
    latencies_ms: list[float] = field(default_factory=list, repr=False)

    def summary(self) -> dict[str, object]:
        data = asdict(self)
        data.pop("latencies_ms")
        return data


async def run_load(
    server: str,
    requests: int,
    concurrency: int,
    queries_per_request: int = 1,
    topk: int = 3,
    timeout: float = 30.0,
    duration: float | None = None,
    token: str | None = None,
    questions: tuple[str, ...] | list[str] = DEFAULT_QUESTIONS,
) -> LoadResult:
    """`concurrency` callers send back-to-back requests until `requests` are done (or `duration` passes)."""
    url = server.rstrip("/") + "/retrieve"
    headers = {"authorization": f"Bearer {token}"} if token else {}
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    timeouts = 0
    issued = 0
    started = time.perf_counter()
    deadline = started + duration if duration else None
    limits = httpx.Limits(max_connections=concurrency, max_keepalive_connections=concurrency)

    async def caller(client: httpx.AsyncClient) -> None:
        nonlocal issued, timeouts
        while issued < requests and (deadline is None or time.perf_counter() < deadline):
            n = issued
            issued += 1
            batch = [questions[(n * queries_per_request + i) % len(questions)] for i in range(queries_per_request)]
            payload = {"queries": batch, "topk": topk, "return_scores": True}
            sent = time.perf_counter()
            try:
                response = await client.post(url, json=payload, headers=headers)
            except httpx.TimeoutException:
                timeouts += 1
                statuses["timeout"] += 1
                continue
            except httpx.HTTPError as exc:
                statuses[type(exc).__name__] += 1
                continue
            statuses[str(response.status_code)] += 1
            if response.status_code == 200:
                latencies.append((time.perf_counter() - sent) * 1000)

    async with httpx.AsyncClient(timeout=timeout, limits=limits) as client:
        await asyncio.gather(*(caller(client) for _ in range(concurrency)))
    elapsed = time.perf_counter() - started
    ok = statuses.get("200", 0)
    total = sum(statuses.values())
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
        requests_per_s=round(ok / elapsed, 2) if elapsed else 0.0,
        qps=round(ok * queries_per_request / elapsed, 2) if elapsed else 0.0,
        success_rate=round(ok / total, 4) if total else 0.0,
        p50_ms=round(pct[0], 2),
        p95_ms=round(pct[1], 2),
        p99_ms=round(pct[2], 2),
        max_ms=round(max(latencies), 2) if latencies else float("nan"),
        latencies_ms=latencies,
    )


def main(args: argparse.Namespace) -> int:
    if args.requests < 1 or args.concurrency < 1 or args.queries_per_request < 1:
        raise SystemExit("retriever load: error: --requests, --concurrency and --queries-per-request must be >= 1")
    result = asyncio.run(
        run_load(
            args.server,
            args.requests,
            args.concurrency,
            args.queries_per_request,
            args.topk,
            args.timeout,
            args.duration,
            args.token,
        )
    )
    print(
        f"server        {result.server}\n"
        f"requests      {result.requests} ({result.queries_per_request} queries each)\n"
        f"concurrency   {result.concurrency}\n"
        f"elapsed       {result.elapsed_s:.2f} s\n"
        f"throughput    {result.requests_per_s:.1f} requests/s, {result.qps:.1f} queries/s\n"
        f"success rate  {result.success_rate:.2%}  statuses {result.statuses}\n"
        f"latency       p50 {result.p50_ms:.1f} ms  p95 {result.p95_ms:.1f} ms  p99 {result.p99_ms:.1f} ms"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(result.summary(), indent=2) + "\n")
    return 0 if result.errors == 0 else 1
