"""Warm-up before ready: residency (mincore), per-file eviction, sequential reads, and the defaults
that make a pod ready only once a query over the whole index has answered."""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from types import SimpleNamespace

import httpx

from app.corpus import CorpusStore
from app.index import FaissIndex
from app.manifest import CORPUS_DIR, INDEX_FILE
from app.service import Status, warm_up
from app.settings import Settings
from app.warmup import evict, read_into_cache, resident_fraction
from tests.helpers import run_server


def _file(tmp_path: Path, size: int) -> Path:
    path = tmp_path / "blob"
    path.write_bytes(os.urandom(size))
    return path


def test_eviction_and_sequential_reads_move_residency(tmp_path: Path) -> None:
    path = _file(tmp_path, 8 * 1024 * 1024 + 123)
    path.read_bytes()
    assert resident_fraction([path]) > 0.99
    evict(path)
    assert resident_fraction([path]) < 0.5, "posix_fadvise(DONTNEED) should drop the file's clean pages"
    seen: list[tuple[int, int]] = []
    done = read_into_cache([path], lambda d, t: seen.append((d, t)), block=1024 * 1024)
    assert done == path.stat().st_size and seen[-1] == (done, done)
    assert [d for d, _ in seen] == sorted(d for d, _ in seen)
    assert resident_fraction([path]) > 0.99


def test_warm_up_reads_nothing_when_resident_and_everything_when_cold(demo_index: Path, tmp_path: Path) -> None:
    directory = tmp_path / "index"
    shutil.copytree(demo_index, directory)
    index = FaissIndex(directory / INDEX_FILE)
    corpus = CorpusStore(directory / CORPUS_DIR)
    retriever = SimpleNamespace(index=index, corpus=corpus)
    files = [directory / INDEX_FILE, *corpus.files()]
    read_into_cache(files)
    warm = Status()
    warm_up(retriever, warm, step=4096)  # type: ignore[arg-type]
    assert warm.warmup == "done" and warm.warmup_resident is not None and warm.warmup_resident > 0.98
    assert warm.stage == "starting", "nothing to read: no warming stage was entered"
    for path in files:
        evict(path)
    cold = Status()
    warm_up(retriever, cold, step=4096)  # type: ignore[arg-type]
    assert cold.warmup == "done" and cold.warmup_resident is not None and cold.warmup_resident < 0.5
    assert cold.stage.startswith("warming up: reading") and resident_fraction(files) > 0.99
    corpus.close()


def test_defaults_warm_up_before_ready() -> None:
    settings = Settings()
    assert settings.warmup is True and settings.ready_before_warmup is False


def test_health_reports_the_full_index_query_before_ready(demo_index: Path, tmp_path: Path) -> None:
    with run_server(["--index-dir", str(demo_index)], tmp_path) as server:  # the defaults
        health = httpx.get(f"{server.url}/health", timeout=10).json()
    assert health["status"] == "ready" and health["warmup"] == {"state": "done", "progress": 1.0}
    detail = health["warmup_detail"]
    assert detail["full_query_s"] is not None and detail["full_query_s"] >= 0
    assert 0.0 <= detail["resident_at_start"] <= 1.0
