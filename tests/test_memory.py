"""Memory: mapped indexes for every built type, one shared mapping across workers, warm-up, plan.

Functional checks only (no timings): the figures live in `make bench-memory` (bench/memory.py).
Servers run on private copies of the demo index, so no other process maps the same file and the
PSS split between workers is exactly theirs.
"""

from __future__ import annotations

import asyncio
import dataclasses
import json
import math
import re
import shutil
import time
from pathlib import Path
from types import SimpleNamespace

import faiss
import httpx
import pytest

from app.corpus import CORPUS_DIR_FILES, CorpusStore
from app.demo import labelled_queries
from app.index import FaissIndex, _file_is_mapped
from app.manifest import CORPUS_DIR, INDEX_FILE, Manifest, record_files
from app.procstat import file_mappings, maps_file, process_tree
from app.warmup import evict
from tests.helpers import DEMO_LIMIT, ROOT, run_cli, run_server

GIB = 1024**3
PAGE = 4096


def copy_index(source: Path, target: Path) -> Path:
    """A private copy (new inodes): its pages are mapped by the processes under test only."""
    shutil.copytree(source, target)
    return target


def build_variant(demo: Path, target: Path, factory: str) -> Path:
    """The demo's vectors re-indexed as `factory`, with the demo's corpus store and a manifest."""
    flat = faiss.read_index(str(demo / INDEX_FILE))
    vectors = flat.reconstruct_n(0, flat.ntotal)
    index = faiss.index_factory(flat.d, factory, faiss.METRIC_INNER_PRODUCT)
    index.train(vectors)
    index.add(vectors)
    target.mkdir(parents=True)
    faiss.write_index(index, str(target / INDEX_FILE))
    shutil.copytree(demo / CORPUS_DIR, target / CORPUS_DIR)
    names = [INDEX_FILE] + [f"{CORPUS_DIR}/{name}" for name in CORPUS_DIR_FILES]
    manifest = dataclasses.replace(Manifest.read(demo), index_factory=factory, files=record_files(target, names))
    manifest.write(target)
    return target


def get_json(url: str) -> tuple[int, dict]:
    response = httpx.get(url, timeout=10)  # a new connection each call: any worker may answer
    return response.status_code, response.json()


def worker_infos(url: str, workers: int, timeout: float = 180.0) -> dict[int, dict]:
    """/info of every worker: polled on fresh connections until `workers` distinct pids answered 200."""
    seen: dict[int, dict] = {}
    deadline = time.monotonic() + timeout
    while len(seen) < workers and time.monotonic() < deadline:
        try:
            status, body = get_json(f"{url}/info")
        except httpx.HTTPError:
            status, body = 0, {}
        if status == 200:
            seen[body["pid"]] = body
        else:
            time.sleep(0.1)
    assert len(seen) == workers, f"only {len(seen)} of {workers} workers answered /info within {timeout}s"
    return seen


@pytest.fixture(scope="module")
def labelled() -> tuple[str, int]:
    return labelled_queries(DEMO_LIMIT)[0]


@pytest.mark.parametrize(
    ("factory", "type_name"),
    [("HNSW32", "IndexHNSWFlat"), ("IVF4,Flat", "IndexIVFFlat"), ("SQ8", "IndexScalarQuantizer")],
)
def test_info_reports_mmap_for_built_index_types(
    demo_index: Path, tmp_path: Path, factory: str, type_name: str, labelled: tuple[str, int]
) -> None:
    # Flat (the demo index itself) is covered, on two workers, by test_two_workers_share_one_index_mapping.
    directory = build_variant(demo_index, tmp_path / "index", factory)
    with run_server(["--index-dir", str(directory), "--nprobe", "4"], tmp_path) as server:
        status, info = get_json(f"{server.url}/info")
        assert status == 200
        assert info["index"]["type"] == type_name
        assert info["index"]["mmap"] is True, info["index"]["load"]
        assert "memory-mapped" in info["index"]["load"]
        # What /info says is what the process holds: the index file is in its memory map.
        assert maps_file(info["pid"], directory / INDEX_FILE)
        query, row = labelled
        answer = httpx.post(f"{server.url}/retrieve", json={"queries": [query], "topk": 3}, timeout=60)
        assert answer.status_code == 200
        assert str(row) in [doc["id"] for doc in answer.json()["result"][0]]


def test_mmap_off_loads_into_memory_and_says_so(demo_index: Path, tmp_path: Path) -> None:
    path = copy_index(demo_index, tmp_path / "index") / INDEX_FILE
    index = FaissIndex(path, use_mmap=False)
    assert index.load.mapped is False
    assert "mmap off" in index.load.note
    assert not _file_is_mapped(path)
    mapped = FaissIndex(path, use_mmap=True)
    assert mapped.load.mapped is True and _file_is_mapped(path)


