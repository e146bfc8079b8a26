"""The exported encoder runtimes give torch's embeddings: cosine >= 0.9999 and the same top-10 passages."""

from __future__ import annotations

from pathlib import Path

import faiss
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
