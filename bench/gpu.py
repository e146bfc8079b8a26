"""`make bench-gpu`: the GPU tier on one device, every figure next to that machine's roofline.

One short script for a lent GPU machine (README "GPU"; device time is scarce, so it does everything
in one run of a few minutes):
  1. ceilings, measured here: device-to-device copy bandwidth and fp16 matrix-product throughput;
  2. a synthetic wiki-18-sized index (21,015,324 x 768 unit vectors, fp16) generated on the GPU,
     checked against a float32 reference, then exact-search queries/s at batch 1, 64, 256, 1024
     (plain and grouped top-k) against the roofline max(FLOPs / matmul rate, bytes / bandwidth);
  3. the encoder: a randomly initialised BERT of e5-base-v2's exact shape (weights cannot travel to
     the device; the FLOPs are the same), fp16, queries/s against its FLOP roofline;
  4. end to end: the real server (`python -m bench.gpu serve`: the service with the synthetic index
     and corpus in place of files) driven by `retriever load` processes at concurrency 256 and 1024,
     pipelined and not, against the offline limit of (2) and (3).
BENCH_GPU_SMOKE=1 runs the same code on the CPU with tiny sizes (to check the script end to end
without a GPU); its figures say nothing about a GPU. Results: a table on stdout and JSON in
$OUT/bench-gpu.json on the device machine (else build/bench-gpu.json).
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np

ROOT = Path(__file__).resolve().parent.parent
WIKI18_ROWS = 21_015_324
DIMENSION = 768
TOPK = 3  # Search-R1's default
# intfloat/e5-base-v2 is BERT-base: these are its config.json's shape fields.
E5_BASE_SHAPE = {
    "vocab_size": 30522,
    "hidden_size": 768,
    "num_hidden_layers": 12,
    "num_attention_heads": 12,
    "intermediate_size": 3072,
    "max_position_embeddings": 512,
    "type_vocab_size": 2,
}
# bert-base-uncased's WordPiece vocabulary, which e5-base-v2 and the bundled MiniLM share: copied from
# the bundled model by `make bench-gpu-prepare` (it travels, the weights do not).
TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json", "vocab.txt")
CARRIED_DIR = ROOT / ".whl"


@dataclass(frozen=True)
class Plan:
    device: str
    rows: int
    dtype: str
    batches: tuple[int, ...]
    search_reps: dict[int, int]
    encoder_layers: int
    encoder_queries: int
    concurrency: tuple[int, ...]
    seconds: float
    load_processes: int
    max_batch_size: int


FULL = Plan(
    device="cuda",
    rows=WIKI18_ROWS,
    dtype="float16",
    batches=(1, 64, 256, 1024),
    search_reps={1: 30, 64: 10, 256: 6, 1024: 4},
    encoder_layers=E5_BASE_SHAPE["num_hidden_layers"],
    encoder_queries=8192,
    concurrency=(256, 1024),
    seconds=20.0,
    load_processes=8,
    max_batch_size=1024,
)
SMOKE = Plan(
    device="cpu",
    rows=40_000,
    dtype="bfloat16",
    batches=(1, 64, 256),
    search_reps={1: 3, 64: 2, 256: 2},
    encoder_layers=2,
    encoder_queries=128,
    concurrency=(16, 64),
    seconds=5.0,
    load_processes=2,
    max_batch_size=256,
)

QUESTIONS = (
    "who wrote paradise lost",
    "what is the capital of australia",
    "when did the second world war end",
    "how does photosynthesis work",
    "which river flows through cairo",
    "who was the first president of the united states",
    "what is the boiling point of water at the top of mount everest",
    "who composed the four seasons",
)


def say(message: str) -> None:
    print(f"[bench-gpu {time.strftime('%H:%M:%S')}] {message}", flush=True)


def questions(count: int) -> list[str]:
    return [f"{QUESTIONS[i % len(QUESTIONS)]} {i}" for i in range(count)]


# -- 1. ceilings ---------------------------------------------------------------------------------------


def _timed(device: str, work: Any, reps: int) -> float:
    """Median seconds of `work()` (device events on CUDA, after a warm-up)."""
    import torch

    work()
    times = []
    for _ in range(reps):
        if device.startswith("cuda"):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            work()
            end.record()
            end.synchronize()
            times.append(start.elapsed_time(end) / 1000)
        else:
            started = time.perf_counter()
            work()
            times.append(time.perf_counter() - started)
    return statistics.median(times)


def measure_ceilings(plan: Plan) -> dict[str, float]:
    import torch

    device, dtype = plan.device, getattr(torch, plan.dtype)
    size = (1 << 31) if device.startswith("cuda") else (1 << 27)  # bytes copied: 2 GiB (several times L2)
    source = torch.randn(size // 2, device=device, dtype=torch.float16)
    target = torch.empty_like(source)
    copy_s = _timed(device, lambda: target.copy_(source), 10)
    bandwidth = 2 * size / copy_s  # bytes read + bytes written
    side = 8192 if device.startswith("cuda") else 1024
    a = torch.randn(side, side, device=device).to(dtype)  # random data: zeros run faster than real data
    b = torch.randn(side, side, device=device).to(dtype)
    matmul_s = _timed(device, lambda: a @ b, 10)
    flops = 2 * side**3 / matmul_s
    say(f"ceilings: copy {bandwidth / 1e12:.3f} TB/s, {plan.dtype} matmul {flops / 1e12:.1f} TFLOP/s ({side}^3)")
    return {"bandwidth_bytes_per_s": bandwidth, "matmul_flops_per_s": flops, "matmul_side": side}


# -- 2. exact search ------------------------------------------------------------------------------------


def search_roofline(rows: int, batch: int, element: int, ceilings: dict[str, float]) -> dict[str, float]:
    flops = 2 * rows * DIMENSION * batch
    bytes_read = rows * DIMENSION * element  # one scan of the index serves the whole batch
    floor_s = max(flops / ceilings["matmul_flops_per_s"], bytes_read / ceilings["bandwidth_bytes_per_s"])
    return {
        "floor_s": floor_s,
        "roofline_qps": batch / floor_s,
        "compute_roofline_qps": ceilings["matmul_flops_per_s"] / (2 * rows * DIMENSION),
        "bound": "compute"
        if flops / ceilings["matmul_flops_per_s"] > bytes_read / ceilings["bandwidth_bytes_per_s"]
        else "memory",
    }


def unit_queries(count: int, seed: int) -> np.ndarray:
    queries = np.random.default_rng(seed).standard_normal((count, DIMENSION)).astype(np.float32)
    return queries / np.linalg.norm(queries, axis=1, keepdims=True)


def check_against_float32(index: Any, count: int = 8) -> dict[str, float]:
    """The backend's answers vs a float32 scan of the same stored rows (run on the owner thread)."""
    import torch

    from app.index_torch import score_tolerance

    queries = unit_queries(count, 99)
    scores, ids = index.search(queries, TOPK)

    def reference() -> tuple[np.ndarray, np.ndarray]:
        q = torch.from_numpy(queries).to(index.device)
        best_s, best_i = [], []
        for lo in range(0, index.count, 1 << 20):
            block = index._vectors[lo : lo + (1 << 20)].float() @ q.T  # (rows, count)
            s, i = torch.topk(block.T, min(TOPK, block.shape[0]), dim=1)
            best_s.append(s)
            best_i.append(i + lo)
        s, where = torch.topk(torch.cat(best_s, 1), TOPK, dim=1)
        return s.cpu().numpy(), torch.gather(torch.cat(best_i, 1), 1, where).cpu().numpy()

    want_scores, want_ids = index._owner.call(reference)
    tolerance = score_tolerance(index.dtype, "ip", 1.0, 1.0, DIMENSION)
    return {
        "queries": count,
        "top1_equal": float(np.mean(ids[:, 0] == want_ids[:, 0])),
        "max_score_diff": float(np.abs(scores - want_scores).max()),
        "tolerance": tolerance,
        "within_tolerance": bool(np.abs(scores - want_scores).max() <= tolerance + 1e-6),
    }