def test_two_workers_share_one_index_mapping(demo_index: Path, tmp_path: Path, labelled: tuple[str, int]) -> None:
    directory = copy_index(demo_index, tmp_path / "index")
    index_path = (directory / INDEX_FILE).resolve()
    rows_path = (directory / CORPUS_DIR / "corpus.bin").resolve()
    with run_server(["--index-dir", str(directory), "--workers", "2"], tmp_path) as server:
        infos = worker_infos(server.url, 2)
        tree = process_tree(server.process.pid)
        assert set(infos) <= set(tree), f"workers {set(infos)} are not processes of the server {tree}"
        for info in infos.values():
            assert info["index"]["type"] == "IndexFlatIP" and info["index"]["mmap"] is True

        # Both workers answer /retrieve: a worker's corpus mapping gains resident pages only when it
        # renders a result (loading and the self-test query never read the corpus).
        query, _ = labelled

        async def burst() -> list[int]:
            async def one() -> int:
                async with httpx.AsyncClient(timeout=60) as client:  # own connection: any worker
                    response = await client.post(f"{server.url}/retrieve", json={"queries": [query], "topk": 3})
                    return response.status_code

            return await asyncio.gather(*(one() for _ in range(8)))

        def served(pid: int) -> bool:
            return file_mappings(pid, {str(rows_path)}).get(str(rows_path), {}).get("Rss", 0) > 0

        for _ in range(20):
            assert set(asyncio.run(burst())) == {200}
            if all(served(pid) for pid in infos):
                break
        assert all(served(pid) for pid in infos), "one worker never answered a /retrieve"

        # One copy: each worker has every page of the index resident (its self-test scanned it all)
        # and is charged half of it (PSS); the sum is the file, not twice the file.
        size = index_path.stat().st_size
        pages = math.ceil(size / PAGE) * PAGE
        mapped = {pid: file_mappings(pid, {str(index_path)})[str(index_path)] for pid in infos}
        for pid, usage in mapped.items():
            assert usage["Rss"] >= pages - PAGE, f"worker {pid}: only {usage['Rss']} of {pages} bytes resident"
            assert abs(usage["Pss"] - usage["Rss"] / 2) <= 2 * 1024, f"worker {pid}: {usage} is not half shared"
        assert sum(u["Pss"] for u in mapped.values()) <= 1.05 * pages


def poll_health(url: str, until: str, timeout: float = 180.0) -> list[tuple[int, dict]]:
    """Every /health answer until one has status `until` (inclusive)."""
    seen: list[tuple[int, dict]] = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            status, body = get_json(f"{url}/health")
        except httpx.HTTPError:
            time.sleep(0.05)
            continue
        seen.append((status, body))
        if body.get("status") == until:
            return seen
        time.sleep(0.05)
    raise AssertionError(f"/health never reported {until!r} within {timeout}s: {seen[-3:]}")


def test_ready_after_warmup_waits_for_it(demo_index: Path, tmp_path: Path) -> None:
    directory = copy_index(demo_index, tmp_path / "index")
    args = ["--index-dir", str(directory), "--warmup", "--ready-before-warmup", "false"]
    with run_server(args, tmp_path, wait=False) as server:
        seen = poll_health(server.url, "ready")
        *before, (status, ready) = seen
        assert status == 200
        assert ready["warmup"] == {"state": "done", "progress": 1.0}
        for code, body in before:  # not ready until the warm-up is over, and the body says why
            assert code == 503 and body["status"] == "loading"
            # after the warm-up, one query over the whole index still comes before ready
            assert body["warmup"]["state"] in ("off", "running") or body["stage"] == "one query over the whole index"
        status, info = get_json(f"{server.url}/info")
        assert status == 200 and info["warmup"] == {"state": "done", "progress": 1.0}


def test_ready_before_warmup_reports_progress_until_done(demo_index: Path, tmp_path: Path) -> None:
    directory = copy_index(demo_index, tmp_path / "index")
    with run_server(["--index-dir", str(directory), "--warmup"], tmp_path) as server:
        status, health = get_json(f"{server.url}/health")
        assert status == 200 and health["warmup"]["state"] in ("running", "done")
        deadline = time.monotonic() + 60
        while health["warmup"]["state"] == "running" and time.monotonic() < deadline:
            time.sleep(0.1)
            _, health = get_json(f"{server.url}/health")
        assert health["warmup"] == {"state": "done", "progress": 1.0}
        _, info = get_json(f"{server.url}/info")
        assert info["warmup"] == {"state": "done", "progress": 1.0}
        metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
        assert re.search(r"^retriever_warmup_progress 1\.0$", metrics, re.M), "one worker: metrics must render"
        assert re.search(r"^retriever_ready 1\.0$", metrics, re.M)


