"""Exact search on torch: a Flat index's vectors on one device, searched as chunked matrix products.

Why: FAISS GPU does not install with pip and is not thread-safe even for search. torch is already
here for the encoder, and exact search is a matrix product plus a top-k.

- Loading: the vectors are read straight from the FAISS file through a read-only mapping of its
  vector section (`read_flat_header` parses FAISS's on-disk Flat format) and copied to the device
  chunk by chunk (`UPLOAD_CHUNK_ROWS`), converted there to the storage dtype: no second full host
  copy, so no host-RAM spike. On the CPU in float32 the mapping itself is the storage (zero copy,
  pages shared between workers, exactly FAISS's numbers).
- Search: for each step of rows, one matrix product of the batch against the rows, in the storage
  dtype (fp16/bf16 on a GPU, tensor cores accumulating in fp32), and a top-`k + RESCORE_MARGIN` per
  step; the candidates of every step are merged, then rescored in float32 from the stored vectors
  and cut to `k`. The rescoring removes the error of rounding the query and the scores to 16 bits:
  what is left is the error of storing the vectors in 16 bits, bounded by `score_tolerance`.
- Ownership: one owner thread per index (and on CUDA one stream). Every device tensor is created,
  read and freed on that thread; callers submit work through a bounded queue and wait on a future,
  so no two threads ever touch the device index at once, by construction.
"""

from __future__ import annotations

import logging
import queue
import struct
import threading
import time
import warnings
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import numpy as np

from app.devices import choose_backend, resolve_device
from app.index import IndexFileError, LoadReport

log = logging.getLogger(__name__)

T = TypeVar("T")

# FAISS's on-disk IndexFlat (faiss/impl/index_write.cpp): fourcc, then the Index header
# d:int32, ntotal:int64, two unused int64, is_trained:uint8, metric_type:int32 (no padding), then the
# codes as a vector: its length in floats (uint64) and the float32 rows. Checked against FAISS's own
# reader by tests/test_index_torch.py.
FLAT_FOURCC = {b"IxFI": "ip", b"IxF2": "l2"}
_HEADER = struct.Struct("<iqqqBi")
_VECTOR_LENGTH = struct.Struct("<Q")
VECTORS_OFFSET = 4 + _HEADER.size + _VECTOR_LENGTH.size  # 45: the float32 rows start here

DTYPE_NAMES = ("float32", "float16", "bfloat16")
# Unit roundoff of each storage dtype (round to nearest): the relative error of one stored component.
UNIT_ROUNDOFF = {"float32": 2.0**-24, "float16": 2.0**-11, "bfloat16": 2.0**-8}
FLOAT16_MAX = 65504.0

# Rows copied to the device per step while loading (float32 on the host: 64 MiB at d = 768).
UPLOAD_CHUNK_ROWS = 21_845
# Candidates kept per query and step beyond k, then rescored in float32: a row of the true top k
# can fall behind in the 16-bit pass only behind this many rows scored within rounding of it.
RESCORE_MARGIN = 16
# Scores held at once per step (batch x rows, in the storage dtype): bounds the workspace memory.
DEFAULT_WORKSPACE_BYTES = 1 << 30
# Top-k of a score block by groups of this many columns (0: plain torch.topk): the block's group
# maxima are reduced in one pass, the top k' groups picked, and the top k' taken among their members
# only; exact (the k' best rows lie in the k' groups of largest maxima) and cheaper than a top-k over
# the whole block when that block is far larger than k'. bench/gpu.py times both.
TOPK_GROUP = 0
# Queued search batches per owner: a bounded hand-off, callers wait beyond it.
OWNER_QUEUE_DEPTH = 4


@dataclass(frozen=True)
class FlatFile:
    path: Path
    dimension: int
    count: int
    metric: str  # ip | l2
    offset: int  # byte offset of row 0

    @property
    def vector_bytes(self) -> int:
        return self.count * self.dimension * 4


