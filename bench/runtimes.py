"""Encoder runtimes and duplicate work, in one run (part of `make bench`).

1. Runtimes: for torch, onnx and openvino, the offline limit of a demo index of the first
   2000 articles (the encoder sets the demo's limit, not the index size) (bench/offline.py in
   its own process, with RETRIEVER_ENCODER_RUNTIME set) and the served queries/s at concurrency 64
   x 1 query/request through a real server; the export is made once (`retriever export-onnx`,
   checked against torch) into the demo index directory.
   The same again with the 768-d model of `make bench-scale` (all-mpnet-base-v2, e5-base-v2's cost
   class) over its first 200 demo passages, when `make model-mpnet` has put it in .cache/models/.
2. A rollout-shaped trace (bench/rollout_trace.py: synthetic, generated from the demo's labelled
   queries) replayed at concurrency 64 against the server with deduplication and the result cache
   off, then on: hit rate, joined queries, queries/s and p99.
Writes bench/results/runtimes.json and runtimes.md. Every server runs on a free loopback port and
is stopped by its PID; every load point is bounded in requests and seconds.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import httpx

from app.demo import ensure_demo_index
from app.devtools.server import ServerProcess
from app.loadclient import run, run_load
from app.procstat import tree_cpu_seconds
from bench.common import DATA_DIR, RESULTS, ROOT, bench_queries, machine
from bench.rollout_trace import rollout_trace

RUNTIMES = ("torch", "onnx", "openvino")
CONCURRENCY = 64
TOPK = 3


def ensure_export(index_dir: Path) -> None:
    if (index_dir / "encoder-onnx" / "encoder.json").is_file():
        return
    subprocess.run([sys.executable, "-m", "app", "export-onnx", str(index_dir)], check=True, cwd=ROOT)


def offline_limit(index_dir: Path, runtime: str, min_seconds: float) -> dict[str, Any]:
    with tempfile.NamedTemporaryFile(suffix=".json") as out:
        env = os.environ | {"RETRIEVER_ENCODER_RUNTIME": runtime, "HF_HUB_OFFLINE": "1"}
        command = [sys.executable, "-m", "bench.offline", "--index-dir", str(index_dir), "--json", out.name]
        command += ["--batch-sizes", "1,16,64,256", "--min-seconds", str(min_seconds)]
        subprocess.run(command, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
        return json.loads(Path(out.name).read_text())


def served(server: ServerProcess, seconds: float, questions: list[str], warmup: float = 3.0) -> dict[str, Any]:
    """Closed-loop load on `server`, with the core-seconds the server and this load client spent per
    answered query: on a 2-core machine the client and the HTTP layer take cores the offline limit
    gives to the encoder alone."""
    assert server.process is not None
    client_cpu, server_cpu = time.process_time(), tree_cpu_seconds(server.process.pid) or 0.0
    started = time.perf_counter()
    result = run(
        run_load(
            server.url,
            requests=1_000_000,
            concurrency=CONCURRENCY,
            queries_per_request=1,
            topk=TOPK,
            duration=seconds,
            warmup=warmup,
            questions=questions,
        )
    )
    wall = time.perf_counter() - started
    answered = max(1, result.qps * wall)  # the whole call, warm-up included, like the CPU clocks
    cpu = {
        "client_cpu_ms_per_query": round((time.process_time() - client_cpu) * 1000 / answered, 3),
        "server_cpu_ms_per_query": round(
            ((tree_cpu_seconds(server.process.pid) or 0.0) - server_cpu) * 1000 / answered, 3
        ),
    }
    return result.summary() | cpu


def _offline_cpu(offline: dict[str, Any]) -> float | None:
    best = next((row for row in offline["offline_by_batch"] if row["batch_size"] == offline["offline_best_batch"]
                 and row["layout"] == offline["offline_best_layout"]), None)  # fmt: skip
    return best["cpu_ms_per_query"] if best else None


def counter(metrics_text: str, series: str) -> float:
    """The value of one exact series (name plus its labels, as /metrics prints them), 0 if absent."""
    match = re.search(rf"^{re.escape(series)} ([0-9.e+]+)$", metrics_text, re.M)
    return float(match.group(1)) if match else 0.0


def start(index_dir: Path, log: Path, extra: list[str]) -> ServerProcess:
    server = ServerProcess(["--index-dir", str(index_dir), *extra], log, clean_env=True).start()
    server.wait_ready(timeout=300)
    return server


def runtimes(index_dir: Path, seconds: float, min_seconds: float, logs: Path) -> list[dict[str, Any]]:
    rows = []
    questions = bench_queries()
    for runtime in RUNTIMES:
        offline = offline_limit(index_dir, runtime, min_seconds)
        # Distinct questions and no joining: the same work for every runtime.
        server = start(
            index_dir, logs / f"runtime-{runtime}.log", ["--encoder-runtime", runtime, "--dedup-queries", "false"]
        )
        try:
            load = served(server, seconds, questions)
        finally:
            server.stop()
        row = {
            "runtime": runtime,
            "offline_qps": offline["offline_qps"],
            "offline_best_batch": offline["offline_best_batch"],
            "served_qps": load["qps"],
            "served_over_offline": round(load["qps"] / offline["offline_qps"], 3),
            "p50_ms": load["p50_ms"],
            "p99_ms": load["p99_ms"],
            "errors": load["errors"],
            "offline_cpu_ms_per_query": _offline_cpu(offline),
            "server_cpu_ms_per_query": load["server_cpu_ms_per_query"],
            "client_cpu_ms_per_query": load["client_cpu_ms_per_query"],
        }
        print(json.dumps(row), flush=True)
        rows.append(row)
    return rows


def trace_replay(index_dir: Path, logs: Path) -> dict[str, Any]:
    trace = rollout_trace()
    results: dict[str, Any] = {"trace": trace.describe()}
    modes = {
        "off": ["--dedup-queries", "false", "--result-cache", "false"],
        "on": ["--dedup-queries", "true", "--result-cache", "true"],
    }
    for mode, flags in modes.items():
        server = start(index_dir, logs / f"trace-{mode}.log", flags)
        try:
            load = run(
                run_load(
                    server.url,
                    requests=len(trace.queries),
                    concurrency=CONCURRENCY,
                    queries_per_request=1,
                    topk=TOPK,
                    questions=trace.queries,
                    timeout=60,
                )
            )
            metrics_text = httpx.get(f"{server.url}/metrics", timeout=10).text
        finally:
            server.stop()
        hits = counter(metrics_text, 'retriever_result_cache_lookups_total{result="hit"}')
        misses = counter(metrics_text, 'retriever_result_cache_lookups_total{result="miss"}')
        joined = counter(metrics_text, "retriever_deduplicated_queries_total")
        row = load.summary() | {
            "cache_hits": hits,
            "cache_misses": misses,
            "hit_rate": round(hits / (hits + misses), 4) if hits + misses else 0.0,
            "joined_queries": joined,
            "computed_share": round(1 - (hits + joined) / len(trace.queries), 4),
        }
        print(json.dumps({"mode": mode, **{k: row[k] for k in ("qps", "p99_ms", "hit_rate", "joined_queries")}}))
        results[mode] = row
    off, on = results["off"], results["on"]
    results["qps_ratio"] = round(on["qps"] / off["qps"], 3) if off["qps"] else None
    results["work_avoided"] = round(1 - on["computed_share"], 4)
    return results


def runtime_table(rows: list[dict[str, Any]], model: str) -> list[str]:
    lines = [
        f"| runtime ({model}) | offline limit q/s | served q/s (c=64 x 1) | served / offline | p50 ms | p99 ms "
        "| errors | CPU ms/query: offline / server / load client |",
        "|---|---|---|---|---|---|---|---|",
    ]
    torch_offline = next(r["offline_qps"] for r in rows if r["runtime"] == "torch")
    for r in rows:
        lines.append(
            f"| {r['runtime']} | {r['offline_qps']:.0f} ({r['offline_qps'] / torch_offline:.2f}x torch) | "
            f"{r['served_qps']:.0f} | {r['served_over_offline']:.2f} | {r['p50_ms']:.0f} | {r['p99_ms']:.0f} | "
            f"{r['errors']} | {r.get('offline_cpu_ms_per_query')} / {r.get('server_cpu_ms_per_query')} / "
            f"{r.get('client_cpu_ms_per_query')} |"
        )
    return lines


def report(data: dict[str, Any]) -> str:
    lines = ["# Encoder runtimes and duplicate work", "", f"Machine: `{json.dumps(data['machine'])}`", ""]
    lines += runtime_table(data["runtimes"], "MiniLM-L6, 384-d: the demo")
    if data.get("runtimes_768"):
        lines += ["", *runtime_table(data["runtimes_768"], "all-mpnet-base-v2, 768-d")]
    else:
        lines += ["", "768-d model: not measured (`make model-mpnet` puts it in .cache/models/)."]
    trace = data["trace"]
    lines += [
        "",
        f"Rollout trace (synthetic): {trace['trace']['requests']} requests, {trace['trace']['groups']} groups of "
        f"{trace['trace']['rollouts_per_group']} rollouts, 3 turns, {trace['trace']['repeated_share']:.0%} of "
        "requests repeat an earlier query; replayed at concurrency 64 x 1 query/request.",
        "",
        "| dedup + cache | q/s | p99 ms | cache hit rate | queries joined in flight | work computed |",
        "|---|---|---|---|---|---|",
    ]
    for mode in ("off", "on"):
        r = trace[mode]
        lines.append(
            f"| {mode} | {r['qps']:.0f} | {r['p99_ms']:.0f} | {r['hit_rate']:.1%} | {r['joined_queries']:.0f} | "
            f"{r['computed_share']:.1%} |"
        )
    lines += ["", f"q/s on / off: {trace['qps_ratio']}x; work avoided: {trace['work_avoided']:.1%}."]
    return "\n".join(lines) + "\n"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=20.0, help="measured seconds per served point")
    parser.add_argument("--min-seconds", type=float, default=2.0, help="offline window per batch size")
    parser.add_argument(
        "--demo-limit", type=int, default=2000, help="articles in the demo index (the encoder sets the limit, not N)"
    )
    args = parser.parse_args()
    index_dir = ensure_demo_index(DATA_DIR, args.demo_limit, progress=False)
    ensure_export(index_dir)
    logs = DATA_DIR / "bench" / "logs"
    data: dict[str, Any] = {
        "machine": machine(),
        "index": str(index_dir),
        "runtimes": runtimes(index_dir, args.seconds, args.min_seconds, logs),
    }
    mpnet = DATA_DIR / "models" / "all-mpnet-base-v2"
    if (mpnet / "model.safetensors").is_file():
        from bench.scale import ensure_real

        index_768 = ensure_real(200, str(mpnet.resolve()), 128)
        ensure_export(index_768)
        data["index_768"] = str(index_768)
        data["runtimes_768"] = runtimes(index_768, args.seconds, args.min_seconds, logs)
    data["trace"] = trace_replay(index_dir, logs)
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "runtimes.json").write_text(json.dumps(data, indent=2) + "\n")
    (RESULTS / "runtimes.md").write_text(report(data))
    print(report(data))


if __name__ == "__main__":
    main()
