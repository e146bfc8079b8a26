"""Remote encoder (infinity over HTTP, `--encoder-url`) against the in-process encoder.

    make bench-encoder-service        (python -m bench.encoder_service [--seconds S] [--concurrency C])

Two measurements, both on this machine's cores:

1. Serving: `retriever serve` on the demo index, driven closed-loop by app.loadgen at concurrency 64,
   1 query per request (verl's shape), first with the model in process, then with `--encoder-url`
   pointing at infinity serving the same model. Throughput, latency, and the CPU seconds per 1000
   queries of every process involved (the server; the server + infinity).
   Both run on the same cores, so the ratio is what the split costs or saves in *work*, not what it
   gives on a real deployment, where the encoder has a node (a GPU) of its own and the index pods'
   cores no longer run the model.
2. The HTTP hop per batch: for batches of 1, 16, 64 and 256 queries, sent one at a time,
   - the remote encoder's call as the retriever makes it (client round trip, JSON + base64 parsing),
   - the same batch's time inside infinity's own handler (its http_request_duration_seconds for
     /v1/embeddings, read from its /metrics before and after),
   - the in-process model on the same batch.
   hop = round trip - infinity's handler time: what the network stack, HTTP and (de)serialisation add.

Results: bench/results/encoder_service.{json,md}. Servers and the engine run on free loopback ports and
are stopped by PID.
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx
from app.loadgen import run, run_load

from bench.common import RESULTS, ROOT, TOPK, bench_queries, machine
from tests.helpers import DEMO_LIMIT, run_server
from tests.infinity_engine import infinity_engine

BATCH_SIZES = (1, 16, 64, 256)
HOP_ROUNDS = 15


def _cpu_seconds(pid: int) -> float:
    """utime + stime of a process and its reaped children, from /proc/PID/stat."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return sum(int(v) for v in fields[11:15]) / ticks


def _infinity_handler_seconds(url: str) -> tuple[float, float]:
    """(sum, count) of infinity's request duration for POST /v1/embeddings."""
    total = count = 0.0
    for line in httpx.get(f"{url}/metrics", timeout=10).text.splitlines():
        if 'handler="/v1/embeddings"' not in line or 'method="POST"' not in line:
            continue
        if line.startswith("http_request_duration_seconds_sum"):
            total += float(line.split()[-1])
        elif line.startswith("http_request_duration_seconds_count"):
            count += float(line.split()[-1])
    return total, count


def _load_point(url: str, pids: list[int], queries: list[str], concurrency: int, seconds: float) -> dict[str, Any]:
    before = [_cpu_seconds(pid) for pid in pids]
    result = run(
        run_load(
            url, requests=10**6, concurrency=concurrency, queries_per_request=1, topk=TOPK,
            duration=seconds, questions=queries, warmup=min(5.0, seconds / 3), grace=5.0,
        )
    )  # fmt: skip
    cpu = [_cpu_seconds(pid) - b for pid, b in zip(pids, before, strict=True)]
    answered = max(result.ok, 1)
    point = result.summary()
    # CPU counted over warm-up + window; the queries answered over the same span approximate it.
    total_queries = answered * (result.warmup_s + result.window_s) / max(result.window_s, 1e-9)
    point["cpu_s_per_1000_queries"] = round(1000 * sum(cpu) / total_queries, 2)
    point["cpu_s_by_process"] = [round(c, 2) for c in cpu]
    return point


def _hop(engine_url: str, queries: list[str]) -> list[dict[str, Any]]:
    from app.encoder import BUNDLED_MODEL, EncoderConfig, SentenceTransformerEncoder, resolve_model
    from app.encoder_remote import RemoteEncoder, RemoteEncoderConfig

    remote = RemoteEncoder(RemoteEncoderConfig(url=engine_url, max_length=256))
    remote.connect(30)
    local = SentenceTransformerEncoder(EncoderConfig(model=resolve_model(BUNDLED_MODEL), max_length=256))
    rows = []
    for size in BATCH_SIZES:
        batches = [queries[(i * size) % len(queries) :][:size] for i in range(HOP_ROUNDS + 2)]
        for batch in batches[:2]:  # warm both paths for this shape
            remote.encode(batch)
            local.encode(batch)
        round_trip, handler, in_process = [], [], []
        for batch in batches[2:]:
            total0, count0 = _infinity_handler_seconds(engine_url)
            started = time.perf_counter()
            remote.encode(batch)
            round_trip.append(time.perf_counter() - started)
            total1, count1 = _infinity_handler_seconds(engine_url)
            assert count1 - count0 == 1, "one HTTP call per batch"
            handler.append(total1 - total0)
            started = time.perf_counter()
            local.encode(batch)
            in_process.append(time.perf_counter() - started)
        rt, hd, ip = (statistics.median(v) * 1000 for v in (round_trip, handler, in_process))
        hops = sorted((r - h) * 1000 for r, h in zip(round_trip, handler, strict=True))
        rows.append(
            {
                "batch": size,
                "remote_round_trip_ms": round(rt, 2),
                "infinity_handler_ms": round(hd, 2),
                "hop_ms_median": round(statistics.median(hops), 2),
                "hop_ms_p90": round(hops[int(0.9 * (len(hops) - 1))], 2),
                "in_process_ms": round(ip, 2),
                "remote_minus_in_process_ms": round(rt - ip, 2),
            }
        )
        print(f"bench: hop batch {size}: {rows[-1]}", flush=True)
    remote.close()
    return rows


