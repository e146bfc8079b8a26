"""Streaming corpus conversion in constant memory: a 1 GiB Search-R1-style jsonl, peak RSS < 300 MB.

Generates (or reuses) .cache/bench-memory/corpus-1gib.jsonl: wiki-18-like rows
{"id": "N", "contents": "\\"Title\\"\\nPassage ..."} of ~100 words, some with non-ASCII text, escaped
quotes and extra columns. Then converts it with app.corpus.convert_jsonl in a fresh subprocess, which
reports its own peak RSS (getrusage ru_maxrss) and its RSS right after the imports, so the figure
is the converter's alone. The store is deleted afterwards; the jsonl is kept for the next run.

    .venv/bin/python bench/convert_memory.py [--size-gib 1] [--limit-mb 300]

Writes bench/results/convert_memory.json; exits 1 when the peak is over the limit.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
GIB = 1024**3
MB = 1000**2
WORDS = (
    "the", "of", "and", "in", "was", "river", "city", "empire", "treaty", "novel", "symphony", "planet",
    "molecule", "harbour", "dynasty", "painter", "election", "mountain", "bridge", "theorem", "festival",
    "railway", "cathedral", "island", "language", "battle", "museum", "century", "population", "district",
    "Zürich", "São", "Paulo", "Kraków", "Ōsaka", "naïve", "café", "Dvořák", "1867", "1945", "2008",
)  # fmt: skip


def generate(path: Path, size_bytes: int) -> tuple[int, float]:
    """Write rows until the file holds at least `size_bytes`; returns (rows, seconds)."""
    started = time.perf_counter()
    # A fixed pseudo-random text pool; each passage is a window of it (fast, varied, deterministic).
    state, pool = 12345, []
    for _ in range(200_000):
        state = (state * 1103515245 + 12345) % 2**31
        pool.append(WORDS[state % len(WORDS)])
    text = " ".join(pool)
    tmp = path.with_name(path.name + ".tmp")
    rows = written = 0
    with open(tmp, "w", encoding="utf-8", buffering=8 * 1024 * 1024) as out:
        while written < size_bytes:
            start = (rows * 7919) % (len(text) - 800)
            start = text.index(" ", start) + 1
            passage = text[start : start + 620].rsplit(" ", 1)[0]
            title = f'Article {rows} "{WORDS[rows % len(WORDS)]}"' if rows % 50 == 0 else f"Article {rows}"
            row: dict[str, object] = {"id": str(rows), "contents": f'"{title}"\n{passage}'}
            if rows % 10 == 0:
                row["title"] = title
            line = json.dumps(row, ensure_ascii=rows % 3 == 0) + "\n"
            out.write(line)
            written += len(line.encode("utf-8"))
            rows += 1
    tmp.replace(path)
    (path.with_name(path.name + ".rows")).write_text(f"{rows} {path.stat().st_size}\n")
    return rows, time.perf_counter() - started


def child(source: Path, target: Path) -> None:
    """Runs in the measured subprocess: convert, then print one JSON line about itself."""
    import resource

    from app.corpus import convert_jsonl
    from app.procstat import status_bytes

    def rss_now() -> int:
        return status_bytes("self", "VmRSS") or 0

    after_imports = rss_now()
    started = time.perf_counter()
    report = convert_jsonl(source, target)
    seconds = time.perf_counter() - started
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024  # Linux: kilobytes
    print(
        json.dumps(
            {
                "rows": report.rows,
                "bad_lines": report.bad_line_count,
                "seconds": round(seconds, 2),
                "rss_after_imports_bytes": after_imports,
                "peak_rss_bytes": peak,
            }
        )
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--size-gib", type=float, default=1.0)
    parser.add_argument("--limit-mb", type=float, default=300.0)
    parser.add_argument("--dir", type=Path, default=ROOT / ".cache" / "bench-memory")
    parser.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "convert_memory.json")
    parser.add_argument("--timeout", type=float, default=900.0)
    parser.add_argument("--child", nargs=2, type=Path, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.child:
        child(*args.child)
        return 0

    args.dir.mkdir(parents=True, exist_ok=True)
    source = args.dir / f"corpus-{args.size_gib:g}gib.jsonl"
    size = int(args.size_gib * GIB)
    marker = source.with_name(source.name + ".rows")
    if source.is_file() and marker.is_file() and source.stat().st_size >= size:
        rows = int(marker.read_text().split()[0])
        print(f"reusing {source} ({source.stat().st_size / GIB:.2f} GiB, {rows:,} rows)", flush=True)
    else:
        print(f"generating {source} ({args.size_gib:g} GiB)", flush=True)
        rows, seconds = generate(source, size)
        print(f"  {rows:,} rows, {source.stat().st_size / GIB:.2f} GiB in {seconds:.1f}s", flush=True)

    target = args.dir / "convert-memory.store"
    shutil.rmtree(target, ignore_errors=True)
    try:
        done = subprocess.run(
            [sys.executable, str(Path(__file__).resolve()), "--child", str(source), str(target)],
            capture_output=True,
            text=True,
            timeout=args.timeout,
            cwd=ROOT,
            check=False,
        )
        if done.returncode != 0:
            print(done.stderr[-3000:], file=sys.stderr)
            return 1
        result = json.loads(done.stdout.strip().splitlines()[-1])
        store_bytes = sum(p.stat().st_size for p in target.iterdir())
    finally:
        shutil.rmtree(target, ignore_errors=True)

    result |= {
        "source": str(source.relative_to(ROOT)) if source.is_relative_to(ROOT) else str(source),
        "source_bytes": source.stat().st_size,
        "expected_rows": rows,
        "store_bytes": store_bytes,
        "limit_bytes": int(args.limit_mb * MB),
        "pass": result["peak_rss_bytes"] < args.limit_mb * MB and result["rows"] == rows,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    peak, base = result["peak_rss_bytes"], result["rss_after_imports_bytes"]
    print(
        f"converted {result['rows']:,} rows ({result['source_bytes'] / GIB:.2f} GiB) in {result['seconds']}s "
        f"({result['source_bytes'] / MB / result['seconds']:.0f} MB/s)\n"
        f"peak RSS {peak / MB:.1f} MB (after imports {base / MB:.1f} MB; limit {args.limit_mb:g} MB; "
        f"{peak / (args.limit_mb * MB):.0%} of it): {'pass' if result['pass'] else 'FAIL'}\n"
        f"wrote {args.out}"
    )
    return 0 if result["pass"] else 1


if __name__ == "__main__":
    sys.exit(main())
