"""Progress for long work: a tqdm bar on a terminal, rate-limited log lines everywhere else.

In a pod there is no terminal, so a bar would be invisible (or a wall of carriage returns in the
log): there the same calls write one INFO line at most every `interval` seconds, with the
percentage, the rate and the ETA, plus a final line when the work ends.

    from app.progress import Progress

    with Progress("verify", total=nbytes, unit="B") as progress:
        for block in blocks:
            progress.update(len(block))     # or progress.set(done) with an absolute count

`on_fraction` (optional) also receives the fraction done after every update, e.g. for /health.
"""

from __future__ import annotations

import logging
import sys
import time
from collections.abc import Callable, Iterable, Iterator
from typing import IO, Literal, TypeVar

from tqdm import tqdm

log = logging.getLogger("retriever.progress")

Mode = Literal["auto", "bar", "log", "off"]
DEFAULT_INTERVAL_S = 10.0
T = TypeVar("T")


def _is_terminal(stream: IO[str]) -> bool:
    try:
        return stream.isatty()
    except (AttributeError, ValueError):
        return False


def format_amount(value: float, unit: str) -> str:
    """Bytes in binary units (`1.5 GiB`); other units as plain counts (`12,345 rows`)."""
    if unit == "B":
        for suffix in ("B", "KiB", "MiB", "GiB", "TiB"):
            if abs(value) < 1024 or suffix == "TiB":
                return f"{value:.0f} {suffix}" if suffix == "B" else f"{value:.1f} {suffix}"
            value /= 1024
    return f"{value:,.0f} {unit}"


def format_duration(seconds: float) -> str:
    seconds = max(0, round(seconds))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


class Progress:
    """Progress of one operation of `total` units (None: unknown total, no percentage or ETA).

    mode: "auto" (bar when `stream` is a terminal, log lines otherwise), "bar", "log" or "off".
    interval: the least number of seconds between two log lines (the bar refreshes by itself).
    """

    def __init__(
        self,
        desc: str,
        total: float | None,
        unit: str = "B",
        *,
        mode: Mode = "auto",
        interval: float = DEFAULT_INTERVAL_S,
        on_fraction: Callable[[float], None] | None = None,
        stream: IO[str] | None = None,
        logger: logging.Logger | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.desc, self.total, self.unit = desc, total, unit
        self.interval, self.on_fraction = interval, on_fraction
        self.done = 0.0
        self._log = logger or log
        self._clock = clock
        self._started = self._last_line = clock()
        self._closed = False
        stream = stream if stream is not None else sys.stderr
        if mode == "auto":
            mode = "bar" if _is_terminal(stream) else "log"
        self.mode: Mode = mode
        self._bar = (
            tqdm(total=total, desc=desc, unit=unit, unit_scale=unit == "B", unit_divisor=1024, file=stream)
            if mode == "bar"
            else None
        )

    def update(self, amount: float) -> None:
        """Add `amount` units done."""
        self.set(self.done + amount)

    def set(self, done: float) -> None:
        """Set the absolute amount done (e.g. bytes read so far)."""
        step, self.done = done - self.done, done
        if self._bar is not None:
            self._bar.update(step)
        if self.on_fraction is not None and self.total:
            self.on_fraction(min(1.0, done / self.total))
        if self.mode == "log":
            now = self._clock()
            if now - self._last_line >= self.interval:
                self._last_line = now
                self._log.info("%s", self.line(now))

    def line(self, now: float | None = None, verdict: str = "") -> str:
        """`desc: 42.0% (1.2 GiB of 2.9 GiB), 310.5 MiB/s, ETA 0:05` (no percentage/ETA without a total);
        with a verdict (the final line): `desc: done, 100.0% (...), 310.5 MiB/s, in 0:09`."""
        now = self._clock() if now is None else now
        elapsed = max(now - self._started, 1e-9)
        rate = self.done / elapsed
        text = f"{self.desc}: {verdict + ', ' if verdict else ''}"
        if self.total:
            text += f"{100 * self.done / self.total:.1f}% ({format_amount(self.done, self.unit)} of "
            text += f"{format_amount(self.total, self.unit)}), "
        else:
            text += f"{format_amount(self.done, self.unit)}, "
        text += f"{format_amount(rate, self.unit)}/s"
        if verdict:
            text += f", in {format_duration(elapsed)}"
        elif self.total:
            eta = (self.total - self.done) / rate if rate > 0 else float("inf")
            text += f", ETA {format_duration(eta)}" if eta != float("inf") else ", ETA unknown"
        return text

    def close(self, ok: bool = True) -> None:
        """End the bar, or write the final log line (always, whatever the interval)."""
        if self._closed:
            return
        self._closed = True
        if self._bar is not None:
            self._bar.close()
        elif self.mode == "log":
            # The same fields as a progress line, so a short job that ends inside one interval
            # still logs its percentage and rate once.
            self._log.info("%s", self.line(verdict="done" if ok else "stopped"))

    def __enter__(self) -> Progress:
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        self.close(ok=exc_type is None)


def track(
    items: Iterable[T], desc: str, total: float | None = None, unit: str = "items", **options: object
) -> Iterator[T]:
    """Iterate `items` with progress counted one unit per item (total: len(items) when it has one)."""
    if total is None and hasattr(items, "__len__"):
        total = len(items)  # type: ignore[arg-type]
    with Progress(desc, total, unit, **options) as progress:  # type: ignore[arg-type]
        for item in items:
            yield item
            progress.update(1)
