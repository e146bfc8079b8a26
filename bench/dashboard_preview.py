"""Render every panel of dashboards/*.json from real Prometheus data into PNGs (no Grafana needed).

    python bench/dashboard_preview.py [--url http://127.0.0.1:8000] [--out dashboards/preview]

Without --url it runs the same scenario as tests/observability (demo service on loopback, a real
Prometheus scraping it every second, bounded load, one restart, load again); with --url it scrapes
that running service instead while the same bounded load runs against it. Then every panel's queries
are evaluated through Prometheus' HTTP API exactly as the test does and drawn with matplotlib:

    OUT/panels/<dashboard>-<id>-<title>.png   one image per panel (not committed)
    OUT/<dashboard>-overview.png              all panels in the dashboard's own grid layout (README)
"""

from __future__ import annotations

import argparse
import math
import re
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
from matplotlib.axes import Axes
from matplotlib.ticker import FuncFormatter, MaxNLocator

from app.devtools import observability as h

Json = dict[str, Any]
RATE_INTERVAL = "10s"  # what Grafana's $__rate_interval would be for 1 s scrapes over a short range
COLORS = plt.get_cmap("tab10").colors


# ---------------------------------------------------------------------------------------------- data
def fetch_panel(stack: h.LiveStack, panel: Json) -> list[tuple[Json, list[Json]]]:
    """[(target, result series)] for every target of the panel, over the scenario's time range."""
    out = []
    for target in panel["targets"]:
        expr = h.substitute(target["expr"], rate_interval=RATE_INTERVAL, range_=stack.window, interval="5s")
        data = stack.prometheus.query(expr, at=stack.end) if target.get("instant") else stack.query_range(expr)
        out.append((target, data["result"]))
    return out


def legend(target: Json, metric: dict[str, str]) -> str:
    fmt = target.get("legendFormat") or ""
    if not fmt:
        return ", ".join(f"{k}={v}" for k, v in metric.items() if k != "__name__") or target["refId"]
    return re.sub(r"\{\{\s*(\w+)\s*\}\}", lambda m: metric.get(m.group(1), ""), fmt)


def points(series: Json, t0: float, step: float = 1.0) -> tuple[list[float], list[float]]:
    """Finite samples; a NaN between samples more than 1.5 steps apart so lines break at gaps."""
    xs: list[float] = []
    ys: list[float] = []
    for ts, raw in series.get("values") or [series["value"]]:
        value = float(raw)
        if not math.isfinite(value):
            continue
        x = float(ts) - t0
        if xs and x - xs[-1] > 1.5 * step and not math.isnan(ys[-1]):
            xs.append(xs[-1] + step)
            ys.append(math.nan)
        xs.append(x)
        ys.append(value)
    return xs, ys


# ---------------------------------------------------------------------------------------------- units
def unit_formatter(unit: str) -> Callable[[float], str]:
    def seconds(v: float) -> str:
        if v == 0:
            return "0"
        return f"{v * 1000:.3g} ms" if abs(v) < 1 else f"{v:.3g} s"

    def size(v: float) -> str:
        for scale, name in ((2**30, "GiB"), (2**20, "MiB"), (2**10, "KiB")):
            if abs(v) >= scale:
                return f"{v / scale:.3g} {name}"
        return f"{v:.0f} B"

    return {
        "s": seconds,
        "bytes": size,
        "decbytes": size,
        "percentunit": lambda v: f"{v * 100:.3g}%",
        "reqps": lambda v: f"{v:.3g} req/s",
        "ops": lambda v: f"{v:.3g} ops/s",
    }.get(unit, lambda v: f"{v:.4g}")


# ---------------------------------------------------------------------------------------------- drawing
def draw_panel(ax: Axes, panel: Json, data: list[tuple[Json, list[Json]]], t0: float, *, small: bool) -> None:
    if all(not result for _, result in data) and all(
        (panel["title"], t["refId"]) in h.EXTERNAL_ONLY_PANELS for t, _ in data
    ):
        ax.set_title(panel["title"], fontsize=8 if small else 11, loc="left", fontweight="bold")
        ax.set_xticks([])
        ax.set_yticks([])
        _no_data(ax, "needs kube-state-metrics\n(not in this Prometheus)")
        return
    unit = panel["fieldConfig"]["defaults"].get("unit", "short")
    fmt = unit_formatter(unit)
    title_size = 8 if small else 11
    ax.set_title(panel["title"], fontsize=title_size, loc="left", fontweight="bold")
    kind = panel["type"]
    if kind == "stat":
        draw_stat(ax, data, fmt, t0, small=small)
    elif kind == "table":
        draw_table(ax, data, small=small)
    elif kind == "state-timeline":
        draw_states(ax, data, t0, small=small)
    else:
        draw_lines(ax, panel, data, fmt, t0, small=small)