def bench_search(plan: Plan, ceilings: dict[str, float]) -> dict[str, Any]:
    import torch

    from app.index_torch import TorchFlatIndex, expected_device_bytes

    say(f"generating a {plan.rows:,} x {DIMENSION} {plan.dtype} index on {plan.device}")
    index = TorchFlatIndex.synthetic(plan.rows, DIMENSION, plan.device, plan.dtype, seed=1)
    result: dict[str, Any] = {
        "rows": plan.rows,
        "dtype": plan.dtype,
        "generate_s": index.load.seconds,
        "device_bytes": index.device_bytes,
        "expected_device_bytes": expected_device_bytes(plan.rows, DIMENSION, plan.dtype, "ip"),
    }
    if plan.device.startswith("cuda"):
        result["cuda_allocated_bytes"] = torch.cuda.memory_allocated(plan.device)
    try:
        result["check"] = check_against_float32(index)
        say(f"check vs float32: {result['check']}")
        element = 2 if plan.dtype != "float32" else 4
        points = []
        for group in (0, 16):
            index.topk_group = group
            for batch in plan.batches:
                queries = unit_queries(batch, batch)
                index.search(queries, TOPK)  # warm-up (kernels, workspace)
                times = []
                for _ in range(plan.search_reps[batch]):
                    started = time.perf_counter()
                    index.search(queries, TOPK)  # wall clock: what a batch costs the service
                    times.append(time.perf_counter() - started)
                seconds = statistics.median(times)
                roof = search_roofline(plan.rows, batch, element, ceilings)
                point = {
                    "topk_group": group,
                    "batch": batch,
                    "median_s": seconds,
                    "qps": batch / seconds,
                    **roof,
                    "of_roofline": roof["floor_s"] / seconds,
                    "of_compute_roofline": (batch / seconds) / roof["compute_roofline_qps"],
                }
                points.append(point)
                say(
                    f"search batch {batch:>5} group {group:>2}: {point['qps']:>10.1f} q/s, {seconds * 1e3:8.2f} ms; "
                    f"{point['of_roofline']:.2f}x roofline ({roof['bound']}-bound), "
                    f"{point['of_compute_roofline']:.2f}x compute roofline"
                )
        result["points"] = points
    finally:
        index.close()
        if plan.device.startswith("cuda"):
            torch.cuda.empty_cache()
    return result


