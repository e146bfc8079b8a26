"""The encoder as its own service (`--encoder-url`): a real infinity engine on loopback serving the
bundled MiniLM, the retriever calling it per micro-batch.

Rules guarded here: the remote path returns what the in-process model returns; an outage fails only
the requests that needed the encoder (503, saying so), `/health` follows the outage and recovers,
`/livez` never does; a model of another dimension or another name is refused at startup; an index
pod with a remote encoder never loads torch.
"""

from __future__ import annotations

import asyncio
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path

import faiss
import httpx
import numpy as np
import pytest

from app.demo import labelled_queries
from app.manifest import INDEX_FILE, MANIFEST_FILE, record_files
from tests.helpers import DEMO_LIMIT, RunningServer, run_cli, run_server
from tests.infinity_engine import Engine, infinity_engine

# Scores through the engine differ from in-process ones only by float rounding (another torch/
# transformers build, another batch padding): measured here, max |score diff| 1.2e-7 on these queries.
SCORE_TOLERANCE = 1e-4
# A real engine starts in 15-30 s here: not part of a fast tier.
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def engine(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Engine]:
    with infinity_engine(tmp_path_factory.mktemp("infinity")) as running:
        yield running


@pytest.fixture(scope="module")
def remote_server(
    engine: Engine, demo_index: Path, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[RunningServer]:
    args = ["--index-dir", str(demo_index), "--encoder-url", engine.url]
    with run_server(args, tmp_path_factory.mktemp("remote")) as running:
        yield running


def retrieve(server: RunningServer, queries: list[str], topk: int = 5) -> httpx.Response:
    payload = {"queries": queries, "topk": topk, "return_scores": True}
    return httpx.post(f"{server.url}/retrieve", json=payload, timeout=60)


def metric_value(text: str, series: str) -> float:
    lines = [line for line in text.splitlines() if line.startswith(series + " ")]
    assert lines, f"{series} not exported"
    return float(lines[0].split()[-1])


def ids_and_scores(response: httpx.Response) -> tuple[list[list[str]], np.ndarray]:
    assert response.status_code == 200, response.text
    result = response.json()["result"]
    ids = [[item["document"]["id"] for item in items] for items in result]
    return ids, np.array([[item["score"] for item in items] for items in result])


def test_remote_encoder_returns_the_in_process_ids_and_scores(
    server: RunningServer, remote_server: RunningServer
) -> None:
    queries = [q for q, _ in labelled_queries(DEMO_LIMIT)[:50]] + ["who wrote the aeneid", "jazz"]
    local_ids, local_scores = ids_and_scores(retrieve(server, queries))
    remote_ids, remote_scores = ids_and_scores(retrieve(remote_server, queries))
    np.testing.assert_allclose(remote_scores, local_scores, atol=SCORE_TOLERANCE)
    for position, (got, want) in enumerate(zip(remote_ids, local_ids, strict=True)):
        for rank, (got_id, want_id) in enumerate(zip(got, want, strict=True)):
            # Equal, except where two passages tie to within the tolerance.
            if got_id != want_id:
                gap = abs(local_scores[position][rank] - remote_scores[position][rank])
                assert gap < SCORE_TOLERANCE, (position, rank, got_id, want_id)
    assert sum(got == want for got, want in zip(remote_ids, local_ids, strict=True)) >= len(queries) - 1


def test_remote_encoder_stage_and_error_metrics_are_exported(remote_server: RunningServer) -> None:
    assert retrieve(remote_server, ["Art movement"]).status_code == 200
    text = httpx.get(f"{remote_server.url}/metrics", timeout=10).text
    assert metric_value(text, 'retriever_stage_duration_seconds_count{stage="encode_remote"}') >= 1
    assert metric_value(text, 'retriever_encoder_errors_total{reason="connect"}') == 0
    info = httpx.get(f"{remote_server.url}/info", timeout=10).json()
    assert info["model"]["service"].startswith("http://127.0.0.1:")
    assert info["model"]["name"] == "all-MiniLM-L6-v2"


def test_index_pod_with_remote_encoder_never_loads_torch(remote_server: RunningServer) -> None:
    maps = Path(f"/proc/{remote_server.process.pid}/maps").read_text()
    assert "libtorch" not in maps
    # The in-process path does map it (so the check above can fail).


def _outcomes(responses: list[httpx.Response | Exception]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for response in responses:
        key = type(response).__name__ if isinstance(response, Exception) else str(response.status_code)
        counts[key] = counts.get(key, 0) + 1
    return counts


async def _load(url: str, queries: list[str], seconds: float, concurrency: int = 8) -> list[httpx.Response | Exception]:
    """`concurrency` callers, one query per request, for `seconds` (bounded: at most 2000 requests)."""
    results: list[httpx.Response | Exception] = []
    deadline = time.monotonic() + seconds

    async def caller(offset: int) -> None:
        async with httpx.AsyncClient(timeout=30) as client:
            sent = offset
            while time.monotonic() < deadline and len(results) < 2000:
                try:
                    payload = {"queries": [queries[sent % len(queries)]], "topk": 3}
                    results.append(await client.post(f"{url}/retrieve", json=payload))
                except httpx.HTTPError as exc:
                    results.append(exc)
                sent += concurrency

    await asyncio.gather(*(caller(i) for i in range(concurrency)))
    return results


def test_encoder_outage_fails_only_its_requests_and_recovers(demo_index: Path, tmp_path: Path) -> None:
    queries = [q for q, _ in labelled_queries(DEMO_LIMIT)[:40]]
    with infinity_engine(tmp_path) as engine:
        args = [
            "--index-dir", str(demo_index), "--encoder-url", engine.url,
            "--encoder-unhealthy-after-s", "1", "--encoder-probe-interval-s", "0.3",
            "--encoder-retries", "1", "--encoder-timeout-s", "5",
        ]  # fmt: skip
        with run_server(args, tmp_path) as server:
            before = asyncio.run(_load(server.url, queries, 2.0))
            assert _outcomes(before) == {"200": len(before)}

            engine.stop()  # the engine goes away while requests keep coming
            during = asyncio.run(_load(server.url, queries, 2.5))
            outcomes = _outcomes(during)
            assert set(outcomes) <= {"200", "503"} and outcomes.get("503", 0) > 0, outcomes
            refused = next(r for r in during if isinstance(r, httpx.Response) and r.status_code == 503)
            assert "encoder service unavailable" in refused.json()["detail"]
            assert refused.headers.get("Retry-After") == "1"
            health = httpx.get(f"{server.url}/health", timeout=5)
            assert health.status_code == 503 and health.json()["status"] == "encoder_unavailable"
            assert "unreachable" in health.json()["message"]
            assert httpx.get(f"{server.url}/livez", timeout=5).status_code == 200  # liveness stays up
            # Requests that need no encoder are unaffected.
            assert httpx.get(f"{server.url}/info", timeout=5).status_code == 200

            engine.start()  # the same port again: the pooled client reconnects by itself
            deadline = time.monotonic() + 30
            while httpx.get(f"{server.url}/health", timeout=5).status_code != 200:
                assert time.monotonic() < deadline, "/health did not recover after the engine returned"
                time.sleep(0.2)
            after = asyncio.run(_load(server.url, queries, 2.0))
            assert _outcomes(after) == {"200": len(after)}
            metrics = httpx.get(f"{server.url}/metrics", timeout=10).text
            assert metric_value(metrics, 'retriever_encoder_errors_total{reason="connect"}') > 0
        assert "Traceback" not in server.log()


def _copy_index(demo_index: Path, target: Path) -> Path:
    shutil.copytree(demo_index, target, symlinks=True)
    return target


def _edit_manifest(index_dir: Path, **changes: object) -> None:
    path = index_dir / MANIFEST_FILE
    manifest = json.loads(path.read_text())
    manifest.update(changes)
    path.write_text(json.dumps(manifest))


def test_remote_model_of_another_dimension_is_refused(engine: Engine, demo_index: Path, tmp_path: Path) -> None:
    index_dir = _copy_index(demo_index, tmp_path / "index768")
    count = json.loads((index_dir / MANIFEST_FILE).read_text())["count"]
    vectors = np.random.default_rng(0).standard_normal((count, 768)).astype(np.float32)
    index = faiss.IndexFlatIP(768)
    index.add(vectors)
    (index_dir / INDEX_FILE).unlink()
    faiss.write_index(index, str(index_dir / INDEX_FILE))
    files = json.loads((index_dir / MANIFEST_FILE).read_text())["files"]
    files[INDEX_FILE] = vars(record_files(index_dir, [INDEX_FILE])[INDEX_FILE])
    _edit_manifest(index_dir, dimension=768, files=files)
    result = run_cli("serve", "--port", "0", "--index-dir", str(index_dir), "--encoder-url", engine.url, timeout=120)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "index dimension 768 does not match model all-MiniLM-L6-v2 served by " + engine.url in output
    assert "(dimension 384)" in output and "Traceback" not in output


def test_remote_model_of_another_name_is_refused_unless_declared_the_same(
    engine: Engine, demo_index: Path, tmp_path: Path
) -> None:
    index_dir = _copy_index(demo_index, tmp_path / "renamed")
    _edit_manifest(index_dir, model="intfloat/e5-small-v2")
    result = run_cli("serve", "--port", "0", "--index-dir", str(index_dir), "--encoder-url", engine.url, timeout=120)
    assert result.returncode != 0
    output = result.stdout + result.stderr
    assert "serves model 'all-MiniLM-L6-v2', but the index was built with 'intfloat/e5-small-v2'" in output
    assert "--encoder-same-model" in output and "Traceback" not in output

    args = ["--index-dir", str(index_dir), "--encoder-url", engine.url, "--encoder-same-model"]
    with run_server(args, tmp_path) as server:
        assert retrieve(server, ["Art movement"]).status_code == 200
        assert "differs in name" in server.log()


def test_unreachable_encoder_at_startup_is_a_clear_error(demo_index: Path, tmp_path: Path) -> None:
    from tests.helpers import free_port

    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    result = run_cli(
        "serve", "--port", "0", "--index-dir", str(demo_index), "--encoder-url", url,
        "--encoder-startup-timeout-s", "1", timeout=120,
    )  # fmt: skip
    output = result.stdout + result.stderr
    assert result.returncode != 0
    assert f"--encoder-url {url}: encoder service did not answer within 1s" in output
    assert "Traceback" not in output
