"""Index backend: a FAISS index loaded memory-mapped where FAISS allows, searched in batches."""

from __future__ import annotations

import logging
import mmap
import re
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import faiss
import numpy as np

log = logging.getLogger(__name__)

# Batched Flat search only becomes one matrix product (one scan of the index for the whole
# batch) when the batch holds at least this many queries; FAISS's default is 20 (old) or 128000.
BLAS_THRESHOLD = 1


class IndexError_(Exception):
    """An index file that cannot be used; the message names the file and the problem."""


@dataclass
class LoadReport:
    seconds: float
    mapped: bool
    note: str


def _file_is_mapped(path: Path) -> bool:
    """True when this process holds a mapping of `path` (what FAISS really did, not what we asked)."""
    target = str(path.resolve())
    try:
        with open("/proc/self/maps") as maps:
            return any(line.rstrip("\n").endswith(target) for line in maps)
    except OSError:
        return False


def index_type_name(index: faiss.Index) -> str:
    return type(faiss.downcast_index(index)).__name__


class FaissIndex:
    """Read-only FAISS index with runtime search knobs."""

    def __init__(self, path: Path, use_mmap: bool = True, threads: int = 0) -> None:
        if not path.is_file():
            raise IndexError_(f"{path}: index file is missing")
        self.path = path
        self.nbytes = path.stat().st_size
        if self.nbytes == 0:
            raise IndexError_(f"{path}: index file is empty")
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

    @staticmethod
    def _read(path: Path, use_mmap: bool) -> tuple[faiss.Index, bool, str]:
        def read(flags: int) -> faiss.Index:
            try:
                return faiss.read_index(str(path), flags)
            except RuntimeError as exc:
                first = str(exc).strip().splitlines()[-1] if str(exc).strip() else "unknown error"
                # Drop FAISS's C++ location ("Error in <signature> at <file>:<line>: Error: ").
                first = re.sub(r"^Error in .*? at \S+:\d+: (?:Error: )?", "", first)
                raise IndexError_(f"{path}: not a readable FAISS index (truncated or corrupted?): {first}") from None

        if not use_mmap:
            return read(0), False, "loaded into memory (mmap off)"
        # IFC maps Flat/HNSW/SQ codes (and IVF lists); IO_FLAG_MMAP covers IVF lists on older builds.
        for flags in (faiss.IO_FLAG_MMAP_IFC | faiss.IO_FLAG_READ_ONLY, faiss.IO_FLAG_MMAP):
            try:
                index = read(flags)
            except IndexError_:
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

    def search(self, vectors: np.ndarray, topk: int) -> tuple[np.ndarray, np.ndarray]:
        """Scores and row ids, best first; ids are -1 where fewer than topk rows exist."""
        return self.index.search(vectors, min(topk, max(self.count, 1)))

    def touch_pages(self, progress: Callable[[float], None] | None = None, step: int = 64 * 1024 * 1024) -> None:
        """Fault the file into the page cache (warm-up), reading one byte per page through our own
        mapping; `progress` gets the fraction done after each `step` bytes."""
        step = max(mmap.PAGESIZE, step - step % mmap.PAGESIZE)
        with open(self.path, "rb") as handle:
            view = mmap.mmap(handle.fileno(), 0, access=mmap.ACCESS_READ)
            try:
                for start in range(0, self.nbytes, step):
                    if hasattr(mmap, "MADV_WILLNEED"):  # read ahead the whole step, not page by page
                        view.madvise(mmap.MADV_WILLNEED, start, min(step, self.nbytes - start))
                    chunk = np.frombuffer(view, dtype=np.uint8, count=min(step, self.nbytes - start), offset=start)
                    int(chunk[:: mmap.PAGESIZE].sum())
                    del chunk
                    if progress is not None:
                        progress(min(1.0, (start + step) / self.nbytes))
            finally:
                view.close()