# -- 3. encoder -----------------------------------------------------------------------------------------


def build_random_encoder(directory: Path, layers: int) -> Path:
    """A sentence-transformers model of e5-base-v2's shape with random weights (mean pooling, normalised)."""
    import torch
    from sentence_transformers import SentenceTransformer, models
    from transformers import BertConfig, BertModel

    tokenizer_dir = CARRIED_DIR / "tokenizer"
    if not all((tokenizer_dir / name).is_file() for name in TOKENIZER_FILES):
        raise SystemExit(f"{tokenizer_dir}: tokenizer files missing; run `make bench-gpu-prepare` first")
    bert_dir = directory / "bert"
    torch.manual_seed(0)
    BertModel(BertConfig(**(E5_BASE_SHAPE | {"num_hidden_layers": layers}))).save_pretrained(bert_dir)
    for name in TOKENIZER_FILES:
        shutil.copy(tokenizer_dir / name, bert_dir / name)
    transformer = models.Transformer(str(bert_dir), max_seq_length=256)
    model = SentenceTransformer(
        modules=[transformer, models.Pooling(E5_BASE_SHAPE["hidden_size"], "mean"), models.Normalize()]
    )
    model_dir = directory / "e5-base-v2-shaped-random"
    model.save(str(model_dir))
    return model_dir


def encoder_flops_per_query(tokens: float, layers: int) -> float:
    """Dense work of a BERT forward per query of `tokens` tokens: projections + FFN + attention."""
    d, ff = E5_BASE_SHAPE["hidden_size"], E5_BASE_SHAPE["intermediate_size"]
    per_token_layer = 2 * (4 * d * d + 2 * d * ff) + 2 * 2 * tokens * d
    return layers * tokens * per_token_layer


