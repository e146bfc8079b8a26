"""`make bench-scale`: compressed and ANN indexes at scale on CPU, against Flat, in one run.

Two sets, each labelled in the output:
- speed: a synthetic N x 768 Flat index (default N = 2,000,000: 5.7 GiB of float32; unit vectors
  from a Gaussian-cluster mixture, bench/synthetic.py's generator at 768-d), written once to
  .cache/bench-scale/ by streaming (never held in RAM), served with all-mpnet-base-v2 as the query
  encoder (768-d, the per-query cost of e5-base-v2's class). Each index type is made from it with
  `retriever convert` (a child process: convert time and peak RSS), then served by `retriever serve`
  at concurrency 64 x 1 query/request (queries/s, p50/p99, RSS/PSS of the server) and measured
  offline, in-process without HTTP (bench/offline.py: the best batch size = that index's offline limit).
- recall: real embeddings, the first R demo-corpus passages (Wikipedia leads) encoded with mpnet
  (cached in .cache/bench-scale/real-R/), queried with the demo's labelled queries encoded by the
  same model; each index type is converted from that Flat index with the same factory strings and
  the recall@10 of each knob setting comes from `retriever convert`'s own measurement.

Recall is also measured on the speed set itself (labelled synthetic): held-out vectors from the same
cluster mixture, passed to `retriever convert --queries` as a `.npy` file of query vectors.

HNSW32 is built over the full N by default (about 15-20 minutes of the run on 2 cores); --hnsw-count
builds it over the first vectors only, and the table then says so.

Served points run with RETRIEVER_MAX_QUEUE_WAIT_S raised: 64 closed-loop clients cannot queue more
than 64 queries, and the point is the capacity, not the refusal of a slow index's predicted wait.

The 21M x 768 extrapolation is arithmetic, not a measurement: see `extrapolate()`.
Writes bench/results/scale.{json,md,png}.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import math
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import faiss
import numpy as np

from bench.common import DATA_DIR, RESULTS, ROOT, bench_queries, machine
from bench.synthetic import synthetic_queries

SCALE_CACHE = DATA_DIR / "bench-scale"
DIMENSION = 768
CONCURRENCY = 64
WIKI18_N = 21_015_324


def _cores() -> int:
    return len(os.sched_getaffinity(0))


# -- the synthetic Flat index, streamed to disk ------------------------------------------------


def _flat_header(count: int, dimension: int) -> bytes:
    """The bytes of an IndexFlatIP file before its vectors: FAISS's own header for an empty index with
    ntotal patched to `count`, then the uint64 float count of the vector block."""
    empty = faiss.serialize_index(faiss.IndexFlatIP(dimension)).tobytes()
    header = bytearray(empty[:-8])  # the empty index ends with a zero-length vector block
    (ntotal,) = struct.unpack_from("<q", header, 8)
    assert ntotal == 0, "unexpected IndexFlat header layout"
    struct.pack_into("<q", header, 8, count)
    return bytes(header) + struct.pack("<Q", count * dimension)


def ensure_synthetic(count: int, model: str) -> Path:
    from app.corpus import CorpusWriter
    from app.manifest import CORPUS_DIR, INDEX_FILE, Manifest
    from bench.common import write_synthetic_manifest
    from bench.synthetic import synthetic_vectors

    out = SCALE_CACHE / f"synthetic-{count}x{DIMENSION}" / "index"
    try:
        manifest = Manifest.read(out)
        manifest.check_files(out, checksums=False)
        if manifest.count == count:
            return out
    except Exception:  # missing or incomplete: rebuild
        pass
    started = time.perf_counter()
    tmp = out.parent / f".index.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    writer = CorpusWriter(tmp / CORPUS_DIR)
    done = 0
    with open(tmp / INDEX_FILE, "wb") as handle:
        handle.write(_flat_header(count, DIMENSION))
        for chunk in synthetic_vectors(count, DIMENSION):
            handle.write(chunk.tobytes())
            for i in range(done, done + len(chunk)):
                writer.add(b'{"id":"%d","contents":"\\"Synthetic %d\\"\\nA stand-in passage."}' % (i, i))
            done += len(chunk)
            if done % 500_000 < len(chunk):
                print(f"synthetic: {done:,}/{count:,} x {DIMENSION}", flush=True)
    writer.close()
    check = faiss.read_index(str(tmp / INDEX_FILE), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    assert check.ntotal == count and check.d == DIMENSION
    write_synthetic_manifest(tmp, count, DIMENSION, {"clusters": 4096, "generator": "bench.synthetic"})
    manifest = Manifest.read(tmp)
    manifest.model = model
    manifest.write(tmp)
    shutil.rmtree(out, ignore_errors=True)
    os.rename(tmp, out)
    print(f"synthetic: {out} in {time.perf_counter() - started:.0f}s", flush=True)
    return out


# -- the real embeddings -----------------------------------------------------------------------


def ensure_real(count: int, model: str, max_length: int) -> Path:
    """The first `count` demo passages encoded with `model` (cached: mpnet encodes a few per second)."""
    from app.builder import BuildOptions, build
    from app.demo import write_corpus
    from app.manifest import Manifest

    out = SCALE_CACHE / f"real-{count}-{max_length}" / "index"
    try:
        if Manifest.read(out).count == count:
            return out
    except Exception:
        pass
    corpus = out.parent / "passages.jsonl"
    corpus.parent.mkdir(parents=True, exist_ok=True)
    write_corpus(corpus, count)
    print(f"real: encoding {count} demo passages with {model} (once; cached in {out})", flush=True)
    build(
        BuildOptions(
            corpus=corpus, out=out, model=model, chunk_size=64, max_length=max_length, force=True, progress=True
        )
    )
    return out


# -- measurements --------------------------------------------------------------------------------


def run_convert(source: Path, out: Path, factory: str, extra: list[str]) -> dict[str, Any]:
    """`retriever convert` in a child process: its wall time, peak RSS and printed report."""
    if out.exists():
        shutil.rmtree(out)
    command = [sys.executable, "-m", "app", "convert", str(source), "--index-type", factory, "--out", str(out),
               "--no-progress", *extra]  # fmt: skip
    started = time.perf_counter()
    log_path = out.parent / f"{out.name}.convert.log"
    with open(log_path, "w") as log:
        process = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, cwd=ROOT)
    peak = peak_rss_of(process)
    seconds = time.perf_counter() - started
    output = log_path.read_text(errors="replace")
    log_path.unlink()
    if process.returncode != 0:
        raise RuntimeError(f"convert {factory} failed:\n{output[-3000:]}")
    from app.manifest import Manifest

    manifest = Manifest.read(out)
    return {
        "factory": manifest.index_factory,
        "seconds": round(seconds, 1),
        "stages": manifest.source.get("seconds", {}),
        "peak_rss_bytes": peak,
        "index_bytes": manifest.files["index.faiss"].bytes,
        "recall": manifest.recall,
        "output": output[-2500:],
    }


def knob_env(knob: dict[str, int]) -> dict[str, str]:
    env = {}
    if "nprobe" in knob:
        env["RETRIEVER_NPROBE"] = str(knob["nprobe"])
    if "efSearch" in knob:
        env["RETRIEVER_EF_SEARCH"] = str(knob["efSearch"])
    return env


def offline_limit(index_dir: Path, knob: dict[str, int], min_seconds: float, batch_sizes: str) -> dict[str, Any]:
    out = SCALE_CACHE / "offline.json"
    env = os.environ | {"HF_HUB_OFFLINE": "1"} | knob_env(knob)
    command = [sys.executable, "-m", "bench.offline", "--index-dir", str(index_dir), "--json", str(out),
               "--batch-sizes", batch_sizes, "--min-seconds", str(min_seconds)]  # fmt: skip
    subprocess.run(command, check=True, cwd=ROOT, env=env, stdout=subprocess.DEVNULL)
    result = json.loads(out.read_text())
    best = max(result["offline_by_batch"], key=lambda row: row["qps"])
    cores = _cores()
    picked = {
        key: result[key] for key in ("offline_qps", "offline_best_batch", "offline_best_layout", "single_query_ms")
    }
    # Core-seconds per query of each stage at the best batch: wall time x cores / batch (an upper
    # bound on a shared machine, where the wall time includes waiting for the CPU).
    picked["encode_cpu_s_per_query"] = best["encode_ms"] / 1000 * cores / best["batch_size"]
    picked["search_cpu_s_per_query"] = best["search_ms"] / 1000 * cores / best["batch_size"]
    return picked


def served(index_dir: Path, knob: dict[str, int], seconds: float, log_path: Path) -> dict[str, Any]:
    from app.loadclient import run, run_load
    from app.procstat import tree_memory
    from bench.run import Server

    saved = dict(os.environ)
    os.environ.update(knob_env(knob) | {"RETRIEVER_MAX_QUEUE_WAIT_S": "120"})
    server = Server(index_dir, "batching", log_path)
    try:
        ready_s = server.start(timeout=900)
    finally:
        os.environ.clear()
        os.environ.update(saved)
    try:
        result = run(
            run_load(server.url, requests=10**9, concurrency=CONCURRENCY, queries_per_request=1, topk=10,
                     timeout=None, duration=seconds, questions=bench_queries(2048), warmup=3.0, grace=30.0)
        )  # fmt: skip
        assert server.process is not None
        memory = tree_memory(server.process.pid, [index_dir / "index.faiss"])
    finally:
        server.stop()
    qps = result.qps_closed if result.qps_closed and not result.unfinished else result.qps
    return {
        "served_qps": round(qps, 1),
        "p50_ms": result.p50_ms,
        "p99_ms": result.p99_ms,
        "errors": result.errors,
        "requests": result.requests,
        "rss_bytes": memory.rss_total,
        "pss_bytes": memory.pss_total,
        "ready_s": round(ready_s, 1),
    }


# -- the run ---------------------------------------------------------------------------------------


def plan(count: int, hnsw_count: int, ivf_nlist: int) -> list[dict[str, Any]]:
    from app.convert import recommended_nlist

    nlist = ivf_nlist or recommended_nlist(count)
    return [
        {"name": "Flat", "factory": None, "knobs": [{}]},
        {"name": "SQfp16", "factory": "SQfp16", "knobs": [{}]},
        {"name": "SQ8", "factory": "SQ8", "knobs": [{}]},
        {"name": "IVF-SQ8", "factory": f"IVF{nlist},SQ8", "real_factory": "IVF,SQ8",
         "knobs": [{"nprobe": 16}, {"nprobe": 64}]},
        {"name": "HNSW32", "factory": "HNSW32", "knobs": [{"efSearch": 64}, {"efSearch": 256}], "count": hnsw_count},
    ]  # fmt: skip


def subset_flat(source: Path, count: int) -> Path:
    """A Flat directory of the first `count` vectors of `source` (for HNSW's build-bounded run)."""
    from app.corpus import CorpusWriter
    from app.manifest import CORPUS_DIR, INDEX_FILE, Manifest
    from bench.common import write_synthetic_manifest

    out = source.parent.parent / f"synthetic-{count}x{DIMENSION}-subset" / "index"
    try:
        if Manifest.read(out).count == count:
            return out
    except Exception:
        pass
    shutil.rmtree(out.parent, ignore_errors=True)
    out.mkdir(parents=True)
    index = faiss.read_index(str(source / INDEX_FILE), faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY)
    flat = faiss.downcast_index(index)
    rows = faiss.rev_swig_ptr(flat.get_xb(), count * DIMENSION)
    with open(out / INDEX_FILE, "wb") as handle:
        handle.write(_flat_header(count, DIMENSION))
        handle.write(memoryview(rows).cast("B"))
    writer = CorpusWriter(out / CORPUS_DIR)
    for i in range(count):
        writer.add(b'{"id":"%d","contents":"\\"Synthetic %d\\"\\nA stand-in passage."}' % (i, i))
    writer.close()
    model = Manifest.read(source).model
    write_synthetic_manifest(out, count, DIMENSION, {"subset_of": str(source)})
    manifest = Manifest.read(out)
    manifest.model = model
    manifest.write(out)
    return out


def extrapolate(row: dict[str, Any], count: int, cores_here: float) -> dict[str, Any]:
    """Queries/s and memory at 21M x 768 on 16 and 64 cores, from this run's per-query CPU cost.

    The encoder's cost per query does not depend on N; the search's does: linearly for Flat, SQfp16
    and SQ8 (a scan), by nprobe x N/nlist for IVF (nlist grows with sqrt(N) so ~sqrt(N)), by log N for
    HNSW. Formula: cpu_per_query(21M) = t_enc + t_search x f(21M)/f(N); qps(C cores) = C / cpu_per_query,
    with t_enc and t_search the per-query CPU seconds measured here (offline, best batch) on
    `cores_here` cores. Memory: index bytes x 21M/N (+ the same model and corpus). Assumes linear
    scaling across cores and that the index fits in the page cache: an estimate, not a measurement.
    """
    name, scale = row["name"], WIKI18_N / row["count"]
    growth = {"Flat": scale, "SQfp16": scale, "SQ8": scale, "IVF-SQ8": math.sqrt(scale)}.get(
        name, math.log(WIKI18_N) / math.log(row["count"])
    )
    enc = row.get("encode_cpu_s_per_query") or 0.0
    search = row.get("search_cpu_s_per_query") or 0.0
    per_query = enc + search * growth
    return {
        "search_growth": round(growth, 2),
        "cpu_s_per_query_21m": round(per_query, 5),
        "qps_16_cores": round(16 / per_query, 1) if per_query else None,
        "qps_64_cores": round(64 / per_query, 1) if per_query else None,
        "index_gib_21m": round(row["index_bytes"] * scale / 2**30, 1),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument(
        "--model",
        default=str(SCALE_CACHE.parent / "models" / "all-mpnet-base-v2"),
        help="sentence-transformers directory (make model-mpnet)",
    )
    parser.add_argument("--count", type=int, default=2_000_000, help="synthetic vectors (speed set)")
    parser.add_argument("--hnsw-count", type=int, default=0, help="HNSW32 is built over this many (0: all)")
    parser.add_argument("--real", type=int, default=2000, help="demo passages encoded for the recall set")
    parser.add_argument("--real-max-length", type=int, default=128, help="tokens per passage when encoding them")
    parser.add_argument("--train-size", type=int, default=65_536)
    parser.add_argument("--seconds", type=float, default=20.0, help="load window per served point")
    parser.add_argument("--offline-seconds", type=float, default=3.0)
    parser.add_argument("--only", default="", help="comma-separated index names to run (default: all)")
    parser.add_argument("--batch-sizes", default="16,64", help="offline batch sizes (the served batches are <= 64)")
    parser.add_argument("--ivf-nlist", type=int, default=0, help="IVF lists for the speed set (0: recommended)")
    parser.add_argument("--recall-queries", type=int, default=300, help="labelled queries for the real recall")
    parser.add_argument("--report-only", action="store_true", help="redraw scale.md/png from scale.json")
    parser.add_argument(
        "--merge", action="store_true", help="with --only: replace those rows in scale.json, keep the others"
    )
    parser.add_argument(
        "--convert-memory-only",
        action="store_true",
        help="re-run each row's convert of the speed set and update its peak RSS in scale.json",
    )
    args = parser.parse_args()
    if args.convert_memory_only:
        remeasure_convert_memory(args)
        return 0
    if args.report_only:
        result = json.loads((RESULTS / "scale.json").read_text())
        result.setdefault("convert_baseline_rss_bytes", interpreter_rss())
        result["targets"] = targets(result["rows"])
        (RESULTS / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
        render(result)
        return 0
    model = str(Path(args.model).resolve())
    os.environ["HF_HUB_OFFLINE"] = "1"
    started = time.perf_counter()
    SCALE_CACHE.mkdir(parents=True, exist_ok=True)
    load_at_start = os.getloadavg()[0]

    real = ensure_real(args.real, model, args.real_max_length)
    synthetic = ensure_synthetic(args.count, model)
    rows: list[dict[str, Any]] = []
    run_started = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    wanted = {name for name in args.only.split(",") if name}
    kept: list[dict[str, Any]] = []
    if args.merge and (RESULTS / "scale.json").is_file():
        kept = [row for row in json.loads((RESULTS / "scale.json").read_text())["rows"] if row["name"] not in wanted]
    speed_convert_args = synthetic_recall_args(args)
    for entry in plan(args.count, args.hnsw_count or args.count, args.ivf_nlist):
        if wanted and entry["name"] not in wanted:
            continue
        count = entry.get("count", args.count)
        source = synthetic if count == args.count else subset_flat(synthetic, count)
        row: dict[str, Any] = {"name": entry["name"], "count": count, "run": run_started}
        print(f"== {entry['name']} over {count:,} x {DIMENSION}", flush=True)
        if entry["factory"] is None:
            index_dir = source
            row.update({"factory": "Flat", "convert_s": 0.0, "index_bytes": (source / "index.faiss").stat().st_size})
            real_report: dict[str, Any] = {}
            speed_report: dict[str, Any] = {}
        else:
            index_dir = SCALE_CACHE / f"{entry['name']}-{count}"
            speed = run_convert(source, index_dir, entry["factory"], speed_convert_args)
            speed_report = speed["recall"]
            row.update(
                factory=speed["factory"],
                convert_s=speed["seconds"],
                convert_stages=speed["stages"],
                convert_peak_rss_bytes=speed["peak_rss_bytes"],
                index_bytes=speed["index_bytes"],
            )
            real_out = SCALE_CACHE / f"real-{entry['name']}"
            queries = SCALE_CACHE / "real-queries.txt"
            queries.write_text("\n".join(bench_queries(args.recall_queries)) + "\n")
            recall_args = ["--queries", str(queries), "--recall-queries", str(args.recall_queries)]
            real_factory = entry.get("real_factory", entry["factory"])
            real_report = run_convert(real, real_out, real_factory, recall_args)["recall"]
            shutil.rmtree(real_out, ignore_errors=True)
        row["real_recall"] = real_report
        row["synthetic_recall"] = speed_report
        row["settings"] = []
        for knob in entry["knobs"]:
            point: dict[str, Any] = {"knob": knob}
            point.update(offline_limit(index_dir, knob, args.offline_seconds, args.batch_sizes))
            for stage in ("encode_cpu_s_per_query", "search_cpu_s_per_query"):
                row.setdefault(stage, point[stage])  # the first knob setting feeds the extrapolation
            point.update(served(index_dir, knob, args.seconds, SCALE_CACHE / f"server-{entry['name']}.log"))
            point["served_vs_offline"] = round(point["served_qps"] / point["offline_qps"], 2)
            point["recall@10_real"] = _recall_at_knob(real_report, knob) if entry["factory"] else 1.0
            point["recall@10_synthetic"] = _recall_at_knob(speed_report, knob) if entry["factory"] else 1.0
            print(
                f"   {knob or '-'}: served {point['served_qps']:.1f} q/s (offline {point['offline_qps']:.1f}, "
                f"x{point['served_vs_offline']}), p50 {point['p50_ms']:.0f} ms, p99 {point['p99_ms']:.0f} ms, "
                f"recall@10 {point['recall@10_real']} (real) {point['recall@10_synthetic']} (synthetic), "
                f"RSS {point['rss_bytes'] / 2**30:.2f} GiB",
                flush=True,
            )
            row["settings"].append(point)
        row["extrapolated"] = extrapolate(row, count, _cores())
        rows.append(row)
        write_results(_in_plan_order(kept + rows), args, load_at_start, started, final=False)  # kept on failure
        if entry["factory"] is not None and index_dir != synthetic:
            shutil.rmtree(index_dir, ignore_errors=True)

    write_results(_in_plan_order(kept + rows), args, load_at_start, started, final=True)
    return 0


def remeasure_convert_memory(args: argparse.Namespace) -> None:
    """Each converted row's `retriever convert` again, for its peak RSS alone (no serving)."""
    result = json.loads((RESULTS / "scale.json").read_text())
    synthetic = SCALE_CACHE / f"synthetic-{args.count}x{DIMENSION}" / "index"
    when = dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds")
    convert_args = synthetic_recall_args(args)  # as in the run: the recall step is part of the peak
    for row in result["rows"]:
        if not row.get("convert_peak_rss_bytes"):
            continue
        out = SCALE_CACHE / f"{row['name']}-memory"
        speed = run_convert(synthetic, out, row["factory"], convert_args)
        shutil.rmtree(out, ignore_errors=True)
        print(f"{row['name']}: peak RSS {speed['peak_rss_bytes'] / 2**30:.2f} GiB in {speed['seconds']:.0f} s")
        row["convert_peak_rss_bytes"] = speed["peak_rss_bytes"]
        row["convert_memory_measured"] = f"{when}, `--convert-memory-only` (VmHWM of the convert process)"
    result["convert_baseline_rss_bytes"] = interpreter_rss()
    result["targets"] = targets(result["rows"])
    (RESULTS / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    render(result)


def synthetic_recall_args(args: argparse.Namespace) -> list[str]:
    """`retriever convert` flags for the speed set: its training sample, and recall measured with
    held-out synthetic vectors written as a `.npy` query file."""
    queries = SCALE_CACHE / "synthetic-queries.npy"
    np.save(queries, synthetic_queries(args.recall_queries, DIMENSION))
    return ["--train-size", str(args.train_size), "--queries", str(queries), "--recall-queries",
            str(args.recall_queries)]  # fmt: skip


def _runs_note(rows: list[dict[str, Any]]) -> list[str]:
    """Rows merged from more than one run (`--only ... --merge`) say when each was measured."""
    runs = {row.get("run", "?") for row in rows}
    if len(runs) < 2:
        return []
    started = ", ".join(f"{row['name']} {row.get('run', '?')}" for row in rows)
    return ["", f"Rows from more than one run (`--only ... --merge`), each row's run: {started}."]


def _in_plan_order(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    order = ["Flat", "SQfp16", "SQ8", "IVF-SQ8", "HNSW32"]
    return sorted(rows, key=lambda row: order.index(row["name"]) if row["name"] in order else len(order))


def write_results(
    rows: list[dict[str, Any]], args: argparse.Namespace, load_at_start: float, started: float, final: bool
) -> None:
    result = {
        "machine": machine() | {"load_at_start": load_at_start, "load_at_end": os.getloadavg()[0]},
        "date": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        "complete": final,
        "model": "all-mpnet-base-v2 (768-d)",
        "speed_set": f"{args.count:,} x {DIMENSION} synthetic unit vectors (Gaussian-cluster mixture)",
        "recall_set": f"{args.real:,} demo passages (Wikipedia leads, first {args.real_max_length} tokens) encoded "
        f"with all-mpnet-base-v2; {args.recall_queries} labelled queries (Wikidata descriptions), same model",
        "args": vars(args),
        "concurrency": CONCURRENCY,
        "rows": rows,
        "targets": targets(rows),
        "convert_baseline_rss_bytes": interpreter_rss(),
        "seconds": round(time.perf_counter() - started, 1),
    }
    RESULTS.mkdir(exist_ok=True)
    (RESULTS / "scale.json").write_text(json.dumps(result, indent=2) + "\n")
    render(result)


def render(result: dict[str, Any]) -> None:
    (RESULTS / "scale.md").write_text(markdown(result))
    plot(result, RESULTS / "scale.png")
    if result["complete"]:
        print(markdown(result))


def _recall_at_knob(report: dict[str, Any], knob: dict[str, int]) -> float | None:
    """recall@10 of a convert report at this knob setting (nearest setting the convert sweep measured)."""
    if not report:
        return None
    settings = report["settings"]
    if not knob:
        return settings[0]["recall@10"]
    name, value = next(iter(knob.items()))
    best = min(settings, key=lambda row: abs(math.log2(row["knob"][name]) - math.log2(value)))
    return best["recall@10"]


def peak_rss_of(process: subprocess.Popen[bytes], interval: float = 0.1) -> int:
    """The child's own peak RSS (VmHWM, polled until it exits). Not wait4's ru_maxrss: Linux carries
    the parent's high-water mark across fork and exec, so a child of a 2 GB benchmark reports 2 GB."""
    from app.procstat import status_bytes

    peak = 0
    while process.poll() is None:
        peak = max(peak, status_bytes(process.pid, "VmHWM") or 0)
        time.sleep(interval)
    return peak


def interpreter_rss() -> int:
    """Peak RSS of a child that only imports what `retriever convert` imports: the allowance the
    convert memory bound adds to the output index + training sample + one chunk."""
    code = (
        "import faiss, numpy, app.cli, app.convert, app.recall\n"
        "print(next(l.split()[1] for l in open('/proc/self/status') if l.startswith('VmHWM:')))"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, check=True)
    return int(done.stdout.split()[-1]) * 1024


def convert_memory(rows: list[dict[str, Any]], train_size: int, chunk_size: int, baseline: int) -> dict[str, Any]:
    """Each convert's peak RSS against its bound: output index + training sample + one chunk + imports."""
    out = {}
    for row in rows:
        peak = row.get("convert_peak_rss_bytes")
        if not peak:
            continue
        sample = min(train_size, row["count"]) * DIMENSION * 4
        bound = row["index_bytes"] + sample + chunk_size * DIMENSION * 4 + baseline
        out[row["name"]] = {"peak_gib": round(peak / 2**30, 2), "bound_gib": round(bound / 2**30, 2),
                            "within": peak <= bound}  # fmt: skip
    return out


def targets(rows: list[dict[str, Any]]) -> dict[str, Any]:
    flat = next((row for row in rows if row["name"] == "Flat"), None)
    points = [(row, point) for row in rows for point in row["settings"]]
    good = [(row, p) for row, p in points if row["name"] != "Flat" and (p["recall@10_real"] or 0) >= 0.95
            and row["count"] == (flat["count"] if flat else row["count"])]  # fmt: skip
    best = max(good, key=lambda rp: rp[1]["served_qps"], default=None)
    flat_qps = flat["settings"][0]["served_qps"] if flat else None
    ratio = round(best[1]["served_qps"] / flat_qps, 2) if best and flat_qps else None
    # The same comparison for the index stage alone (search CPU per query, offline, best batch) and
    # for the extrapolation to 21M on 64 cores: on 2 cores the encoder's share bounds the served ratio.
    search_ratio = extrapolated_ratio = None
    if best and flat:
        best_search = best[1]["search_cpu_s_per_query"]
        flat_search = flat["settings"][0]["search_cpu_s_per_query"]
        search_ratio = round(flat_search / best_search, 1) if best_search else None
        flat_64 = flat["extrapolated"]["qps_64_cores"]
        best_64 = extrapolate({**best[0], **{k: best[1][k] for k in ("encode_cpu_s_per_query",
                              "search_cpu_s_per_query")}}, best[0]["count"], 0)["qps_64_cores"]  # fmt: skip
        extrapolated_ratio = round(best_64 / flat_64, 1) if flat_64 and best_64 else None
    return {
        "index_stage_x_flat": search_ratio,
        "extrapolated_21m_64_cores_x_flat": extrapolated_ratio,
        "best_at_recall_0.95": {"name": best[0]["name"], "knob": best[1]["knob"], "served_qps": best[1]["served_qps"]}
        if best
        else None,
        "x_flat": ratio,
        "x_flat_met": bool(ratio and ratio >= 10),
        "served_vs_offline": {
            " ".join([row["name"], *(f"{k}={v}" for k, v in p["knob"].items())]): p["served_vs_offline"]
            for row, p in points
        },
        "served_vs_offline_met": all(p["served_vs_offline"] >= 0.8 for _, p in points),
    }


def markdown(result: dict[str, Any]) -> str:
    m = result["machine"]
    lines = [
        "# Compressed and ANN indexes at scale (`make bench-scale`)",
        "",
        f"{result['date']}; {m.get('cpu', '')}, {m.get('cores', '')} cores, load average {m['load_at_start']:.1f} "
        f"at the start (shared machine); run time {result['seconds'] / 60:.1f} min.",
        f"Speed: {result['speed_set']}, queries encoded by {result['model']}; served at concurrency "
        f"{result['concurrency']} x 1 query/request, top 10. Recall@10: {result['recall_set']}.",
        *_runs_note(result["rows"]),
        "",
        "| index | N | knob | served q/s | offline q/s | served/offline | p50 ms | p99 ms | errors "
        "| recall@10 (real) | recall@10 (synthetic) | server RSS GiB | PSS GiB | index GiB | convert s "
        "| convert peak RSS GiB |",
        "|---|---:|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        for p in row["settings"]:
            knob = ", ".join(f"{k} {v}" for k, v in p["knob"].items()) or "–"
            peak = row.get("convert_peak_rss_bytes")
            recall_text = p["recall@10_real"] if p["recall@10_real"] is not None else "–"
            synthetic = p.get("recall@10_synthetic")
            cells = [
                row["name"], f"{row['count']:,}", knob, f"{p['served_qps']:,.1f}", f"{p['offline_qps']:,.1f}",
                f"{p['served_vs_offline']:.2f}", f"{p['p50_ms']:,.0f}", f"{p['p99_ms']:,.0f}", str(p["errors"]),
                str(recall_text), str(synthetic) if synthetic is not None else "–",
                f"{p['rss_bytes'] / 2**30:.2f}", f"{p['pss_bytes'] / 2**30:.2f}", f"{row['index_bytes'] / 2**30:.2f}",
                f"{row['convert_s']:.0f}" if peak else "–", f"{peak / 2**30:.2f}" if peak else "–",
            ]  # fmt: skip
            lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        "## Extrapolated to 21M x 768 (arithmetic, not measured)",
        "",
        "cpu_per_query(21M) = t_encode + t_search x growth, growth = 21M/N (Flat, SQ: a scan), sqrt(21M/N) (IVF, "
        "nlist ~ sqrt N), ln 21M / ln N (HNSW); queries/s on C cores = C / cpu_per_query; t_encode, t_search: CPU "
        "seconds per query measured here offline "
        "(best batch, wall time x cores / batch: an upper bound on a shared machine; first knob setting). "
        "Assumes linear scaling over cores and an index held in the page cache.",
        "",
        "| index | t_encode ms | t_search ms | growth | q/s 16 cores | q/s 64 cores | index GiB at 21M |",
        "|---|---:|---:|---:|---:|---:|---:|",
    ]
    for row in result["rows"]:
        e = row["extrapolated"]
        lines.append(
            f"| {row['name']} | {row['encode_cpu_s_per_query'] * 1000:.2f} | {row['search_cpu_s_per_query'] * 1000:.2f}"
            f" | {e['search_growth']} | {e['qps_16_cores']} | {e['qps_64_cores']} | {e['index_gib_21m']} |"
        )
    t = result["targets"]
    best = t["best_at_recall_0.95"]
    lines += [
        "",
        "## Targets (ratios within this run)",
        "",
        "- best setting with recall@10 >= 0.95 (real) vs Flat at the same N: "
        + (f"{best['name']} {best['knob']}: {best['served_qps']} q/s = {t['x_flat']}x Flat "
           f"({'met' if t['x_flat_met'] else 'NOT met'}, target 10x); the index stage alone (search CPU per "
           f"query, offline): {t.get('index_stage_x_flat')}x Flat; extrapolated to 21M on 64 cores: "
           f"{t.get('extrapolated_21m_64_cores_x_flat')}x Flat" if best else "none reached 0.95")
        ,
        "- served / offline limit at concurrency 64 (target >= 0.8): "
        + ", ".join(f"{k} {v}" for k, v in t["served_vs_offline"].items())
        + f" ({'all met' if t['served_vs_offline_met'] else 'NOT all met'})",
    ]  # fmt: skip
    memory = convert_memory(result["rows"], result["args"]["train_size"], 65_536,
                            result.get("convert_baseline_rss_bytes", 0))  # fmt: skip
    if memory:
        remeasured = {row.get("convert_memory_measured") for row in result["rows"]} - {None}
        if remeasured:
            lines.append(f"- convert peak RSS re-measured apart: {', '.join(sorted(remeasured))}")
        lines.append(
            "- convert peak RSS <= output index + training sample + one 65,536-row chunk + the imports' own "
            f"{result.get('convert_baseline_rss_bytes', 0) / 2**30:.2f} GiB: "
            + ", ".join(
                f"{name} {m['peak_gib']} <= {m['bound_gib']} GiB {'yes' if m['within'] else 'NO'}"
                for name, m in memory.items()
            )
        )
    lines.append("")
    return "\n".join(lines)


def plot(result: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    figure, axes = plt.subplots(figsize=(7, 4.5))
    for row in result["rows"]:
        xs = [p["served_qps"] for p in row["settings"]]
        ys = [p["recall@10_real"] if p["recall@10_real"] is not None else np.nan for p in row["settings"]]
        axes.plot(xs, ys, marker="o", label=f"{row['name']} (N={row['count']:,})")
        for p, x, y in zip(row["settings"], xs, ys, strict=True):
            if p["knob"]:
                axes.annotate(" ".join(f"{k}={v}" for k, v in p["knob"].items()), (x, y), fontsize=7)
    axes.set_xscale("log")
    axes.set_xlabel("served queries/s (concurrency 64, 1 query/request)")
    axes.set_ylabel("recall@10 on real embeddings")
    axes.axhline(0.95, color="grey", linestyle=":", linewidth=1)
    axes.legend(fontsize=8)
    axes.set_title("recall vs served throughput (make bench-scale)")
    figure.tight_layout()
    figure.savefig(path, dpi=110)


if __name__ == "__main__":
    sys.exit(main())
