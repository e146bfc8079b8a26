"""Long work reports progress: periodic log lines (percentage, rate, ETA) when there is no terminal."""

from __future__ import annotations

import io
import json
import logging
import re
from pathlib import Path

import pytest

from app.corpus import ensure_corpus_store
from app.progress import Progress, track
from tests.helpers import run_cli

LINE = re.compile(r"^(?P<desc>.+?): (?P<pct>\d+\.\d)% \(.+ of .+\), (?P<rate>[\d.,]+ \S+)/s, ETA (?P<eta>\d+:\d\d)$")


class FakeClock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def progress_lines(caplog: pytest.LogCaptureFixture) -> list[str]:
    return [r.getMessage() for r in caplog.records if r.name == "retriever.progress"]


def test_without_a_terminal_progress_is_log_lines_with_percentage_rate_and_eta(
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, logger="retriever.progress")
    clock = FakeClock()
    stream = io.StringIO()  # not a terminal: "auto" must choose log lines, and write no bar to it
    with Progress("hashing", total=100 * 2**20, unit="B", interval=10, stream=stream, clock=clock) as progress:
        assert progress.mode == "log"
        for _ in range(100):  # 1 MiB every second for 100 s
            clock.now += 1
            progress.update(2**20)
    assert stream.getvalue() == ""
    lines = progress_lines(caplog)
    periodic, final = lines[:-1], lines[-1]
    # Rate-limited: one line per 10 s of work, not one per update.
    assert len(periodic) == 10
    parsed = [LINE.match(line) for line in periodic]
    assert all(parsed), periodic
    assert [float(m["pct"]) for m in parsed] == [10.0 * k for k in range(1, 11)]
    assert {m["rate"] for m in parsed} == {"1.0 MiB"}
    assert parsed[0]["eta"] == "1:30" and parsed[4]["eta"] == "0:50"
    assert final == "hashing: done, 100.0% (100.0 MiB of 100.0 MiB), 1.0 MiB/s, in 1:40"


def test_updates_faster_than_the_interval_log_nothing_until_it_passes(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="retriever.progress")
    clock = FakeClock()
    progress = Progress("rows", total=None, unit="rows", mode="log", interval=5, clock=clock)
    for _ in range(1000):  # 1000 updates in 4.995 s
        clock.now += 0.004995
        progress.update(1)
    assert progress_lines(caplog) == []
    clock.now = 5.0
    progress.update(1)
    assert progress_lines(caplog) == ["rows: 1,001 rows, 200 rows/s"]
    with pytest.raises(RuntimeError), progress:
        raise RuntimeError("interrupted")
    assert progress_lines(caplog)[-1] == "rows: stopped, 1,001 rows, 200 rows/s, in 0:05"


def test_on_a_terminal_progress_is_a_bar_and_fractions_reach_the_callback() -> None:
    class Terminal(io.StringIO):
        def isatty(self) -> bool:
            return True

    fractions: list[float] = []
    stream = Terminal()
    items = list(track(range(4), "steps", stream=stream, on_fraction=fractions.append))
    assert items == [0, 1, 2, 3]
    assert fractions == [0.25, 0.5, 0.75, 1.0]
    assert "steps: 100%" in stream.getvalue()


def test_serve_time_corpus_conversion_logs_its_progress(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="retriever.progress")
    corpus = tmp_path / "passages.jsonl"
    corpus.write_text("".join(json.dumps({"id": str(i), "contents": f'"T{i}"\nText {i}'}) + "\n" for i in range(50)))
    ensure_corpus_store(corpus, tmp_path / "data")
    lines = progress_lines(caplog)
    assert len(lines) == 1 and lines[0].startswith("converting passages.jsonl: done, 100.0% ("), lines


def test_retriever_verify_reports_hashing_progress_on_stderr(tmp_path: Path) -> None:
    out = tmp_path / "idx"
    corpus = tmp_path / "c.jsonl"
    corpus.write_text("".join(json.dumps({"id": str(i), "contents": f'"T{i}"\nText {i}'}) + "\n" for i in range(8)))
    built = run_cli("build", "--corpus", str(corpus), "--out", str(out))
    assert built.returncode == 0, built.stderr
    assert "build: encoding passages: done, 100.0% (" in built.stderr
    verified = run_cli("verify", str(out))
    assert verified.returncode == 0, verified.stderr
    # stderr is a pipe here, as in a pod: log lines, no bar.
    assert "verify: sha256: done, 100.0% (" in verified.stderr
    assert "\r" not in verified.stderr + built.stderr