def bench_encoder(plan: Plan, model_dir: Path, ceilings: dict[str, float]) -> dict[str, Any]:
    from app.encoder import EncoderConfig, SentenceTransformerEncoder

    encoder = SentenceTransformerEncoder(
        EncoderConfig(
            model=str(model_dir),
            prefix="query: ",
            device=plan.device,
            dtype=plan.dtype,
            batch_size=plan.max_batch_size,
        )
    )
    texts = [f"query: {q}" for q in questions(plan.encoder_queries)]
    tokens = float(np.mean([len(encoder.model.tokenizer(t)["input_ids"]) for t in texts[:512]]))
    result: dict[str, Any] = {"layers": plan.encoder_layers, "tokens_per_query": tokens, "points": []}
    for batch in sorted({64, plan.max_batch_size}):
        encoder.config.batch_size = batch
        encoder.encode(texts[:batch])  # warm-up
        started = time.perf_counter()
        for lo in range(0, len(texts), batch):
            encoder.encode(texts[lo : lo + batch])
        seconds = time.perf_counter() - started
        qps = len(texts) / seconds
        roofline = ceilings["matmul_flops_per_s"] / encoder_flops_per_query(tokens, plan.encoder_layers)
        result["points"].append({"batch": batch, "qps": qps, "roofline_qps": roofline, "of_roofline": qps / roofline})
        say(f"encoder batch {batch:>5}: {qps:>10.1f} q/s ({tokens:.1f} tokens), {qps / roofline:.3f}x FLOP roofline")
    del encoder
    return result


# -- 4. end to end --------------------------------------------------------------------------------------


class SyntheticCorpus:
    """Stands in for a corpus store: row i is a small Search-R1 row built on demand."""

    def __init__(self, count: int) -> None:
        self.count, self.nbytes, self.directory = count, 0, Path("<synthetic>")

    def row_bytes(self, row: int) -> bytes:
        return b'{"id":"%d","contents":"\\"Passage %d\\"\\nsynthetic text"}' % (row, row)

    def touch_pages(self, progress: Any = None, step: int = 0) -> None:
        if progress:
            progress(1.0)


def serve_synthetic() -> int:
    """The real server with the synthetic index and corpus (BENCH_GPU_ROWS x 768, BENCH_GPU_DTYPE)."""
    from app import __version__, engine, metrics, service
    from app.devices import resolve_device
    from app.encoder import EncoderConfig, SentenceTransformerEncoder
    from app.index_torch import TorchFlatIndex
    from app.server import serve
    from app.settings import Settings

    rows, dtype = int(os.environ["BENCH_GPU_ROWS"]), os.environ["BENCH_GPU_DTYPE"]

    def load(settings: Settings, status: service.Status) -> service.Retriever:
        device = resolve_device(settings.device, "--device")
        status.set_stage("loading the random e5-shaped encoder")
        encoder_dtype = settings.encoder_dtype if settings.encoder_dtype != "auto" else dtype
        config = EncoderConfig(
            model=str(settings.model),
            prefix="query: ",
            device=device,
            dtype=encoder_dtype,
            batch_size=settings.max_batch_size,
        )
        encoder = SentenceTransformerEncoder(config)
        status.set_stage(f"generating {rows} synthetic rows on {settings.index_device}")
        index = TorchFlatIndex.synthetic(rows, DIMENSION, resolve_device(settings.index_device), dtype, seed=1)
        corpus = SyntheticCorpus(rows)
        retriever = service.Retriever(encoder, index, corpus, pipeline=settings.pipeline)  # type: ignore[arg-type]
        metrics.INDEX_VECTORS.set(rows)
        metrics.INFO.labels(__version__, encoder.name, index.type_name, "false").set(1)
        service.record_placement(retriever)
        return retriever

    engine.load = load  # the engine's loader thread calls it: everything else is the real server
    return serve(Settings())


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _wait_ready(url: str, process: subprocess.Popen[bytes], timeout: float) -> None:
    from app.devtools.server import wait_http_ok

    def gone() -> str | None:
        return None if process.poll() is None else f"exited with {process.returncode}"

    wait_http_ok(f"{url}/health", timeout=timeout, gone=gone, interval=0.5)


