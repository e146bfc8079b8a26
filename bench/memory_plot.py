"""The memory figure of `make bench-memory`: PSS of the whole server against workers, mapped vs not.

    .venv/bin/python -m bench.memory_plot [bench/results/memory.json]   # redraw from a saved report

bench/memory.py calls `plot()` after every run, writing bench/results/memory.png next to memory.json.
"""

from __future__ import annotations

import json
import sys
from pathlib import Path

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

GIB = 1024**3


def plot(report: dict, out: Path) -> Path | None:
    """Lines of summed PSS (what the node holds) per worker count, mmap on and off; RSS (which counts
    a shared page once per process) dotted for contrast; the index + corpus file size as a floor.
    None (and no file) when the report holds no completed run."""
    if not report["runs"]:
        return None
    fig, ax = plt.subplots(figsize=(7.5, 4.5), dpi=110)
    styles = {True: ("mmap on (one shared copy)", "tab:blue"), False: ("mmap off (a copy per worker)", "tab:red")}
    for mapped, (label, color) in styles.items():
        runs = sorted((r for r in report["runs"] if r["mmap"] is mapped), key=lambda r: r["workers"])
        if not runs:
            continue
        workers = [r["workers"] for r in runs]
        ax.plot(workers, [r["pss_total_bytes"] / GIB for r in runs], "o-", color=color, label=f"PSS, {label}")
        ax.plot(workers, [r["rss_total_bytes"] / GIB for r in runs], ":", color=color, alpha=0.6, label="RSS, same")
        for w, r in zip(workers, runs, strict=True):
            pss = r["pss_total_bytes"] / GIB
            offset = (6, -12 if mapped else 6)
            ax.annotate(f"{pss:.2f}", (w, pss), textcoords="offset points", xytext=offset, fontsize=8, color=color)
    ax.axhline(report["files_bytes"] / GIB, color="grey", linestyle="--", linewidth=1)
    all_workers = sorted({r["workers"] for r in report["runs"]})
    ax.text(all_workers[-1], report["files_bytes"] / GIB, "index + corpus files ", ha="right", va="top", fontsize=8,
            color="grey")  # fmt: skip
    ax.set_xticks(all_workers)
    ax.set_xlim(all_workers[0] - 0.3, all_workers[-1] + 0.5)
    ax.set_xlabel("uvicorn workers")
    ax.set_ylabel("GiB, summed over every server process")
    ax.set_ylim(bottom=0)
    ax.set_title(
        f"Server memory vs workers: {report['vectors']:,} x {report['dimension']} Flat index "
        f"({report['index_bytes'] / GIB:.2f} GiB)",
        fontsize=10,
    )
    ax.grid(True, alpha=0.3)
    ax.legend(fontsize=8, loc="upper left")
    machine = report.get("machine", {})
    fig.text(
        0.01,
        0.01,
        f"make bench-memory; {machine.get('cpus')} CPUs, page cache {report['settings']['page_cache']}; "
        "PSS from /proc/PID/smaps_rollup after the same query load",
        fontsize=7,
        color="grey",
    )
    fig.tight_layout(rect=(0, 0.03, 1, 1))
    out.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(out)
    plt.close(fig)
    return out


def main(argv: list[str]) -> int:
    source = Path(argv[1]) if len(argv) > 1 else Path(__file__).resolve().parent / "results" / "memory.json"
    out = plot(json.loads(source.read_text()), source.with_suffix(".png"))
    print(f"wrote {out}" if out else f"{source}: no completed run, no figure")
    return 0 if out else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv))
