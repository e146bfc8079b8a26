"""The exported encoder runtimes give torch's embeddings: cosine >= 0.9999 and the same top-10 passages."""

from __future__ import annotations

import shutil
from pathlib import Path

import faiss
import httpx
import numpy as np
import pytest

from app.demo import labelled_queries
from app.encoder_onnx import (
    ONNX_CONFIG,
    ONNX_DIR,
    OnnxEncoderError,
    OnnxRuntimeEncoder,
    OpenVinoEncoder,
    export_onnx,
)
from app.manifest import INDEX_FILE
from tests.helpers import run_cli, run_server

RUNTIMES = {"onnx": OnnxRuntimeEncoder, "openvino": OpenVinoEncoder}


@pytest.fixture(scope="module")
def exported(tmp_path_factory: pytest.TempPathFactory, encoder) -> Path:
    return export_onnx(encoder.name, tmp_path_factory.mktemp("export"), normalize=True)


@pytest.fixture(scope="module")
def queries() -> list[str]:
    return [query for query, _ in labelled_queries()][:300]


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_exported_runtime_matches_torch_embeddings(runtime: str, exported: Path, encoder, queries: list[str]) -> None:
    expected = encoder.encode(queries)
    got = RUNTIMES[runtime](exported).encode(queries)
    assert got.shape == expected.shape and got.dtype == np.float32
    cosine = (got * expected).sum(axis=1) / (np.linalg.norm(got, axis=1) * np.linalg.norm(expected, axis=1))
    assert cosine.min() >= 0.9999, f"worst cosine {cosine.min():.6f} at {queries[int(cosine.argmin())]!r}"


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_exported_runtime_finds_the_same_top10(
    runtime: str, exported: Path, encoder, queries: list[str], demo_index: Path
) -> None:
    index = faiss.read_index(str(demo_index / INDEX_FILE))
    _, expected = index.search(encoder.encode(queries), 10)
    _, got = index.search(RUNTIMES[runtime](exported).encode(queries), 10)
    differing = [queries[i] for i in range(len(queries)) if list(got[i]) != list(expected[i])]
    assert not differing, f"{len(differing)} of {len(queries)} queries rank differently, e.g. {differing[:3]}"


def test_exported_runtime_applies_the_query_prefix(exported: Path, encoder) -> None:
    plain = OnnxRuntimeEncoder(exported).encode(["query: jazz musicians"])
    prefixed = OnnxRuntimeEncoder(exported, prefix="query: ").encode(["jazz musicians"])
    np.testing.assert_allclose(plain, prefixed, atol=1e-6)


def test_a_missing_export_names_the_command_that_makes_it(tmp_path: Path) -> None:
    with pytest.raises(OnnxEncoderError, match="retriever export-onnx"):
        OnnxRuntimeEncoder(tmp_path / ONNX_DIR)


def test_an_unreadable_export_config_is_a_clear_error(tmp_path: Path) -> None:
    (tmp_path / ONNX_CONFIG).write_text("{not json")
    with pytest.raises(OnnxEncoderError, match="unreadable"):
        OnnxRuntimeEncoder(tmp_path)


@pytest.fixture(scope="module")
def exported_index(tmp_path_factory: pytest.TempPathFactory, demo_index: Path, encoder) -> Path:
    """A copy of the demo index directory with its model exported, as `retriever export-onnx` leaves it."""
    directory = Path(shutil.copytree(demo_index, tmp_path_factory.mktemp("exported") / "index"))
    result = run_cli("export-onnx", str(directory), timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "worst cosine" in result.stdout
    return directory


@pytest.mark.parametrize("runtime", sorted(RUNTIMES))
def test_a_server_on_the_exported_runtime_answers_as_the_torch_one(
    runtime: str, exported_index: Path, tmp_path: Path, queries: list[str]
) -> None:
    sample = {"queries": queries[:40], "topk": 10, "return_scores": True}
    answers = {}
    for name in ("torch", runtime):
        args = ["--index-dir", str(exported_index), "--encoder-runtime", name]
        (tmp_path / name).mkdir()
        with run_server(args, tmp_path / name) as server:
            info = httpx.get(f"{server.url}/info", timeout=10).json()
            assert info["model"].get("runtime", "torch") == name
            answers[name] = httpx.post(f"{server.url}/retrieve", json=sample, timeout=60).json()["result"]
    for expected, got in zip(answers["torch"], answers[runtime], strict=True):
        assert [hit["document"]["id"] for hit in got] == [hit["document"]["id"] for hit in expected]
        assert [hit["score"] for hit in got] == pytest.approx([hit["score"] for hit in expected], abs=1e-4)


def test_serving_on_onnx_without_an_export_says_how_to_make_one(demo_index: Path, tmp_path: Path) -> None:
    args = ["--index-dir", str(demo_index), "--encoder-runtime", "onnx"]
    with run_server(args, tmp_path, wait=False) as server:
        server.process.wait(timeout=180)
        log = server.log()
    assert server.process.returncode == 3
    assert "retriever export-onnx" in log and "Traceback" not in log


def test_build_can_export_the_model_as_it_builds(tmp_path: Path) -> None:
    corpus = tmp_path / "corpus.jsonl"
    assert run_cli("demo-corpus", str(corpus), "--limit", "20").returncode == 0
    out = tmp_path / "index"
    result = run_cli("build", "--corpus", str(corpus), "--out", str(out), "--export-onnx", "--no-progress")
    assert result.returncode == 0, result.stderr[-2000:]
    config = OnnxRuntimeEncoder(out / ONNX_DIR).config
    assert config.dimension == 384 and config.pooling == "mean" and config.normalize is True
