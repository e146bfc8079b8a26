"""Faults a long-running pod meets, each on a real server (under load where it matters): a rotated
token, a corpus store that becomes unreadable, index hot swaps (good and corrupt, one worker and
N). Each prints its figure for docs/faults.md."""

from __future__ import annotations

import asyncio
import json
import os
import shutil
import signal
import threading
import time
from pathlib import Path

import faiss
import httpx

from app.corpus import ROWS_FILE, CorpusStore, CorpusWriter
from app.devtools.server import http_status
from app.engine import Engine
from app.loadclient import LoadResult, run_load
from app.manifest import CORPUS_DIR, INDEX_FILE, Manifest, record_files
from app.settings import Settings
from tests.helpers import run_server

CONCURRENCY = 8


def in_thread(coro) -> tuple[threading.Thread, list[LoadResult]]:
    results: list[LoadResult] = []
    thread = threading.Thread(target=lambda: results.append(asyncio.run(coro)), daemon=True)
    thread.start()
    return thread, results


def test_a_rotated_token_takes_effect_under_load_without_a_restart(demo_index: Path, tmp_path: Path) -> None:
    tokens = tmp_path / "tokens"
    tokens.write_text("old-token\n")
    args = ["--index-dir", str(demo_index), "--auth-tokens-file", str(tokens)]
    with run_server(args, tmp_path) as server:
        # Callers with the new token start before it exists: 401 until the file changes, then 200.
        thread, results = in_thread(
            run_load(server.url, requests=100_000, concurrency=CONCURRENCY, duration=8, token="new-token")
        )
        old_thread, old_results = in_thread(
            run_load(server.url, requests=100_000, concurrency=2, duration=8, token="old-token")
        )
        time.sleep(3)
        staging = tmp_path / "tokens.new"
        staging.write_text("new-token\n")
        os.replace(staging, tokens)  # as a Secret update: a new file in one step
        rotated_at = time.monotonic()
        with httpx.Client(base_url=server.url, timeout=10) as client:
            while time.monotonic() - rotated_at < 10:
                ok = client.post(
                    "/retrieve", json={"queries": ["jazz"]}, headers={"authorization": "Bearer new-token"}
                ).status_code
                if ok == 200:
                    break
                time.sleep(0.05)
        took_s = time.monotonic() - rotated_at
        thread.join(60)
        old_thread.join(60)
        new, old = results[0], old_results[0]
        print(
            f"\ntoken rotation under load: new token accepted {took_s:.2f} s after the file changed; "
            f"new-token statuses {new.statuses}, old-token statuses {old.statuses}"
        )
        assert ok == 200 and took_s < 3
        assert set(new.statuses) <= {"200", "401"} and new.statuses.get("200", 0) > 0
        assert set(old.statuses) <= {"200", "401"} and old.statuses.get("401", 0) > 0
        # After the rotation the old token is refused for good.
        response = httpx.post(
            f"{server.url}/retrieve", json={"queries": ["jazz"]}, headers={"authorization": "Bearer old-token"}
        )
        assert response.status_code == 401
        assert "Traceback" not in server.log()