def _no_data(ax: Axes, why: str) -> None:
    ax.text(0.5, 0.5, why, ha="center", va="center", transform=ax.transAxes, color="grey", fontsize=8)


def draw_lines(
    ax: Axes, panel: Json, data: list[tuple[Json, list[Json]]], fmt: Callable[[float], str], t0: float, *, small: bool
) -> None:
    drawn = 0
    missing = []
    for target, result in data:
        if not result:
            missing.append(target["refId"])
        for series in result:
            xs, ys = points(series, t0)
            if xs:
                ax.plot(
                    xs, ys, linewidth=1.2, color=COLORS[drawn % len(COLORS)], label=legend(target, series["metric"])
                )
                drawn += 1
    defaults = panel["fieldConfig"]["defaults"]
    pad = 0.03 * (defaults["max"] - defaults.get("min", 0)) if "max" in defaults else 0
    if "min" in defaults:
        ax.set_ylim(bottom=defaults["min"] - pad)
    if "max" in defaults:
        ax.set_ylim(top=defaults["max"] + pad)
    ax.yaxis.set_major_formatter(FuncFormatter(lambda v, _: fmt(v)))
    ax.yaxis.set_major_locator(MaxNLocator(4 if small else 6))
    ax.tick_params(labelsize=6 if small else 8)
    ax.grid(alpha=0.3)
    if drawn:
        ax.legend(fontsize=5 if small else 7, loc="upper left", framealpha=0.6)
    note = " / ".join(f"{r}: needs kube-state-metrics" for r in missing)
    if note:
        ax.text(0.99, 0.02, note, ha="right", va="bottom", transform=ax.transAxes, color="grey", fontsize=5)
    if not drawn:
        _no_data(ax, "no data")


def draw_stat(
    ax: Axes, data: list[tuple[Json, list[Json]]], fmt: Callable[[float], str], t0: float, *, small: bool
) -> None:
    ax.set_xticks([])
    ax.set_yticks([])
    lines = []
    spark = None
    for target, result in data:
        for series in result:
            xs, ys = points(series, t0)
            if ys:
                lines.append((legend(target, series["metric"]), fmt(ys[-1])))
                spark = spark or (xs, ys)
    if spark:
        ax2 = ax.twinx()
        ax2.fill_between(spark[0], spark[1], alpha=0.15, color="tab:blue")
        ax2.set_yticks([])
        ax2.set_ylim(bottom=0)
    if not lines:
        _no_data(ax, "no data")
        return
    text = "\n".join(f"{value}" if len(lines) == 1 else f"{name}: {value}" for name, value in lines)
    ax.text(0.5, 0.45, text, ha="center", va="center", transform=ax.transAxes, fontsize=(11 if small else 20))


def draw_states(ax: Axes, data: list[tuple[Json, list[Json]]], t0: float, *, small: bool) -> None:
    rows = [(legend(target, s["metric"]), s) for target, result in data for s in result]
    for i, (name, series) in enumerate(rows):
        xs, ys = points(series, t0)
        for x, y in zip(xs, ys, strict=True):
            if math.isnan(y):
                continue
            ax.broken_barh([(x, 1.0)], (i + 0.1, 0.8), color="tab:green" if y >= 1 else "tab:red")
        ax.text(0, i + 0.5, f" {name}", va="center", fontsize=6 if small else 8)
    ax.set_yticks([])
    ax.set_ylim(0, max(len(rows), 1))
    ax.tick_params(labelsize=6 if small else 8)
    ax.text(
        0.99, 0.98, "green: ready  red: not ready  blank: not scraped", ha="right", va="top",
        transform=ax.transAxes, fontsize=5 if small else 7,
    )  # fmt: skip
    if not rows:
        _no_data(ax, "no data")


def draw_table(ax: Axes, data: list[tuple[Json, list[Json]]], *, small: bool) -> None:
    ax.axis("off")
    series = [s for _, result in data for s in result]
    if not series:
        _no_data(ax, "no data")
        return
    columns = sorted({k for s in series for k in s["metric"] if k != "__name__"})
    cells = [[_short(s["metric"].get(c, "")) for c in columns] for s in series]
    table = ax.table(cellText=cells, colLabels=columns, loc="center", cellLoc="left")
    table.auto_set_font_size(False)
    table.set_fontsize(5 if small else 7)


def _short(value: str, limit: int = 28) -> str:
    return value if len(value) <= limit else "…" + value[-(limit - 1) :]


def slug(text: str) -> str:
    return re.sub(r"[^a-z0-9]+", "-", text.lower()).strip("-")


