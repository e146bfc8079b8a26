"""Faults a long-running pod meets, each under load on a real server: a rotated token and a corpus
store that becomes unreadable. Each prints its figure for docs/faults.md."""

from __future__ import annotations

import asyncio
import os
import shutil
import threading
import time
from pathlib import Path

import httpx

from app.corpus import ROWS_FILE
from app.loadgen import LoadResult, run_load
from app.manifest import CORPUS_DIR
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
        recovered = client.post("/retrieve", json={"queries": ["jazz"], "topk": 2})
        assert recovered.status_code == 200
        assert len(recovered.json()["result"][0]) == 2
    log = server.log()
    assert "Traceback" not in log
    print("\ncorpus store shrank under a live server: 503 naming the file; 200 again once the file is whole")