def test_an_unreadable_corpus_store_fails_only_while_it_lasts(demo_index: Path, tmp_path: Path) -> None:
    directory = Path(shutil.copytree(demo_index, tmp_path / "index"))
    rows = directory / CORPUS_DIR / ROWS_FILE
    whole = rows.read_bytes()
    with (
        run_server(["--index-dir", str(directory)], tmp_path) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        assert client.post("/retrieve", json={"queries": ["jazz"]}).status_code == 200
        os.truncate(rows, len(whole) // 2)  # the disk under the store lost its tail
        try:
            broken = client.post("/retrieve", json={"queries": ["jazz"]})
            assert broken.status_code == 503, broken.text
            assert "shrank" in broken.json()["detail"]
            assert client.get("/livez").status_code == 200  # the process lives on
        finally:
            with open(rows, "r+b") as handle:  # the fault clears: same file, whole again
                handle.write(whole)
        cleared_at = time.monotonic()
        recovered = client.post("/retrieve", json={"queries": ["jazz"], "topk": 2})
        recovered_s = time.monotonic() - cleared_at
        assert recovered.status_code == 200
        assert len(recovered.json()["result"][0]) == 2
    log = server.log()
    assert "Traceback" not in log
    print(
        f"\ncorpus store shrank under a live server: 503 naming the file ({broken.json()['detail']!r}); "
        f"the first request after the file was whole again answered 200 in {recovered_s:.2f} s"
    )


def reversed_copy(source: Path, target: Path) -> Path:
    """Another valid index directory: the same passages in reverse order, each marked "[B]"."""
    shutil.copytree(source, target)
    index = faiss.read_index(str(source / INDEX_FILE))
    vectors = index.reconstruct_n(0, index.ntotal)[::-1].copy()
    flipped = faiss.IndexFlatIP(index.d)
    flipped.add(vectors)
    faiss.write_index(flipped, str(target / INDEX_FILE))
    store = CorpusStore(source / CORPUS_DIR)
    rows = [json.loads(store.row_bytes(i)) for i in range(store.count)][::-1]
    store.close()
    shutil.rmtree(target / CORPUS_DIR)
    writer = CorpusWriter(target / CORPUS_DIR)
    for row in rows:
        row["contents"] = "[B] " + row["contents"]
        writer.add(json.dumps(row, separators=(",", ":")).encode())
    writer.close()
    manifest = Manifest.read(target)
    manifest.files.update(record_files(target, list(manifest.files)))
    manifest.write(target)
    return target


def contents_of(client: httpx.Client) -> str:
    response = client.post("/retrieve", json={"queries": ["jazz"], "topk": 1})
    assert response.status_code == 200, response.text
    return response.json()["result"][0][0]["contents"]


def flip(current: Path, target: Path) -> None:
    """Point the `current` link at `target` atomically, as an operator (or the fetch job) does."""
    staging = current.with_name(current.name + ".new")
    staging.symlink_to(target)
    os.replace(staging, current)


def mapped_paths(pid: int) -> set[str]:
    return {line.split()[-1] for line in Path(f"/proc/{pid}/maps").read_text().splitlines() if "/" in line}


def test_an_index_swapped_under_load_fails_no_request_and_releases_the_old_one(
    demo_index: Path, tmp_path: Path
) -> None:
    first = Path(shutil.copytree(demo_index, tmp_path / "v1"))
    second = reversed_copy(demo_index, tmp_path / "v2")
    current = tmp_path / "current"
    current.symlink_to(first)
    with (
        run_server(["--index-dir", str(current)], tmp_path) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        assert not contents_of(client).startswith("[B]")
        version_before = client.get("/health").json()["index_version"]
        assert str(first / INDEX_FILE) in mapped_paths(server.process.pid)
        thread, results = in_thread(run_load(server.url, requests=100_000, concurrency=CONCURRENCY, duration=10))
        time.sleep(3)
        flip(current, second)  # then ask for the reload
        os.kill(server.process.pid, signal.SIGHUP)
        started = time.monotonic()
        while time.monotonic() - started < 60 and client.get("/health").json().get("reload", {}).get("state") != "done":
            time.sleep(0.1)
        swapped_s = time.monotonic() - started
        thread.join(60)
        result = results[0]
        health = client.get("/health").json()
        assert health["reload"]["state"] == "done", health
        assert health["index_version"] != version_before
        assert contents_of(client).startswith("[B]")
        released = False
        for _ in range(50):  # the old mapping goes with its last reader
            if str(first / INDEX_FILE) not in mapped_paths(server.process.pid):
                released = True
                break
            time.sleep(0.1)
        swaps = float(
            next(
                line.split()[-1]
                for line in client.get("/metrics").text.splitlines()
                if line.startswith('retriever_index_swaps_total{outcome="ok"}')
            )
        )
    print(
        f"\nindex swap under load: {result.requests - result.ok} of {result.requests} requests failed; "
        f"new index serving {swapped_s:.1f} s after SIGHUP; old mapping released: {released}"
    )
    assert result.ok == result.requests, result.statuses
    assert released, "the old index is still mapped"
    assert swaps == 1


def test_a_swap_to_a_corrupt_index_keeps_the_old_one_serving(demo_index: Path, tmp_path: Path) -> None:
    broken = Path(shutil.copytree(demo_index, tmp_path / "broken"))
    with open(broken / INDEX_FILE, "r+b") as handle:
        handle.truncate(1000)
    with (
        run_server(["--index-dir", str(demo_index)], tmp_path) as server,
        httpx.Client(base_url=server.url, timeout=30) as client,
    ):
        before = contents_of(client)
        answer = client.post("/admin/reload", json={"index_dir": str(broken)})
        assert answer.status_code == 202, answer.text
        started = time.monotonic()
        while (
            time.monotonic() - started < 60 and client.get("/health").json().get("reload", {}).get("state") == "loading"
        ):
            time.sleep(0.1)
        health = client.get("/health")
        assert health.status_code == 200
        assert health.json()["reload"]["state"] == "failed"
        assert "index.faiss" in health.json()["reload"]["message"]
        assert contents_of(client) == before
        metrics_text = client.get("/metrics").text
        assert 'retriever_index_swaps_total{outcome="failed"} 1.0' in metrics_text
    assert "reload of" in server.log() and "failed, still serving" in server.log()


def every_worker_serves_the_new_index(url: str, seconds: float = 90) -> bool:
    """Until `seconds` pass, ask on new connections (so every worker is asked) for the "[B]" index."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        seen = set()
        for _ in range(12):
            with httpx.Client(base_url=url, timeout=30) as client:
                seen.add(contents_of(client).startswith("[B]"))
        if seen == {True}:
            return True
        time.sleep(0.5)
    return False


def test_every_worker_swaps_on_one_admin_request(demo_index: Path, tmp_path: Path) -> None:
    first = Path(shutil.copytree(demo_index, tmp_path / "v1"))
    second = reversed_copy(demo_index, tmp_path / "v2")
    current = tmp_path / "current"
    current.symlink_to(first)
    with run_server(["--index-dir", str(current), "--workers", "2"], tmp_path, timeout=300) as server:
        flip(current, second)
        assert httpx.post(f"{server.url}/admin/reload", timeout=30).status_code == 202
        assert every_worker_serves_the_new_index(server.url), "a worker still serves the old index"


def test_reload_signals_during_start_up_neither_end_a_worker_nor_are_lost(demo_index: Path, tmp_path: Path) -> None:
    """SIGHUP reaches a worker that may not have installed its handler yet (its default action ends
    the process), or that is still loading the old link: neither may cost a worker or the reload."""
    first = Path(shutil.copytree(demo_index, tmp_path / "v1"))
    second = reversed_copy(demo_index, tmp_path / "v2")
    current = tmp_path / "current"
    current.symlink_to(first)
    with run_server(["--index-dir", str(current), "--workers", "2"], tmp_path, wait=False) as server:
        # The supervisor installs its SIGHUP handler before it forks anything (before that, a signal
        # would end it here; a container's PID 1 ignores it), and workers spawn from then on.
        children = Path(f"/proc/{server.pid}/task/{server.pid}/children")
        server.wait_until(lambda: bool(children.read_text().split()), timeout=60, interval=0.01)
        deadline = time.monotonic() + 120
        signals, flipped = 0, False
        while not server.every_worker_ready():
            assert time.monotonic() < deadline, f"not ready within 120 s\n{server.log_tail()}"
            assert server.exited() is None, server.log_tail()
            if not flipped and http_status(f"{server.url}/health") == 200:  # one worker serves: flip now
                flip(current, second)
                flipped = True
            os.kill(server.pid, signal.SIGHUP)  # the supervisor passes it to every live worker
            signals += 1
            time.sleep(0.05)
        if not flipped:  # both became ready between two polls: the reload below still has to land
            flip(current, second)
        os.kill(server.pid, signal.SIGHUP)
        assert every_worker_serves_the_new_index(server.url), f"a worker still serves the old index\n{server.log()}"
        restarts = server.metric('retriever_worker_restarts_total{reason="exited"}')
    print(
        f"\n{signals} SIGHUPs during a 2-worker start-up: {restarts:.0f} workers ended; "
        "every worker serves the new link"
    )
    assert restarts == 0, server.log()
    assert "Traceback" not in server.log()


def test_a_reload_asked_during_the_first_load_runs_once_that_load_serves(
    demo_index: Path, tmp_path: Path, monkeypatch
) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    first = Path(shutil.copytree(demo_index, tmp_path / "v1"))
    second = reversed_copy(demo_index, tmp_path / "v2")
    current = tmp_path / "current"
    current.symlink_to(first)

    async def scenario() -> tuple[str, dict]:
        engine = Engine(Settings(index_dir=current, warmup=False))
        await engine.start()
        try:
            assert engine.status.state == "loading"
            flip(current, second)  # the loader thread may already have read the old link
            assert engine.reload() is True
            await engine.wait_ready()
            for _ in range(600):
                if (engine.last_reload or {}).get("state") in ("done", "failed"):
                    break
                await asyncio.sleep(0.1)
            result = await engine.search(["jazz"], 1)
            return json.loads(result.row_bytes(int(result.ids[0][0])))["contents"], dict(engine.last_reload or {})
        finally:
            await engine.stop()

    contents, outcome = asyncio.run(scenario())
    assert outcome.get("state") == "done", outcome
    assert contents.startswith("[B]"), contents
