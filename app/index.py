"""Index backend: a FAISS index loaded memory-mapped where FAISS allows, searched in batches."""

from __future__ import annotations

import itertools
import logging
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import faiss
import numpy as np

from app import procstat
from app.corpus import read_sequentially
from app.errors import RetrieverError

if TYPE_CHECKING:
    from app.lanes import Helpers

log = logging.getLogger(__name__)

# A Flat index is split by rows between lane threads only from this size (below it a scan is cheap).
MIN_ROWS_TO_SPLIT = 65_536

# Batched Flat search only becomes one matrix product (one scan of the index for the whole
# batch) when the batch holds at least this many queries; FAISS's default is 20 (old) or 128000.
BLAS_THRESHOLD = 1


class IndexFileError(RetrieverError):
    """An index file that cannot be used; the message names the file and the problem."""


@dataclass
class LoadReport:
    seconds: float
    mapped: bool
    note: str


def _file_is_mapped(path: Path) -> bool:
    """True when this process holds a mapping of `path` (what FAISS really did, not what we asked)."""
    return procstat.maps_file("self", path)


def index_type_name(index: faiss.Index) -> str:
    return type(faiss.downcast_index(index)).__name__


class FaissIndex:
    """Read-only FAISS index with runtime search knobs. Implements `app.backends.VectorIndex`."""

    def __init__(self, path: Path, use_mmap: bool = True, threads: int = 0) -> None:
        if not path.is_file():
            raise IndexFileError(f"{path}: index file is missing")
        self.path = path
        self.nbytes = path.stat().st_size
        if self.nbytes == 0:
            raise IndexFileError(f"{path}: index file is empty")
        faiss.cvar.distance_compute_blas_threshold = BLAS_THRESHOLD
        if threads:
            faiss.omp_set_num_threads(threads)
        started = time.perf_counter()
        self.index, mapped, note = self._read(path, use_mmap)
        self.load = LoadReport(time.perf_counter() - started, mapped, note)
        (log.info if mapped or not use_mmap else log.warning)("index %s: %s", path, note)
        self.dimension = int(self.index.d)
        self.count = int(self.index.ntotal)
        self.metric = "ip" if self.index.metric_type == faiss.METRIC_INNER_PRODUCT else "l2"
        self.type_name = index_type_name(self.index)
        self._rows = self._flat_rows()

    def _flat_rows(self) -> np.ndarray | None:
        """The vectors of a plain Flat index as an (n, d) array over FAISS's own (mapped) memory."""
        inner = faiss.downcast_index(self.index)
        if type(inner) not in (faiss.IndexFlatIP, faiss.IndexFlatL2) or self.count == 0:
            return None
        return faiss.rev_swig_ptr(inner.get_xb(), self.count * self.dimension).reshape(self.count, self.dimension)

    @staticmethod
    def _read(path: Path, use_mmap: bool) -> tuple[faiss.Index, bool, str]:
        def read(flags: int) -> faiss.Index:
            try:
                return faiss.read_index(str(path), flags)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
                # Drop FAISS's C++ location ("Error in <signature> at <file>:<line>: Error: ").
                first = re.sub(r"^Error in .*? at \S+:\d+: (?:Error: )?", "", first)
                raise IndexFileError(f"{path}: not a readable FAISS index (truncated or corrupted?): {first}") from None

        if not use_mmap:
            return read(0), False, "loaded into memory (mmap off)"
        # IFC maps Flat/HNSW/SQ codes (and IVF lists); IO_FLAG_MMAP covers IVF lists on older builds.
        for flags in (faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY, faiss.IO_FLAG_MMAP):
            try:
                index = read(flags)
            except IndexFileError:
                continue
            if _file_is_mapped(path):
                return index, True, "memory-mapped (pages shared between workers)"
            return (
                index,
                False,
                f"{index_type_name(index)} cannot be memory-mapped by this FAISS; loaded into memory",
            )
        index = read(0)
        return (
            index,
            False,
            f"{index_type_name(index)} cannot be memory-mapped by this FAISS; loaded into memory",
        )

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> dict[str, int]:
        applied: dict[str, int] = {}
        inner = faiss.downcast_index(self.index)
        if nprobe is not None:
            ivf = faiss.try_extract_index_ivf(inner)
            if ivf is not None:
                ivf.nprobe = nprobe
                applied["nprobe"] = nprobe
        if ef_search is not None and hasattr(inner, "hnsw"):
            inner.hnsw.efSearch = ef_search
            applied["efSearch"] = ef_search
        return applied

    def self_test(self, vector: np.ndarray, rows: int = 1024) -> bool:
        """One query restricted to the first `rows` rows: proves the index answers without a full scan
        (a Flat scan of a cold, mapped 64 GB index would fault every page in before /health turns 200)."""
        if faiss.try_extract_index_ivf(faiss.downcast_index(self.index)) is not None:
            _, ids = self.index.search(vector, 1)  # probes nprobe lists only; IVF takes no generic selector
        else:
            params = faiss.SearchParameters()
            selector = faiss.IDSelectorRange(0, min(rows, max(self.count, 1)))
            params.sel = selector
            _, ids = self.index.search(vector, 1, params=params)
        return self.count == 0 or int(ids[0, 0]) >= 0

    @property
    def mapped(self) -> bool:
        return self.load.mapped

    @property
    def load_seconds(self) -> float:
        return self.load.seconds

    def describe(self) -> dict[str, Any]:
        return {
            "path": str(self.path),
            "type": self.type_name,
            "metric": self.metric,
            "vectors": self.count,
            "dimension": self.dimension,
            "bytes": self.nbytes,
            "mmap": self.load.mapped,
            "load": self.load.note,
            "load_seconds": round(self.load.seconds, 4),
            "search_params": self.search_params(),
            "backend": "faiss",
            "device": "cpu",
            "dtype": "float32",
            "device_bytes": 0,
        }

    def search_params(self) -> dict[str, int]:
        inner = faiss.downcast_index(self.index)
        params: dict[str, int] = {}
        ivf = faiss.try_extract_index_ivf(inner)
        if ivf is not None:
            params["nprobe"] = int(ivf.nprobe)
            params["nlist"] = int(ivf.nlist)
        if hasattr(inner, "hnsw"):
            params["efSearch"] = int(inner.hnsw.efSearch)
        return params

    def faiss_params(self, params: dict[str, int] | None) -> faiss.SearchParameters | None:
        """FAISS per-call parameters for a request's override ({"nprobe": n} / {"efSearch": n})."""
        if not params:
            return None
        outer = faiss.downcast_index(self.index)
        inner = faiss.downcast_index(outer.index) if isinstance(outer, faiss.IndexPreTransform) else outer
        chosen: faiss.SearchParameters | None = None
        if "nprobe" in params and faiss.try_extract_index_ivf(inner) is not None:
            chosen = faiss.SearchParametersIVF(nprobe=int(params["nprobe"]))
        elif "efSearch" in params and hasattr(inner, "hnsw"):
            chosen = faiss.SearchParametersHNSW(efSearch=int(params["efSearch"]))
        if chosen is not None and inner is not outer:
            chosen = faiss.SearchParametersPreTransform(index_params=chosen)
        return chosen

    def search(
        self,
        vectors: np.ndarray,
        topk: int,
        helpers: Helpers | None = None,
        params: dict[str, int] | None = None,
    ) -> tuple[np.ndarray, np.ndarray]:
        """Scores and row ids, best first; ids are -1 where fewer than topk rows exist.

        With `helpers` (a batching lane), the work is split between threads that each compute
        single-threaded: a Flat index by rows (every thread scans a slice for the whole batch, so
        the index is still read once per batch), any other index by queries.
        """
        k = min(topk, max(self.count, 1))
        chosen = self.faiss_params(params)

        def run(part: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
            return self.index.search(part, k, params=chosen) if chosen is not None else self.index.search(part, k)

        if helpers is None:
            return run(vectors)
        if self._rows is not None and self.count >= MIN_ROWS_TO_SPLIT:
            return self._search_slices(vectors, k, helpers)
        parts = min(helpers.count + 1, len(vectors))
        if parts < 2:
            return run(vectors)
        found = helpers.map(run, np.array_split(vectors, parts))
        return np.concatenate([d for d, _ in found]), np.concatenate([i for _, i in found])

    def _search_slices(self, vectors: np.ndarray, k: int, helpers: Helpers) -> tuple[np.ndarray, np.ndarray]:
        rows = self._rows
        assert rows is not None
        bounds = np.linspace(0, self.count, helpers.count + 2).astype(np.int64)
        slices = [(int(lo), int(hi)) for lo, hi in itertools.pairwise(bounds) if hi > lo]
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        metric = faiss.METRIC_INNER_PRODUCT if self.metric == "ip" else faiss.METRIC_L2

        def scan(bound: tuple[int, int]) -> tuple[np.ndarray, np.ndarray]:
            lo, hi = bound
            scores, ids = faiss.knn(queries, rows[lo:hi], min(k, hi - lo), metric=metric)
            return scores, ids + lo

        found = helpers.map(scan, slices)
        scores = np.concatenate([d for d, _ in found], axis=1)
        ids = np.concatenate([i for _, i in found], axis=1)
        order = np.argsort(-scores if self.metric == "ip" else scores, axis=1, kind="stable")[:, :k]
        return np.take_along_axis(scores, order, axis=1), np.take_along_axis(ids, order, axis=1)

    def touch_pages(self, progress: Callable[[float], None] | None = None, step: int = 64 * 1024 * 1024) -> None:
        """Warm-up: read the file once, sequentially, into the page cache (shared by every process
        mapping it); `progress` gets the fraction done after each `step` bytes.

        Plain sequential reads, not page faults through a mapping: on a cold cache, faulting a
        2 GiB Flat index in through FAISS's mapping took 32 s here, reading it 2 s.
        """
        read_sequentially([self.path], progress, step)
