"""The two backend interfaces the engine searches with: an encoder and a vector index.

`app.encoder.SentenceTransformerEncoder` and `app.index.FaissIndex` implement them; another
backend (a remote encoder, an ONNX runtime, a GPU exact-search index) implements the same
methods and is handed to `app.engine.Engine` (see its docstring for where loading chooses one).

`helpers` is the compute lane's helper threads for the batch being run (`app.lanes.Helpers`), or
None outside a batching lane: a backend may split its work between them (`helpers.map`) or ignore
them (a GPU or remote backend has nothing to split on the CPU).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

if TYPE_CHECKING:
    from app.lanes import Helpers


class Encoder(Protocol):
    """Texts -> float32 embeddings, one row per text, in order."""

    name: str  # shown in /info and the retriever_info metric
    dimension: int

    @property
    def max_length(self) -> int:
        """Tokens read per query (longer ones are truncated); shown in /info."""
        ...

    def encode(self, texts: list[str], helpers: Helpers | None = None) -> np.ndarray:
        """(len(texts), dimension) float32, C-contiguous."""
        ...

    def describe(self) -> dict[str, Any]:
        """The `model` section of /info."""
        ...


class VectorIndex(Protocol):
    """Read-only nearest-neighbour search over `count` vectors of `dimension` floats."""

    count: int
    dimension: int
    metric: str  # "ip" or "l2"; must agree with the manifest
    nbytes: int  # bytes it occupies (file or device); the retriever_index_bytes metric
    type_name: str  # e.g. IndexFlatIP; shown in /info and the retriever_info metric

    @property
    def mapped(self) -> bool:
        """True when its pages are a shared file mapping (warm-up then reads the file)."""
        ...

    @property
    def load_seconds(self) -> float:
        """Seconds it took to open; the retriever_index_load_seconds metric."""
        ...

    def search(self, vectors: np.ndarray, topk: int, helpers: Helpers | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(scores, ids), each (len(vectors), min(topk, count)), best first; id -1 where none."""
        ...

    def self_test(self, vector: np.ndarray) -> bool:
        """Answer one query cheaply (no full scan of a cold index): True when a row came back."""
        ...

    def touch_pages(self, progress: Callable[[float], None] | None = None, step: int = 64 * 1024 * 1024) -> None:
        """Warm-up: bring its data into memory; `progress` gets the fraction done."""
        ...

    def describe(self) -> dict[str, Any]:
        """The `index` section of /info."""
        ...
