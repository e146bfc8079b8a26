"""Targets, Markdown table and plot from a bench/run.py result (`python -m bench.report` redraws them)."""

from __future__ import annotations

import json
import math
import sys
from pathlib import Path
from typing import Any

from bench.common import RESULTS

TARGET_CONCURRENCY = 64
LONE_CALLER_SLACK_MS = 5.0


def _point(entry: dict[str, Any], mode: str, concurrency: int, qpr: int) -> dict[str, Any] | None:
    for run in entry.get("runs", []):
        if (run["mode"], run["concurrency"], run["queries_per_request"]) == (mode, concurrency, qpr):
            return None if run.get("skipped") else run
    return None


def _ratio(value: float, reference: float) -> float:
    return round(value / reference, 3) if reference else math.nan


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Issue 3's targets, each with its figures, ratio and verdict.

    Throughput and lone-caller targets are read from the paired rounds (server and offline
    measured alternately, medians): load from other processes then hits both sides alike.
    """
    found: list[dict[str, Any]] = []
    indexes = results["indexes"]
    for name, entry in indexes.items():
        paired = entry.get("paired") or {}
        batching = paired.get("batching_c64_qps")
        if batching is None:
            point = _point(entry, "batching", TARGET_CONCURRENCY, 1)
            batching = point["qps"] if point else None
        per_request = paired.get("per_request_c64_qps")
        per_request_source = "paired rounds"
        if per_request is None:
            point = _point(entry, "per-request", TARGET_CONCURRENCY, 1)
            per_request = point["qps"] if point else None
            per_request_source = "sweep (too slow to repeat)"
        if batching is not None:
            ratio = _ratio(batching, entry["offline_qps"])
            found.append(
                {
                    "target": f"{name}: batching, c=64, 1 query/request >= 0.8 x offline",
                    "value": batching,
                    "reference": entry["offline_qps"],
                    "ratio": ratio,
                    "required": 0.8,
                    "pass": ratio >= 0.8,
                    "note": f"offline: batch {entry['offline_best_batch']}, {entry['offline_best_layout']} layout",
                }
            )
        if batching is not None and per_request:
            required = 4.0 if name == "flat1m" else 1.5
            ratio = _ratio(batching, per_request)
            found.append(
                {
                    "target": f"{name}: batching / per-request at c=64, 1 query/request >= {required:g}",
                    "value": batching,
                    "reference": per_request,
                    "ratio": ratio,
                    "required": required,
                    "pass": ratio >= required,
                    "note": f"per-request from the {per_request_source}",
                }
            )
        lone = paired.get("batching_c1_p50_ms")
        if lone is None:
            point = _point(entry, "batching", 1, 1)
            lone = point["p50_ms"] if point else None
        if lone is not None and entry.get("single_query_ms") is not None:
            limit = entry["single_query_ms"] + LONE_CALLER_SLACK_MS
            found.append(
                {
                    "target": f"{name}: c=1 p50 <= offline single-query latency + 5 ms",
                    "value": lone,
                    "reference": round(limit, 2),
                    "ratio": _ratio(lone, limit),
                    "required": 1.0,
                    "pass": lone <= limit,
                    "note": f"offline single query {entry['single_query_ms']} ms",
                }
            )
    below = [
        (name, run)
        for name, entry in indexes.items()
        for run in entry.get("runs", [])
        if not run.get("skipped") and not run.get("saturated")
    ]
    failed = [
        f"{name} {r['mode']} c={r['concurrency']} q={r['queries_per_request']}" for name, r in below if r["errors"]
    ]
    paired_errors = sum((entry.get("paired") or {}).get("errors", 0) for entry in indexes.values())
    if paired_errors:
        failed.append(f"{paired_errors} in the paired rounds")
    found.append(
        {
            "target": "no errors at any point below saturation",
            "value": sum(r["errors"] for _, r in below) + paired_errors,
            "reference": 0,
            "ratio": None,
            "required": 0,
            "pass": not failed,
            "note": f"{len(below)} sweep points below saturation, plus the paired rounds"
            + (f"; errors at {', '.join(failed)}" if failed else ""),
        }
    )
    return found


def targets_text(found: list[dict[str, Any]]) -> str:
    lines = []
    for t in found:
        ratio = "" if t["ratio"] is None else f"  ratio {t['ratio']:.2f} (need {t['required']:g})"
        lines.append(
            f"{'PASS' if t['pass'] else 'FAIL'}  {t['target']}: {t['value']} vs {t['reference']}{ratio}"
            + (f"  [{t['note']}]" if t.get("note") else "")
        )
    return "\n".join(lines)


def _fmt(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "–"
    if isinstance(value, float):
        return f"{value:,.1f}" if value >= 10 else f"{value:.2f}"
    return str(value)


def markdown(results: dict[str, Any]) -> str:
    m = results["machine"]
    out = [
        "# Throughput benchmark (`make bench`)",
        "",
        f"Machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB; torch {m['torch']}, faiss {m['faiss']}; "
        f"commit {m.get('git_commit') or '?'}. Load average at start {m['loadavg_start'][0]:.1f}, "
        f"at end {m.get('loadavg_end', [math.nan])[0]:.1f} (a shared machine: figures are noisy). "
        f"Run took {results.get('duration_s', 0):.0f} s. Client: {results['plan']['client']}, "
        f"{results['plan']['window_s']:g} s measured per point after {results['plan']['warmup_s']:g} s warm-up, "
        f"topk {results['plan']['topk']}.",
        "",
        "## Targets",
        "",
        "| target | value | reference | ratio | required | |",
        "|---|---:|---:|---:|---:|---|",
    ]
    for t in results["targets"]:
        out.append(
            f"| {t['target']} | {_fmt(t['value'])} | {_fmt(t['reference'])} | {_fmt(t['ratio'])} | "
            f"{t['required']:g} | {'pass' if t['pass'] else '**FAIL**'}{' — ' + t['note'] if t.get('note') else ''} |"
        )
    for name, entry in results["indexes"].items():
        out += [
            "",
            f"## {name}: {entry.get('vectors', 0):,} vectors, {entry.get('index_type', '')}"
            f" (`{entry.get('index_dir')}`)",
            "",
            f"Offline limit {_fmt(entry['offline_qps'])} queries/s: batch {entry['offline_best_batch']}, "
            f"{entry.get('offline_best_layout', 'threads')} layout: the sweep's two best configurations "
            f"(best {_fmt(entry.get('offline_sweep_best_qps'))} q/s there) re-measured in every paired round, "
            f"the better median. A lone query: {_fmt(entry['single_query_ms'])} ms (sweep: "
            f"{_fmt(entry.get('offline_sweep_single_query_ms'))} ms). Layouts: `threads` = torch/FAISS "
            "multi-threaded kernels; `lane` = the batching server's single-threaded lane threads sharing "
            "each batch. Queries/s: median of three windows.",
            "",
            "| layout | offline batch | queries/s | batch p50 ms | encode ms | search ms | CPU ms/query |",
            "|---|---:|---:|---:|---:|---:|---:|",
        ]
        for row in entry["offline_by_batch"]:
            out.append(
                f"| {row.get('layout', 'threads')} | {row['batch_size']} | {_fmt(row['qps'])} | "
                f"{_fmt(row['batch_p50_ms'])} | {_fmt(row['encode_ms'])} | {_fmt(row['search_ms'])} | "
                f"{_fmt(row.get('cpu_ms_per_query'))} |"
            )
        paired = entry.get("paired")
        if paired:
            out += [
                "",
                f"Paired rounds (the target points, alternating with the offline limit; medians: offline "
                f"{_fmt(paired['offline_qps'])} q/s, batching c=64 {_fmt(paired['batching_c64_qps'])} q/s, "
                f"per-request c=64 {_fmt(paired['per_request_c64_qps'])} q/s, lone query offline "
                f"{_fmt(paired['offline_single_ms'])} ms vs server c=1 p50 {_fmt(paired['batching_c1_p50_ms'])} ms):",
                "",
                "| round | offline q/s | batching c=64 q/s | per-request c=64 q/s | offline lone query ms "
                "| server c=1 p50 ms | errors |",
                "|---:|---:|---:|---:|---:|---:|---:|",
            ]
            for number, r in enumerate(paired["rounds"], start=1):
                out.append(
                    f"| {number} | {_fmt(r['offline_qps'])} | {_fmt(r['batching_c64_qps'])} | "
                    f"{_fmt(r['per_request_c64_qps'])} | {_fmt(r['offline_single_ms'])} | "
                    f"{_fmt(r['batching_c1_p50_ms'])} | {r['errors']} |"
                )
        out += [
            "",
            "Sweep (queries/s: C x Q / mean latency, Little's law for C closed-loop callers; answers "
            "counted in the window where the point is saturated; x offline: against the offline limit above):",
            "",
            "| mode | queries/request | concurrency | queries/s | x offline | p50 ms | p95 ms | p99 ms | errors "
            "| server cores | client cores | |",
            "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|",
        ]
        for run in entry["runs"]:
            if run.get("skipped"):
                out.append(
                    f"| {run['mode']} | {run['queries_per_request']} | {run['concurrency']} | "
                    f"– | – | – | – | – | – | – | – | not run: {run.get('reason', 'time budget')} |"
                )
                continue
            note = f"saturated: {run['unfinished']} callers unanswered at the end" if run.get("saturated") else ""
            out.append(
                f"| {run['mode']} | {run['queries_per_request']} | {run['concurrency']} | {_fmt(run['qps'])} | "
                f"{_fmt(_ratio(run['qps'], entry['offline_qps']))} | {_fmt(run['p50_ms'])} | {_fmt(run['p95_ms'])} | "
                f"{_fmt(run['p99_ms'])} | {run['errors']} | {_fmt(run.get('server_cores'))} | "
                f"{_fmt(run.get('client_cores'))} | {note} |"
            )
    return "\n".join(out) + "\n"


def plot(results: dict[str, Any], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    names = list(results["indexes"])
    fig, axes = plt.subplots(len(names), 2, figsize=(11, 3.6 * len(names)), squeeze=False)
    styles = {
        ("batching", 1): ("tab:blue", "-"),
        ("batching", 16): ("tab:blue", "--"),
        ("per-request", 1): ("tab:orange", "-"),
        ("per-request", 16): ("tab:orange", "--"),
    }
    for row, name in enumerate(names):
        entry = results["indexes"][name]
        qps_ax, p99_ax = axes[row]
        for (mode, qpr), (color, line) in styles.items():
            runs = [
                r
                for r in entry["runs"]
                if r["mode"] == mode and r["queries_per_request"] == qpr and not r.get("skipped")
            ]
            runs.sort(key=lambda r: r["concurrency"])
            if not runs:
                continue
            xs = [r["concurrency"] for r in runs]
            label = f"{mode}, {qpr} q/request"
            qps_ax.plot(xs, [r["qps"] for r in runs], color=color, linestyle=line, marker="o", label=label)
            p99_ax.plot(xs, [r["p99_ms"] for r in runs], color=color, linestyle=line, marker="o", label=label)
            for ax, key in ((qps_ax, "qps"), (p99_ax, "p99_ms")):
                sat = [r for r in runs if r.get("saturated")]
                ax.scatter([r["concurrency"] for r in sat], [r[key] for r in sat], s=90, facecolors="none",
                           edgecolors="red", zorder=5)  # fmt: skip
        qps_ax.axhline(entry["offline_qps"], color="black", linestyle=":", label="offline limit")
        qps_ax.set_ylim(bottom=0)
        qps_ax.set_title(f"{name}: throughput")
        qps_ax.set_ylabel("queries/s")
        p99_ax.set_title(f"{name}: p99 latency (red ring: saturated)")
        p99_ax.set_ylabel("ms")
        p99_ax.set_yscale("log")
        for ax in (qps_ax, p99_ax):
            ax.set_xscale("log", base=2)
            ax.set_xticks(sorted({r["concurrency"] for r in entry["runs"]}))
            ax.get_xaxis().set_major_formatter(matplotlib.ticker.ScalarFormatter())
            ax.set_xlabel("concurrency")
            ax.grid(True, alpha=0.3)
        qps_ax.legend(fontsize=7)
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write(results: dict[str, Any], out_dir: Path) -> None:
    (out_dir / "latest.md").write_text(markdown(results))
    plot(results, out_dir / "latest.png")


def main() -> None:
    path = Path(sys.argv[1]) if len(sys.argv) > 1 else RESULTS / "latest.json"
    results = json.loads(path.read_text())
    results["targets"] = targets(results)
    write(results, path.parent)
    print(targets_text(results["targets"]))


if __name__ == "__main__":
    main()