def render_dashboard(stack: h.LiveStack, path: Path, out: Path) -> tuple[Path, list[Path]]:
    dash = h.load_json(path)
    name = path.stem
    panels_dir = out / "panels"
    panels_dir.mkdir(parents=True, exist_ok=True)
    fetched = {p["id"]: fetch_panel(stack, p) for p in h.iter_panels(dash)}
    t0 = stack.start
    written = []
    for panel in h.iter_panels(dash):
        pos = panel["gridPos"]
        fig, ax = plt.subplots(figsize=(pos["w"] * 0.5, pos["h"] * 0.45 + 0.4), dpi=100)
        draw_panel(ax, panel, fetched[panel["id"]], t0, small=False)
        if panel["type"] not in ("stat", "table"):
            ax.set_xlabel("seconds since Prometheus started", fontsize=7)
        fig.tight_layout()
        target = panels_dir / f"{name}-{panel['id']:02d}-{slug(panel['title'])}.png"
        fig.savefig(target)
        plt.close(fig)
        written.append(target)

    # Overview: the dashboard's own grid (24 columns, rows of ~30 px in Grafana).
    rows = max(p["gridPos"]["y"] + p["gridPos"]["h"] for p in dash["panels"])
    col_w, row_h = 0.62, 0.28
    fig = plt.figure(figsize=(24 * col_w, rows * row_h + 0.6), dpi=64)
    fig.suptitle(
        f"{dash['title']} (preview from Prometheus data, {stack.window} scenario)", fontsize=12, x=0.01, ha="left"
    )
    top_margin = 0.6 / (rows * row_h + 0.6)
    for panel in dash["panels"]:
        pos = panel["gridPos"]
        left = pos["x"] / 24 + 0.004
        width = pos["w"] / 24 - 0.008
        height = (pos["h"] / rows) * (1 - top_margin) - 0.012
        bottom = 1 - top_margin - ((pos["y"] + pos["h"]) / rows) * (1 - top_margin) + 0.006
        if panel["type"] == "row":
            fig.text(left, bottom + height / 2, panel["title"], fontsize=10, fontweight="bold", va="center")
            continue
        ax = fig.add_axes((left, bottom, width, height))
        draw_panel(ax, panel, fetched[panel["id"]], t0, small=True)
    overview = out / f"{name}-overview.png"
    fig.savefig(overview)
    plt.close(fig)
    return overview, written


# ---------------------------------------------------------------------------------------------- scenario
def scrape_running(url: str, workdir: Path, mix: h.LoadMix) -> Iterator[h.LiveStack]:
    """Prometheus scraping an already running service while the bounded load runs against it."""
    target = url.removeprefix("http://").rstrip("/")
    prometheus = h.Prometheus(workdir / "prometheus", [target], rule_files=[h.RULES_FILE])
    service = h.RetrieverService(workdir / "service")  # never started: only carries the URL
    service.url = url.rstrip("/")
    try:
        prometheus.start()
        stack = h.LiveStack(service, prometheus, start=time.time())
        prometheus.wait_for('up{job="retriever"} == 1', timeout=30)
        stack.loads.append(h.run_load(service.url, mix, seed=1))
        try:
            h.run_k6(service.url, prometheus, workdir)
        except (RuntimeError, OSError) as exc:
            stack.k6_error = str(exc)
        time.sleep(3)
        stack.end = time.time()
        yield stack
    finally:
        prometheus.stop()


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--url", help="scrape this running service instead of starting the demo")
    parser.add_argument("--out", type=Path, default=h.DASHBOARD_DIR / "preview")
    parser.add_argument("--seconds", type=float, default=20.0, help="load per phase (bounded)")
    parser.add_argument("--max-requests", type=int, default=2000, help="requests per phase at most")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--demo-limit", type=int, default=300)
    args = parser.parse_args(argv)

    mix = h.live_mix(duration_s=args.seconds, max_requests=args.max_requests)
    with tempfile.TemporaryDirectory(prefix="dashboard-preview-") as tmp:
        if args.url:
            scenario = scrape_running(args.url, Path(tmp), mix)
        else:
            scenario = h.build_live_stack(
                Path(tmp), workers=args.workers, demo_limit=args.demo_limit, ready_timeout=900, mix=mix
            )
        for stack in scenario:
            for report in stack.loads:
                print(f"load: {report.sent} requests in {report.seconds:.1f}s, statuses {dict(report.statuses)}")
            for path in h.dashboard_files():
                overview, panels = render_dashboard(stack, path, args.out)
                print(f"{path.name}: {len(panels)} panels -> {args.out / 'panels'}; overview {overview}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