def read_flat_header(path: Path) -> FlatFile:
    """Parse the header of a FAISS IndexFlatIP / IndexFlatL2 file; any other index type is refused."""
    try:
        with open(path, "rb") as handle:
            head = handle.read(VECTORS_OFFSET)
    except OSError as exc:
        raise IndexFileError(f"{path}: cannot read the index file: {exc.strerror}") from None
    fourcc = head[:4]
    if fourcc not in FLAT_FOURCC:
        raise IndexFileError(
            f"{path}: the torch backend searches plain Flat indexes (IndexFlatIP / IndexFlatL2) only; "
            f"this file starts with {fourcc!r}. Use the FAISS backend (--index-device cpu) for it"
        )
    if len(head) < VECTORS_OFFSET:
        raise IndexFileError(f"{path}: truncated FAISS Flat index ({len(head)} bytes of header)")
    dimension, count, _, _, _, metric_type = _HEADER.unpack_from(head, 4)
    (floats,) = _VECTOR_LENGTH.unpack_from(head, 4 + _HEADER.size)
    metric = FLAT_FOURCC[fourcc]
    if metric_type != (0 if metric == "ip" else 1) or dimension <= 0 or count < 0 or floats != count * dimension:
        raise IndexFileError(f"{path}: corrupted FAISS Flat header (d={dimension}, ntotal={count}, floats={floats})")
    flat = FlatFile(path, int(dimension), int(count), metric, VECTORS_OFFSET)
    size = path.stat().st_size
    if size < flat.offset + flat.vector_bytes:
        raise IndexFileError(
            f"{path}: truncated: {size} bytes, but {count} x {dimension} vectors need {flat.offset + flat.vector_bytes}"
        )
    return flat


def map_flat_vectors(flat: FlatFile) -> np.ndarray:
    """The (count, d) float32 rows of a Flat file as a read-only mapping (no copy, pages shared)."""
    if flat.count == 0:
        return np.zeros((0, flat.dimension), dtype=np.float32)
    return np.memmap(flat.path, dtype=np.float32, mode="r", offset=flat.offset, shape=(flat.count, flat.dimension))


def score_tolerance(dtype: str, metric: str, query_norm: float, vector_norm: float, dimension: int) -> float:
    """Largest difference between this backend's score and the exact one (FAISS's, up to its fp32 rounding).

    Storing a vector x as x' moves each component by at most u|x_i| (u: the dtype's unit roundoff), so
    |x' - x| <= u|x|. Rescoring is float32 with the query in float32, hence by Cauchy-Schwarz
      ip: |q.x' - q.x| <= u |q| |x|
      l2: ||q - x'|^2 - |q - x|^2| = |(x' - x).(x' + x - 2q)| <= u|x| (2(1 + u)|x| + 2|q|)
    plus float32 accumulation over d terms (d 2^-24 times the same magnitudes).
    """
    u = UNIT_ROUNDOFF[dtype]
    accumulate = dimension * UNIT_ROUNDOFF["float32"]
    if metric == "ip":
        return (u + accumulate) * query_norm * vector_norm
    return u * vector_norm * (2 * (1 + u) * vector_norm + 2 * query_norm) + accumulate * (query_norm + vector_norm) ** 2


def default_dtype(device: str) -> str:
    """fp16 on a GPU (tensor cores; fp16 keeps 3 more mantissa bits than bf16, and unit-norm embeddings
    are far from its range limit); float32 on the CPU: the mapped file itself, zero copy and exact
    (a 16-bit dtype there is a private copy per worker)."""
    return "float32" if device == "cpu" else "float16"


class _Owner(threading.Thread):
    """The one thread that touches a device's index tensors; work arrives through a bounded queue."""

    def __init__(self, device: str) -> None:
        super().__init__(name=f"index-owner-{device}", daemon=True)
        self.device = device
        self.jobs: queue.Queue[tuple[Callable[[], Any], Future[Any]] | None] = queue.Queue(OWNER_QUEUE_DEPTH)
        self.stream: Any = None

    def run(self) -> None:
        import torch

        if self.device.startswith("cuda"):
            torch.cuda.set_device(self.device)
            self.stream = torch.cuda.Stream(self.device)
        while (item := self.jobs.get()) is not None:
            work, future = item
            if not future.set_running_or_notify_cancel():
                continue
            try:
                if self.stream is not None:
                    with torch.cuda.stream(self.stream):
                        result = work()
                    self.stream.synchronize()
                else:
                    result = work()
            except BaseException as exc:  # handed to the caller, whatever it is
                future.set_exception(exc)
            else:
                future.set_result(result)

    def submit(self, work: Callable[[], T]) -> Future[T]:
        if not self.is_alive():
            raise RuntimeError(f"the index owner thread of {self.device} has stopped")
        future: Future[T] = Future()
        self.jobs.put((work, future))
        return future

    def call(self, work: Callable[[], T]) -> T:
        return self.submit(work).result()