class Recorder:
    """Stands in for the warm-up gauge: snapshots what /health would answer at every update."""

    def __init__(self, status: object) -> None:
        self.status = status
        self.snapshots: list[dict] = []

    def set(self, value: float) -> None:
        body = self.status.as_dict()  # type: ignore[attr-defined]
        self.snapshots.append({"gauge": value, "warmup": body["warmup"], "stage": body["stage"], "p": body["progress"]})


@pytest.mark.parametrize("state", ["loading", "ready"])
def test_warm_up_progress_is_what_health_shows(
    demo_index: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, state: str
) -> None:
    from app import service

    directory = copy_index(demo_index, tmp_path / "index")
    retriever = SimpleNamespace(index=FaissIndex(directory / INDEX_FILE), corpus=CorpusStore(directory / CORPUS_DIR))
    status = service.Status(state=state, stage="serving" if state == "ready" else "self-test query")
    recorder = Recorder(status)
    monkeypatch.setattr(service.metrics, "WARMUP_PROGRESS", recorder)
    for path in [directory / INDEX_FILE, *retriever.corpus.files()]:  # cold: resident pages are not read again
        evict(path)
    service.warm_up(retriever, status, step=16 * PAGE)  # type: ignore[arg-type]

    values = [snap["warmup"]["progress"] for snap in recorder.snapshots]
    assert values == sorted(values), "progress went backwards"
    assert len({v for v in values if 0 < v < 1}) >= 5, f"too few intermediate steps: {values}"
    assert all(snap["warmup"]["state"] == "running" for snap in recorder.snapshots[:-1])
    assert [snap["gauge"] for snap in recorder.snapshots][1:-1] == pytest.approx(values[1:-1], abs=1e-3)
    assert status.as_dict()["warmup"] == {"state": "done", "progress": 1.0}
    stages = {snap["stage"] for snap in recorder.snapshots[1:]}
    if state == "loading":  # readiness waits for the warm-up: it is the loading stage, with its progress
        assert len(stages) == 1 and stages.pop().startswith("warming up")
        assert [snap["p"] for snap in recorder.snapshots[1:-1]] == values[1:-1]
    else:  # already serving: the warm-up runs beside it and leaves the stage alone
        assert stages == {"serving"}
    retriever.corpus.close()


def test_plan_matches_the_file_sizes(demo_index: Path) -> None:
    index_bytes = (demo_index / INDEX_FILE).stat().st_size
    corpus_bytes = sum((demo_index / CORPUS_DIR / name).stat().st_size for name in CORPUS_DIR_FILES)
    done = run_cli("plan", str(demo_index), "--workers", "3", "--json")
    assert done.returncode == 0, done.stderr
    plan = json.loads(done.stdout)
    assert plan["index_bytes"] == index_bytes
    assert plan["corpus_bytes"] == corpus_bytes
    assert plan["index_gib"] == math.ceil(index_bytes / GIB * 100) / 100
    assert plan["corpus_gib"] == math.ceil(corpus_bytes / GIB * 100) / 100
    terms = plan["index_gib"] + plan["corpus_gib"] + plan["model_gib"] + plan["headroom_gib"]
    assert plan["memory_gib"] == math.ceil(round(terms + 3 * plan["per_worker_overhead_gib"], 6))
    text = run_cli("plan", str(demo_index), "--workers", "3").stdout
    index_line = re.search(r"^index\s+([0-9.]+) GiB\s+(\S+)", text, re.M)
    corpus_line = re.search(r"^corpus\s+([0-9.]+) GiB\s+(\S+)", text, re.M)
    total_line = re.search(r"^pod memory\s+([0-9]+) GiB", text, re.M)
    assert index_line and corpus_line and total_line, text
    assert float(index_line.group(1)) == plan["index_gib"] and index_line.group(2) == str(demo_index / INDEX_FILE)
    assert float(corpus_line.group(1)) == plan["corpus_gib"] and corpus_line.group(2) == str(demo_index / CORPUS_DIR)
    assert int(total_line.group(1)) == plan["memory_gib"]


def test_plan_on_the_benchmark_index_if_built() -> None:
    directory = ROOT / ".cache" / "bench-memory" / "index"
    if not (directory / "manifest.json").is_file():
        pytest.skip("no benchmark index (make bench-memory builds it)")
    one = json.loads(run_cli("plan", str(directory), "--json").stdout)
    four = json.loads(run_cli("plan", str(directory), "--workers", "4", "--json").stdout)
    assert one["index_bytes"] == (directory / INDEX_FILE).stat().st_size >= 2 * GIB
    assert one["index_gib"] >= 2.0
    # The mapped index and corpus count once: 3 more workers add 3 overheads, not 3 more indexes.
    extra = four["memory_gib"] - one["memory_gib"]
    assert abs(extra - 3 * one["per_worker_overhead_gib"]) <= 1, (one["text"], four["text"])