def run_load(url: str, concurrency: int, plan: Plan, work: Path) -> dict[str, Any]:
    """`retriever load` in several processes (one client process cannot keep 1024 callers busy)."""
    processes = max(1, min(plan.load_processes, concurrency))
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    runs = []
    for i, share in enumerate(shares):
        out = work / f"load-{concurrency}-{i}.json"
        command = [sys.executable, "-m", "app", "load", "--server", url, "--concurrency", str(share)]
        command += ["--requests", "100000000", "--duration", str(plan.seconds), "--json", str(out), "--timeout", "60"]
        runs.append((subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, cwd=ROOT), out))
    summaries = []
    for process, out in runs:
        _, err = process.communicate(timeout=plan.seconds + 120)
        if not out.is_file():
            raise RuntimeError(f"load generator failed: {err.decode(errors='replace')[-800:]}")
        summaries.append(json.loads(out.read_text()))
    return {
        "concurrency": concurrency,
        "processes": processes,
        "qps": sum(s["qps"] for s in summaries),
        "errors": sum(s["errors"] for s in summaries),
        "p50_ms_mean": statistics.mean(s["p50_ms"] for s in summaries),
        "p99_ms_max": max(s["p99_ms"] for s in summaries),
        "success_rate_min": min(s["success_rate"] for s in summaries),
    }


def bench_end_to_end(
    plan: Plan, model_dir: Path, work: Path, pipeline: bool, concurrency: tuple[int, ...]
) -> list[dict[str, Any]]:
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    env = os.environ | {
        "BENCH_GPU_ROWS": str(plan.rows),
        "BENCH_GPU_DTYPE": plan.dtype,
        "RETRIEVER_PORT": str(port),
        "RETRIEVER_HOST": "127.0.0.1",
        "RETRIEVER_MODEL": str(model_dir),
        "RETRIEVER_DEVICE": plan.device,
        "RETRIEVER_INDEX_DEVICE": plan.device,
        "RETRIEVER_PIPELINE": str(pipeline).lower(),
        "RETRIEVER_MAX_BATCH_SIZE": str(plan.max_batch_size),
        "RETRIEVER_LOG_LEVEL": "warning",
        "HF_HUB_OFFLINE": "1",
    }
    log_path = work / f"server-pipeline-{pipeline}.log"
    with open(log_path, "wb") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bench.gpu", "serve"], env=env, cwd=ROOT, stdout=log, stderr=subprocess.STDOUT
        )
    points = []
    try:
        started = time.monotonic()
        _wait_ready(url, process, 600)
        say(f"server ready in {time.monotonic() - started:.0f}s (pipeline {pipeline})")
        for callers in concurrency:
            point = run_load(url, callers, plan, work) | {"pipeline": pipeline}
            points.append(point)
            say(
                f"served c={callers:>5} pipeline={pipeline!s:5}: {point['qps']:>9.1f} q/s, "
                f"p50 {point['p50_ms_mean']:.1f} ms, p99 {point['p99_ms_max']:.1f} ms, errors {point['errors']}"
            )
    except Exception:
        print(log_path.read_text(errors="replace")[-3000:], flush=True)
        raise
    finally:
        from app.devtools.prometheus import stop_process

        stop_process(process, timeout=60)
    return points


# -- report ---------------------------------------------------------------------------------------------


def offline_limit(search: dict[str, Any], encoder: dict[str, Any], batch: int) -> dict[str, float]:
    """Queries/s of encoder + search at `batch` with nothing else: sequential and pipelined."""
    search_qps = max(p["qps"] for p in search["points"] if p["batch"] == batch)
    encoder_qps = max(p["qps"] for p in encoder["points"] if p["batch"] == batch)
    return {
        "batch": batch,
        "search_qps": search_qps,
        "encoder_qps": encoder_qps,
        "sequential_qps": 1 / (1 / search_qps + 1 / encoder_qps),
        "pipelined_qps": min(search_qps, encoder_qps),
    }