class TorchFlatIndex:
    """Exact (Flat) search on `device` in `dtype`; the same answers as FAISS within `score_tolerance`."""

    backend = "torch"

    def __init__(
        self,
        dimension: int,
        metric: str,
        device: str = "cpu",
        dtype: str | None = None,
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
        path: Path | None = None,
    ) -> None:
        if metric not in ("ip", "l2"):
            raise IndexFileError(f"metric {metric!r}: the torch backend supports ip and l2")
        self.device = resolve_device(device, "--index-device")
        self.dtype = dtype or default_dtype(self.device)
        if self.dtype not in DTYPE_NAMES:
            raise IndexFileError(f"--index-dtype {self.dtype!r}: expected one of {', '.join(DTYPE_NAMES)}")
        self.dimension, self.metric = dimension, metric
        self.workspace_bytes = workspace_bytes
        self.topk_group = TOPK_GROUP
        self.path = path or Path("<memory>")
        self.count = 0
        self.nbytes = 0
        self.device_bytes = 0  # bytes the index holds on its device (vectors + norms)
        self.load = LoadReport(0.0, False, "empty")
        self.type_name = f"TorchFlat{'IP' if metric == 'ip' else 'L2'}"
        self._vectors: Any = None  # (count, d) tensor on the device: owner thread only
        self._norms: Any = None  # (count,) float32 |x|^2 (l2 only): owner thread only
        self._owner = _Owner(self.device)
        self._owner.start()

    # -- loading ----------------------------------------------------------------------------------------

    @classmethod
    def from_file(
        cls,
        path: Path,
        device: str = "cpu",
        dtype: str | None = None,
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
        progress: Callable[[float], None] | None = None,
    ) -> TorchFlatIndex:
        """Load a FAISS Flat file: mapped, then copied to the device chunk by chunk."""
        if not path.is_file():
            raise IndexFileError(f"{path}: index file is missing")
        flat = read_flat_header(path)
        index = cls(flat.dimension, flat.metric, device, dtype, workspace_bytes, path)
        index.nbytes = path.stat().st_size
        started = time.perf_counter()
        rows = map_flat_vectors(flat)
        try:
            index._owner.call(lambda: index._adopt(rows, progress))
        except BaseException:
            index.close()
            raise
        zero_copy = index.device == "cpu" and index.dtype == "float32"
        note = (
            "memory-mapped float32 rows searched in place by torch (pages shared between workers)"
            if zero_copy
            else f"copied to {index.device} as {index.dtype} chunk by chunk from the mapped file "
            f"({index.device_bytes / 2**30:.2f} GiB on the device)"
        )
        index.load = LoadReport(time.perf_counter() - started, zero_copy, note)
        log.info("index %s: %s in %.1fs", path, note, index.load.seconds)
        return index

    @classmethod
    def synthetic(
        cls,
        count: int,
        dimension: int,
        device: str = "cpu",
        dtype: str | None = None,
        metric: str = "ip",
        seed: int = 0,
        workspace_bytes: int = DEFAULT_WORKSPACE_BYTES,
    ) -> TorchFlatIndex:
        """Random unit vectors generated on the device itself (benchmarks: no file, no host copy)."""
        index = cls(dimension, metric, device, dtype, workspace_bytes)
        started = time.perf_counter()
        index._owner.call(lambda: index._generate(count, seed))
        index.load = LoadReport(time.perf_counter() - started, False, f"synthetic: {count} x {dimension} on {device}")
        return index

    def _allocate(self, count: int) -> None:
        import torch

        self._vectors = torch.empty((count, self.dimension), dtype=getattr(torch, self.dtype), device=self.device)
        if self.metric == "l2":
            self._norms = torch.empty(count, dtype=torch.float32, device=self.device)
        self.count = count

    def _adopt(self, rows: np.ndarray, progress: Callable[[float], None] | None) -> None:
        """Owner thread: make `rows` (mapped float32) the index."""
        import torch

        count = len(rows)
        if self.device == "cpu" and self.dtype == "float32":
            with warnings.catch_warnings():  # torch warns that the mapping is read-only: it stays untouched
                warnings.simplefilter("ignore", UserWarning)
                self._vectors = torch.from_numpy(rows)
            self.count = count
            if self.metric == "l2":
                self._norms = torch.empty(count, dtype=torch.float32)
                for lo in range(0, count, UPLOAD_CHUNK_ROWS):
                    chunk = self._vectors[lo : lo + UPLOAD_CHUNK_ROWS]
                    self._norms[lo : lo + len(chunk)] = (chunk * chunk).sum(dim=1)
            self._account()
            if progress:
                progress(1.0)
            return
        self._allocate(count)
        for lo in range(0, count, UPLOAD_CHUNK_ROWS):
            hi = min(lo + UPLOAD_CHUNK_ROWS, count)
            # One chunk-sized host copy (aligned, contiguous) at a time: never a second full copy.
            host = torch.from_numpy(np.ascontiguousarray(rows[lo:hi]))
            if self.device != "cpu":
                host = host.pin_memory()
            chunk = host.to(self.device, non_blocking=True)
            if self.dtype == "float16":
                peak = float(chunk.abs().max()) if hi > lo else 0.0
                if peak > FLOAT16_MAX:
                    raise IndexFileError(
                        f"{self.path}: rows {lo}..{hi} hold values up to {peak:.3g}, beyond float16's range "
                        f"({FLOAT16_MAX:g}); use --index-dtype bfloat16 or float32"
                    )
            self._vectors[lo:hi] = chunk.to(self._vectors.dtype)
            if self._norms is not None:
                self._norms[lo:hi] = (chunk * chunk).sum(dim=1)
            if progress:
                progress(hi / count)
        if self.device != "cpu":
            torch.cuda.current_stream().synchronize()
        self._account()

    def _generate(self, count: int, seed: int) -> None:
        import torch

        self._allocate(count)
        generator = torch.Generator(device=self.device).manual_seed(seed)
        for lo in range(0, count, UPLOAD_CHUNK_ROWS * 8):
            hi = min(lo + UPLOAD_CHUNK_ROWS * 8, count)
            chunk = torch.randn((hi - lo, self.dimension), generator=generator, device=self.device)
            chunk = torch.nn.functional.normalize(chunk, dim=1)
            self._vectors[lo:hi] = chunk.to(self._vectors.dtype)
            if self._norms is not None:
                self._norms[lo:hi] = (chunk * chunk).sum(dim=1)
        self._account()

    def _account(self) -> None:
        vectors = self._vectors.element_size() * self._vectors.nelement()
        norms = 0 if self._norms is None else 4 * self._norms.nelement()
        self.device_bytes = vectors + norms

    # -- searching --------------------------------------------------------------------------------------

    def search(self, vectors: np.ndarray, topk: int, helpers: object | None = None) -> tuple[np.ndarray, np.ndarray]:
        """Scores and row ids, best first (FAISS's layout); ids are -1 where fewer than topk rows exist.
        `helpers` (a CPU batching lane's threads) is accepted and unused: the owner thread computes."""
        return self.submit(vectors, topk).result()

    def submit(self, vectors: np.ndarray, topk: int) -> Future[tuple[np.ndarray, np.ndarray]]:
        """Queue a batch on the owner thread; the future holds what `search` returns."""
        queries = np.ascontiguousarray(vectors, dtype=np.float32)
        if queries.ndim != 2 or queries.shape[1] != self.dimension:
            raise ValueError(f"queries of shape {queries.shape}; expected (n, {self.dimension})")
        return self._owner.submit(lambda: self._search(queries, topk))

    def _rows_per_step(self, batch: int) -> int:
        element = 4 if self.dtype == "float32" else 2
        rows = max(1024, self.workspace_bytes // max(1, batch * element))
        return rows - rows % max(self.topk_group, 1)  # whole groups in every step but the last

    def _topk(self, scores: Any, keep: int) -> tuple[Any, Any]:
        """Largest `keep` of each row of `scores` (values, column ids), by groups (TOPK_GROUP)."""
        import torch

        group = self.topk_group
        batch, columns = scores.shape
        if group <= 1 or columns % group or columns < 4 * group * keep:
            return torch.topk(scores, keep, dim=1)
        grouped = scores.view(batch, columns // group, group)
        _, groups = torch.topk(grouped.amax(dim=2), keep, dim=1)  # (batch, keep)
        members = torch.gather(grouped, 1, groups.unsqueeze(2).expand(-1, -1, group)).reshape(batch, keep * group)
        offsets = torch.arange(group, device=scores.device)
        member_ids = (groups.unsqueeze(2) * group + offsets).reshape(batch, keep * group)
        values, where = torch.topk(members, keep, dim=1)
        return values, torch.gather(member_ids, 1, where)

    def _search(self, queries: np.ndarray, topk: int) -> tuple[np.ndarray, np.ndarray]:
        """Owner thread: chunked products, per-step top-k', merge, float32 rescoring, top-k."""
        import torch

        batch = len(queries)
        k = min(topk, self.count)
        out_scores = np.full((batch, topk), -np.inf if self.metric == "ip" else np.inf, dtype=np.float32)
        out_ids = np.full((batch, topk), -1, dtype=np.int64)
        if batch == 0 or k == 0:
            return out_scores, out_ids
        exact = self.dtype == "float32"
        q32 = torch.from_numpy(queries).to(self.device)
        q = q32.to(self._vectors.dtype)
        keep = k if exact else min(self.count, k + RESCORE_MARGIN)
        step = self._rows_per_step(batch)
        found_scores, found_ids = [], []
        for lo in range(0, self.count, step):
            rows = self._vectors[lo : lo + step]
            if self.metric == "ip":
                scores = q @ rows.T
            else:  # largest q.x - |x|^2 / 2 is the smallest |q - x|^2
                half_norms = (-0.5 * self._norms[lo : lo + step]).to(q.dtype)
                scores = torch.addmm(half_norms.unsqueeze(0), q, rows.T)
            values, ids = self._topk(scores, min(keep, len(rows)))
            found_scores.append(values)
            found_ids.append(ids + lo)
        values, ids = torch.cat(found_scores, dim=1), torch.cat(found_ids, dim=1)
        if values.shape[1] > keep:
            values, where = torch.topk(values, keep, dim=1)
            ids = torch.gather(ids, 1, where)
        # Rescore the candidates in float32 from the stored rows: the 16-bit query and scores drop out.
        stored = self._vectors[ids].float()  # (batch, keep, d)
        if self.metric == "ip":
            final = torch.einsum("bkd,bd->bk", stored, q32)
            best, where = torch.topk(final, k, dim=1)
        else:
            final = ((stored - q32.unsqueeze(1)) ** 2).sum(dim=2)
            best, where = torch.topk(final, k, dim=1, largest=False)
        best_ids = torch.gather(ids, 1, where)
        out_scores[:, :k] = best.cpu().numpy()
        out_ids[:, :k] = best_ids.cpu().numpy()
        return out_scores, out_ids

    # -- the FaissIndex interface the service uses -------------------------------------------------------

    def set_search_params(self, nprobe: int | None = None, ef_search: int | None = None) -> dict[str, int]:
        return {}  # exact search has no knobs

    def search_params(self) -> dict[str, int]:
        return {}

    @property
    def mapped(self) -> bool:
        return self.load.mapped

    @property
    def load_seconds(self) -> float:
        return self.load.seconds

    def self_test(self, vector: np.ndarray) -> bool:
        """One query: proves the owner thread and the device answer (the index is already resident)."""
        _, ids = self.search(vector, 1)
        return self.count == 0 or int(ids[0, 0]) >= 0

    def touch_pages(self, progress: Callable[[float], None] | None = None, step: int = 64 * 1024 * 1024) -> None:
        """Warm-up of the mapped file (CPU float32 only; elsewhere the rows already sit on the device)."""
        from app.corpus import read_sequentially

        if self.load.mapped:
            read_sequentially([self.path], progress, step)
        elif progress:
            progress(1.0)

    def describe(self) -> dict[str, Any]:
        """The `index` section of /info: FaissIndex's fields, and where the index lives."""
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
            "search_params": {},
            "backend": self.backend,
            "device": self.device,
            "dtype": self.dtype,
            "device_bytes": self.device_bytes,
            "score_tolerance_unit_vectors": score_tolerance(self.dtype, self.metric, 1.0, 1.0, self.dimension),
        }

    def close(self) -> None:
        """Free the device tensors (on the owner thread) and stop it."""
        if not self._owner.is_alive():
            return

        def release() -> None:
            self._vectors = self._norms = None

        try:
            self._owner.call(release)
        finally:
            self._owner.jobs.put(None)
            self._owner.join(timeout=30)
        self.device_bytes = 0


def expected_device_bytes(count: int, dimension: int, dtype: str, metric: str) -> int:
    """Device memory the index takes (vectors in `dtype`, plus float32 norms for l2)."""
    element = 4 if dtype == "float32" else 2
    return count * dimension * element + (4 * count if metric == "l2" else 0)


def open_index(
    path: Path,
    index_device: str = "cpu",
    index_backend: str = "auto",
    index_dtype: str = "auto",
    use_mmap: bool = True,
    threads: int = 0,
    progress: Callable[[float], None] | None = None,
) -> Any:
    """The index backend the settings ask for: a FaissIndex, or a TorchFlatIndex on its device."""
    from app.index import FaissIndex

    if choose_backend(index_device, index_backend) == "faiss":
        return FaissIndex(path, use_mmap=use_mmap, threads=threads)
    device = resolve_device(index_device, "--index-device")
    return TorchFlatIndex.from_file(path, device, None if index_dtype == "auto" else index_dtype, progress=progress)


def placement(index: Any) -> dict[str, Any]:
    """Where the index runs and what it holds on the device (/info's stages, the metrics)."""
    described = index.describe()
    return {
        "backend": described.get("backend", "faiss"),
        "device": described.get("device", "cpu"),
        "dtype": described.get("dtype", "float32"),
        "device_bytes": described.get("device_bytes", 0),
    }