def _markdown(report: dict[str, Any]) -> str:
    local, remote = report["serving"]["in_process"], report["serving"]["remote"]
    load = " ".join(f"{x:.1f}" for x in report["machine"].get("loadavg_start", []))
    lines = [
        "# Remote encoder (infinity) vs in-process",
        "",
        f"`make bench-encoder-service`, {report['when']}, {report['machine'].get('cpu', '')}, "
        f"{report['machine'].get('cores', '')} cores; demo index ({DEMO_LIMIT} articles, Flat), topk {TOPK}.",
        "",
        f"## Serving: concurrency {report['concurrency']} x 1 query/request, {report['seconds']:g} s window",
        "",
        "| encoder | queries/s | p50 ms | p99 ms | errors | CPU s / 1000 queries (all processes) |",
        "|---|---|---|---|---|---|",
    ]
    for name, point in (("in process", local), ("infinity over HTTP", remote)):
        lines.append(
            f"| {name} | {point['qps_closed']:.1f} | {point['p50_ms']:.1f} | {point['p99_ms']:.1f} | "
            f"{point['errors'] + point['timeouts']} | {point['cpu_s_per_1000_queries']:.2f} |"
        )
    lines += [
        "",
        f"Throughput ratio remote / in-process: **{report['serving']['ratio_qps']:.2f}**; CPU per query ratio: "
        f"**{report['serving']['ratio_cpu']:.2f}** (load average {load} "
        "at the start). Both paths share the same cores here, so the ratio compares the work of the two "
        "paths on one machine (the model in the server vs infinity's engine + the HTTP hop + a second server), "
        "not what a deployment gets whose encoder has a node or GPU of its own.",
        "",
        "## The HTTP hop per batch (one batch at a time, medians)",
        "",
        "| batch | remote round trip ms | infinity handler ms | hop ms (p90) | in-process encode ms |",
        "|---|---|---|---|---|",
    ]
    for row in report["hop"]:
        lines.append(
            f"| {row['batch']} | {row['remote_round_trip_ms']:.2f} | {row['infinity_handler_ms']:.2f} | "
            f"{row['hop_ms_median']:.2f} ({row['hop_ms_p90']:.2f}) | {row['in_process_ms']:.2f} |"
        )
    lines += [
        "",
        "hop = the retriever's round trip minus the time inside infinity's HTTP handler: TCP on loopback, "
        "HTTP framing, request JSON, base64 decoding of the vectors.",
        "",
    ]
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured window per serving point")
    parser.add_argument("--concurrency", type=int, default=64)
    parser.add_argument("--out", type=Path, default=RESULTS / "encoder_service")
    args = parser.parse_args(argv)

    from app.demo import ensure_demo_index

    index = ensure_demo_index(ROOT / ".cache", DEMO_LIMIT, progress=False)
    queries = bench_queries(2048)
    scratch = ROOT / ".cache" / "bench" / "encoder_service"
    scratch.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {
        "when": time.strftime("%Y-%m-%d %H:%M:%S"),
        "machine": machine(),
        "concurrency": args.concurrency,
        "seconds": args.seconds,
    }
    serving: dict[str, Any] = {}
    print("bench: in-process encoder", flush=True)
    with run_server(["--index-dir", str(index)], scratch) as server:
        serving["in_process"] = _load_point(server.url, [server.process.pid], queries, args.concurrency, args.seconds)
    print(f"bench: in-process: {serving['in_process']['qps_closed']:.1f} queries/s", flush=True)

    os.environ.setdefault("INFINITY_THREADS", str(len(os.sched_getaffinity(0))))
    with infinity_engine(scratch) as engine:
        assert engine.process is not None
        print("bench: remote encoder (infinity)", flush=True)
        with run_server(["--index-dir", str(index), "--encoder-url", engine.url], scratch) as server:
            pids = [server.process.pid, engine.process.pid]
            serving["remote"] = _load_point(server.url, pids, queries, args.concurrency, args.seconds)
        print(f"bench: remote: {serving['remote']['qps_closed']:.1f} queries/s", flush=True)
        report["hop"] = _hop(engine.url, queries)
    serving["ratio_qps"] = round(serving["remote"]["qps_closed"] / max(serving["in_process"]["qps_closed"], 1e-9), 3)
    serving["ratio_cpu"] = round(
        serving["remote"]["cpu_s_per_1000_queries"] / max(serving["in_process"]["cpu_s_per_1000_queries"], 1e-9), 3
    )
    report["serving"] = serving
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.with_suffix(".json").write_text(json.dumps(report, indent=2) + "\n")
    args.out.with_suffix(".md").write_text(_markdown(report))
    print(_markdown(report))
    return 0


if __name__ == "__main__":
    sys.exit(main())