def environment(plan: Plan) -> dict[str, Any]:
    import torch

    info: dict[str, Any] = {"torch": torch.__version__, "python": sys.version.split()[0], "cpus": os.cpu_count()}
    if plan.device.startswith("cuda"):
        info["gpu"] = torch.cuda.get_device_name(0)
        info["gpu_memory_bytes"] = torch.cuda.get_device_properties(0).total_memory
        smi = shutil.which("nvidia-smi")
        if smi:
            info["nvidia_smi"] = subprocess.run([smi, "-L"], capture_output=True, text=True).stdout.strip()
    return info


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="bench.gpu", description=__doc__.split("\n")[0])
    parser.add_argument("command", nargs="?", default="run", choices=["run", "serve"])
    parser.add_argument("--skip-end-to-end", action="store_true")
    args = parser.parse_args(argv)
    if args.command == "serve":
        return serve_synthetic()
    smoke = os.environ.get("BENCH_GPU_SMOKE") == "1"
    plan = SMOKE if smoke else FULL
    if not smoke:
        import torch

        if not torch.cuda.is_available():
            raise SystemExit("bench-gpu: no CUDA device here; BENCH_GPU_SMOKE=1 runs the CPU smoke version")
    out_dir = Path(os.environ["OUT"]) if os.environ.get("OUT") else ROOT / "build"
    out_dir.mkdir(parents=True, exist_ok=True)
    say(f"plan: {'SMOKE (CPU, tiny: figures mean nothing for a GPU)' if smoke else 'FULL'} {asdict(plan)}")
    report: dict[str, Any] = {"smoke": smoke, "plan": asdict(plan), "environment": environment(plan)}
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="bench-gpu-") as scratch:
        work = Path(scratch)
        report["ceilings"] = measure_ceilings(plan)
        report["search"] = bench_search(plan, report["ceilings"])
        model_dir = build_random_encoder(work, plan.encoder_layers)
        report["encoder"] = bench_encoder(plan, model_dir, report["ceilings"])
        report["offline_limit"] = offline_limit(report["search"], report["encoder"], plan.max_batch_size)
        if not args.skip_end_to_end:
            # Pipelined at every concurrency; sequential at the highest only, for the pipelining gain.
            served = bench_end_to_end(plan, model_dir, work, True, plan.concurrency)
            served += bench_end_to_end(plan, model_dir, work, False, plan.concurrency[-1:])
            report["served"] = served
            limit = report["offline_limit"]
            for point in served:
                point["of_offline_limit"] = point["qps"] / (
                    limit["pipelined_qps"] if point["pipeline"] else limit["sequential_qps"]
                )
    report["seconds"] = time.monotonic() - started
    (out_dir / "bench-gpu.json").write_text(json.dumps(report, indent=2) + "\n")
    print_table(report)
    return 0


def print_table(report: dict[str, Any]) -> None:
    ceil = report["ceilings"]
    print(f"\n== bench-gpu {'SMOKE (CPU)' if report['smoke'] else ''} {report['environment']}")
    print(
        f"ceilings: {ceil['bandwidth_bytes_per_s'] / 1e12:.3f} TB/s copy, "
        f"{ceil['matmul_flops_per_s'] / 1e12:.1f} TFLOP/s"
    )
    print(f"check vs float32: {report['search']['check']}")
    print(f"{'search':<8}{'group':>6}{'batch':>7}{'q/s':>12}{'x roof':>8}{'x compute':>10}")
    for p in report["search"]["points"]:
        print(
            f"{'':<8}{p['topk_group']:>6}{p['batch']:>7}{p['qps']:>12.1f}{p['of_roofline']:>8.2f}{p['of_compute_roofline']:>10.2f}"
        )
    for p in report["encoder"]["points"]:
        print(f"encoder batch {p['batch']:>5}: {p['qps']:>10.1f} q/s, {p['of_roofline']:.3f}x FLOP roofline")
    print(f"offline limit: {report['offline_limit']}")
    for p in report.get("served", []):
        print(
            f"served c={p['concurrency']:>5} pipeline={p['pipeline']!s:5}: {p['qps']:>9.1f} q/s "
            f"({p['of_offline_limit']:.2f}x offline), p99 {p['p99_ms_max']:.1f} ms, errors {p['errors']}"
        )
    print(f"total {report['seconds']:.0f}s")


if __name__ == "__main__":
    sys.exit(main())
