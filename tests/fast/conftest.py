"""Fast tier: the scheduler and the HTTP face in this process, in seconds.

No model and no subprocess: a deterministic fake encoder (a fixed random vector per text) and a
real FAISS Flat index of ROWS rows built here, over a real corpus store. A query equal to a
passage's text finds that passage first, with score 1.
"""

from __future__ import annotations

import zlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import faiss
import numpy as np
import pytest

from app.corpus import CorpusStore, CorpusWriter
from app.index import FaissIndex
from app.lanes import Helpers

ROWS = 100
DIM = 16


def passage_text(row: int) -> str:
    return f"passage number {row}"


class FakeEncoder:
    """Implements app.backends.Encoder: each text maps to a fixed unit vector (seeded by its CRC)."""

    name = "fake-encoder"
    dimension = DIM
    max_length = 64

    def __init__(self) -> None:
        self.calls: list[list[str]] = []

    def encode(self, texts: list[str], helpers: Helpers | None = None) -> np.ndarray:
        self.calls.append(list(texts))
        vectors = np.stack([np.random.default_rng(zlib.crc32(t.encode())).standard_normal(DIM) for t in texts])
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
        return np.ascontiguousarray(vectors, dtype=np.float32)

    def describe(self) -> dict[str, Any]:
        return {"name": self.name, "dimension": self.dimension, "max_length": self.max_length}


@pytest.fixture(scope="session")
def tiny_index_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """index.faiss (Flat, inner product) and a corpus store of ROWS rows, row i = passage_text(i)."""
    directory = tmp_path_factory.mktemp("tiny-index")
    vectors = FakeEncoder().encode([passage_text(row) for row in range(ROWS)])
    index = faiss.IndexFlatIP(DIM)
    index.add(vectors)
    faiss.write_index(index, str(directory / "index.faiss"))
    writer = CorpusWriter(directory / "corpus")
    for row in range(ROWS):
        writer.add(f'{{"id":"{row}","contents":"\\"Title {row}\\"\\n{passage_text(row)}"}}'.encode())
    writer.close()
    return directory


@pytest.fixture()
def parts(tiny_index_dir: Path) -> Iterator[tuple[FakeEncoder, FaissIndex, CorpusStore]]:
    corpus = CorpusStore(tiny_index_dir / "corpus")
    yield FakeEncoder(), FaissIndex(tiny_index_dir / "index.faiss"), corpus
    corpus.close()


@pytest.fixture()
def anyio_backend() -> str:
    return "asyncio"


@pytest.fixture(autouse=True)
def _one_http_inprogress_gauge() -> Iterator[None]:
    """Each app's instrumentator registers `http_requests_inprogress` in the default registry
    (whatever registry it is given) and fails on the second app of a process: drop it after a test."""
    yield
    from prometheus_client import REGISTRY

    collector = REGISTRY._names_to_collectors.get("http_requests_inprogress")
    if collector is not None:
        REGISTRY.unregister(collector)
