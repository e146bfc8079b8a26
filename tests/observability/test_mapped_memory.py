"""The memory series on a warmed, memory-mapped index, as Prometheus scrapes them.

A memory limit must hold the anonymous memory; the pages of a mapped index are page cache the kernel
reclaims. So the gauges split PSS into anonymous and file-mapped pages, and the recording rule the
RetrieverMemoryNearLimit alert reads (`namespace_pod:retriever_memory_bytes:max`) takes the anonymous
sum where cAdvisor's container_memory_rss is not scraped (as here). This runs a real server (two
workers, the demo index mapped and pre-faulted before ready) scraped every second by a real Prometheus
with the real rules, and checks the split through PromQL and against /proc.
"""

from __future__ import annotations

import shutil
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import obs_harness as h
import pytest

from app import procstat
from app.devtools.server import ServerProcess

pytestmark = pytest.mark.slow

WORKERS = 2
ANON = "sum(retriever_process_anonymous_memory_bytes)"
RSS = "sum(retriever_process_resident_memory_bytes)"
FILE_MAPPED = "sum(retriever_process_file_mapped_bytes)"
RECORDED = "sum(namespace_pod:retriever_memory_bytes:max)"


class MappedStack:
    def __init__(self, service: ServerProcess, prometheus: h.Prometheus, index_file: Path) -> None:
        self.service = service
        self.prometheus = prometheus
        self.index_file = index_file

    def value(self, expr: str, at: float | None = None) -> float:
        values = h.finite_values(self.prometheus.query(expr, at=at))
        assert len(values) == 1, f"{expr} at {at}: {values}"
        return values[0]

    def workers(self) -> list[int]:
        return [pid for pid in procstat.descendants(self.service.pid) if procstat.maps_file(pid, self.index_file)]


@pytest.fixture(scope="module")
def mapped_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MappedStack]:
    if not h.prometheus_binary():
        pytest.fail("prometheus not found: run `make tools-observability`")
    retriever = Path(sys.executable).parent / "retriever"
    if not retriever.exists():
        pytest.fail(f"{retriever} missing: run `make install`")
    from app.demo import ensure_demo_index

    workdir = tmp_path_factory.mktemp("mapped")
    # A private copy: PSS splits a page among every process mapping it, servers of other tests included.
    index_dir = Path(shutil.copytree(ensure_demo_index(h.REPO / ".cache", 300, progress=False), workdir / "index"))
    service = ServerProcess(
        [
            "--index-dir",
            str(index_dir),
            "--workers",
            str(WORKERS),
            "--mmap",
            "true",
            "--warmup",
            "true",
            "--ready-before-warmup",
            "false",
            "--log-level",
            "warning",
        ],
        workdir / "retriever.log",
        executable=[str(retriever)],
    )
    prometheus = h.Prometheus(workdir / "prometheus", [f"127.0.0.1:{service.port}"], rule_files=[h.RULES_FILE])
    try:
        service.start()
        service.wait_ready(timeout=600, interval=0.3)
        # some searches, so the workers hold what serving holds (model activations, corpus pages)
        for i in range(20):
            resp = httpx.post(f"{service.url}/retrieve", json={"queries": [f"query {i}"], "topk": 3}, timeout=60)
            assert resp.status_code == 200, resp.text
        prometheus.start()
        # every worker sampled (the sampler runs in each worker) and the rule evaluated at least twice
        prometheus.wait_for(f"count(retriever_process_anonymous_memory_bytes) >= {WORKERS}", timeout=60)
        prometheus.wait_for("count_over_time(namespace_pod:retriever_memory_bytes:max[1m]) >= 2", timeout=60)
        yield MappedStack(service, prometheus, index_dir / "index.faiss")
    finally:
        prometheus.stop()
        service.stop(reap_tree=True)


def test_anonymous_memory_is_below_the_resident_set(mapped_stack: MappedStack) -> None:
    anon, rss = mapped_stack.value(ANON), mapped_stack.value(RSS)
    print(f"\nanonymous {anon / 1e6:.0f} MB, RSS {rss / 1e6:.0f} MB (sums over {WORKERS} workers)")
    assert 0 < anon < rss


def test_the_mapped_index_is_counted_in_file_pages_not_anonymous(mapped_stack: MappedStack) -> None:
    index_file = mapped_stack.index_file.resolve()
    workers = mapped_stack.workers()
    assert len(workers) == WORKERS, f"workers mapping {index_file}: {workers}"
    # warmed before ready: the whole file is resident, its pages shared by the workers (PSS sums to it)
    mapped = [procstat.file_mappings(pid, {str(index_file)}).get(str(index_file), {}) for pid in workers]
    index_pss = sum(mapping.get("Pss", 0) for mapping in mapped)
    size = index_file.stat().st_size
    file_mapped = mapped_stack.value(FILE_MAPPED)
    print(f"\nindex {size} B, its mapped PSS {index_pss} B, file-mapped gauge sum {file_mapped / 1e6:.1f} MB")
    assert all(mapping.get("Rss", 0) >= size * 0.95 for mapping in mapped), f"not warmed in every worker: {mapped}"
    assert index_pss >= size * 0.95, "the index's pages are shared with processes other than the workers"
    assert file_mapped >= size


def test_the_memory_recording_rule_reads_anonymous_memory_not_rss(mapped_stack: MappedStack) -> None:
    """Without cAdvisor the rule falls back to the anonymous sum: at the instant it was evaluated it
    equals that sum (read the same way) and is well below the RSS sum."""
    prom = mapped_stack.prometheus
    (sample,) = prom.query("timestamp(namespace_pod:retriever_memory_bytes:max)")["result"]
    evaluated_at = float(sample["value"][1])
    recorded = mapped_stack.value(RECORDED, at=evaluated_at)
    anon = mapped_stack.value(ANON, at=evaluated_at)
    rss = mapped_stack.value(RSS, at=evaluated_at)
    print(f"\nrecorded {recorded / 1e6:.1f} MB, anonymous {anon / 1e6:.1f} MB, RSS {rss / 1e6:.1f} MB")
    # a scrape landing between the rule's evaluation and this read may move the anonymous sum a little
    assert recorded == pytest.approx(anon, rel=0.02)
    assert recorded < rss * 0.9, "the rule reads something as large as the RSS"
    assert time.time() - evaluated_at < 120
