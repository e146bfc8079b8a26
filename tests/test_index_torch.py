"""The torch exact-search backend agrees with FAISS: same ids where scores are not tied within the
documented tolerance (`score_tolerance`), scores within it. Runs on the CPU (no GPU needed)."""

from __future__ import annotations

import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import faiss
import numpy as np
import pytest

from app.devices import DeviceError, resolve_device
from app.index import IndexFileError
from app.index_torch import TorchFlatIndex, map_flat_vectors, read_flat_header, score_tolerance

DIM = 48
ROWS = 3000
TOPK = 10


def _write(tmp_path: Path, vectors: np.ndarray, metric: str) -> Path:
    index = faiss.IndexFlatIP(vectors.shape[1]) if metric == "ip" else faiss.IndexFlatL2(vectors.shape[1])
    index.add(vectors)
    path = tmp_path / f"{metric}.index"
    faiss.write_index(index, str(path))
    return path


def _data(metric: str, seed: int = 7) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    vectors = rng.standard_normal((ROWS, DIM)).astype(np.float32)
    if metric == "ip":  # what the service serves: L2-normalised embeddings
        vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    else:  # raw vectors of varied norm
        vectors *= rng.uniform(0.5, 3.0, (ROWS, 1)).astype(np.float32)
    # Queries near known rows (as real questions sit near their passage): a clear best match each.
    near = rng.choice(ROWS, 37, replace=False)
    noise = rng.standard_normal((37, DIM)).astype(np.float32)
    queries = vectors[near] + 0.6 * noise * np.linalg.norm(vectors[near], axis=1, keepdims=True) / np.sqrt(DIM)
    if metric == "ip":
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
    return vectors, queries.astype(np.float32)


def _assert_agrees(
    vectors: np.ndarray, queries: np.ndarray, metric: str, dtype: str, got: tuple[np.ndarray, np.ndarray]
) -> None:
    """Scores within tolerance of FAISS at every rank; ids equal wherever FAISS's score at that rank is
    more than twice the tolerance away from every other row's score (no tie within tolerance)."""
    scores, ids = got
    index = faiss.IndexFlatIP(DIM) if metric == "ip" else faiss.IndexFlatL2(DIM)
    index.add(vectors)
    want_scores, want_ids = index.search(queries, TOPK + 1)
    exact = queries.astype(np.float64) @ vectors.astype(np.float64).T
    if metric == "l2":
        exact = (queries.astype(np.float64) ** 2).sum(1)[:, None] + (vectors.astype(np.float64) ** 2).sum(1) - 2 * exact
    norms = np.linalg.norm(vectors, axis=1)
    checked_ids = 0
    for row, query in enumerate(queries):
        tol = score_tolerance(dtype, metric, float(np.linalg.norm(query)), float(norms.max()), DIM) + 1e-5
        np.testing.assert_allclose(scores[row], want_scores[row, :TOPK], atol=tol, rtol=0)
        # Each returned id's exact score is the score reported for it, within tolerance.
        np.testing.assert_allclose(scores[row], exact[row, ids[row]], atol=tol, rtol=0)
        others = np.sort(exact[row])
        for rank in range(TOPK):
            target = exact[row, want_ids[row, rank]]
            close = np.abs(others - target) <= 2 * tol
            if close.sum() == 1:  # only the row itself: not tied
                assert ids[row, rank] == want_ids[row, rank], (row, rank, dtype, metric)
                checked_ids += 1
    print(f"{metric} {dtype}: {checked_ids} of {len(queries) * TOPK} ranks untied, ids equal")
    assert checked_ids >= len(queries), "too few untied ranks: the test would prove little"


def test_flat_header_parser_reads_what_faiss_wrote(tmp_path: Path) -> None:
    for metric in ("ip", "l2"):
        vectors, _ = _data(metric)
        path = _write(tmp_path, vectors, metric)
        flat = read_flat_header(path)
        assert (flat.dimension, flat.count, flat.metric) == (DIM, ROWS, metric)
        assert flat.offset + flat.vector_bytes == path.stat().st_size
        mapped = map_flat_vectors(flat)
        assert isinstance(mapped, np.memmap)
        np.testing.assert_array_equal(np.asarray(mapped), faiss.read_index(str(path)).reconstruct_n(0, ROWS))


def test_non_flat_or_truncated_files_are_refused_with_the_file_named(tmp_path: Path) -> None:
    hnsw = faiss.IndexHNSWFlat(DIM, 8)
    hnsw.add(_data("ip")[0][:100])
    faiss.write_index(hnsw, str(tmp_path / "hnsw.index"))
    with pytest.raises(IndexFileError, match=r"hnsw\.index: the torch backend searches plain Flat indexes"):
        TorchFlatIndex.from_file(tmp_path / "hnsw.index")
    path = _write(tmp_path, _data("ip")[0], "ip")
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(IndexFileError, match=r"ip\.index: truncated"):
        TorchFlatIndex.from_file(path)


@pytest.mark.parametrize("metric", ["ip", "l2"])
@pytest.mark.parametrize("dtype", ["float32", "bfloat16", "float16"])
@pytest.mark.parametrize("topk_group", [0, 4])
def test_search_agrees_with_faiss_within_tolerance(tmp_path: Path, metric: str, dtype: str, topk_group: int) -> None:
    vectors, queries = _data(metric)
    # A small workspace forces many row steps, so the merge across steps is exercised.
    index = TorchFlatIndex.from_file(_write(tmp_path, vectors, metric), "cpu", dtype, workspace_bytes=64 * 1024)
    index.topk_group = topk_group
    try:
        assert index.count == ROWS and index.dimension == DIM and index.metric == metric
        assert index._rows_per_step(len(queries)) < ROWS
        _assert_agrees(vectors, queries, metric, dtype, index.search(queries, TOPK))
    finally:
        index.close()


def test_float32_on_cpu_searches_the_mapping_in_place(tmp_path: Path) -> None:
    vectors, queries = _data("ip")
    index = TorchFlatIndex.from_file(_write(tmp_path, vectors, "ip"), "cpu", "float32")
    try:
        assert index.load.mapped and "memory-mapped" in index.load.note
        scores, ids = index.search(queries, TOPK)
        want_scores, want_ids = faiss.knn(queries, vectors, TOPK, metric=faiss.METRIC_INNER_PRODUCT)
        np.testing.assert_allclose(scores, want_scores, atol=1e-5)
        assert (ids[:, 0] == want_ids[:, 0]).all()
    finally:
        index.close()


def test_tied_rows_return_tied_scores(tmp_path: Path) -> None:
    vectors, queries = _data("ip")
    vectors[1::2] = vectors[0::2]  # every row twice: every score tied with another row's
    index = TorchFlatIndex.from_file(_write(tmp_path, vectors, "ip"), "cpu", "bfloat16")
    try:
        scores, ids = index.search(queries, 4)
        want, _ = faiss.knn(queries, vectors, 4, metric=faiss.METRIC_INNER_PRODUCT)
        np.testing.assert_allclose(scores, want, atol=score_tolerance("bfloat16", "ip", 1, 1, DIM) + 1e-5)
        assert len({tuple(sorted(r)) for r in (ids // 2).tolist()}) == len(queries)  # pairs found together
        assert (ids // 2)[:, 0].tolist() == (ids // 2)[:, 1].tolist()
    finally:
        index.close()


def test_topk_beyond_the_row_count_pads_like_faiss(tmp_path: Path) -> None:
    vectors, queries = _data("l2")
    index = TorchFlatIndex.from_file(_write(tmp_path, vectors[:5], "l2"), "cpu", "float16")
    try:
        scores, ids = index.search(queries[:3], 8)
        _, want_ids = faiss.knn(queries[:3], vectors[:5], 8)
        assert (ids[:, 5:] == -1).all() and (want_ids[:, 5:] == -1).all()
        assert sorted(ids[0, :5].tolist()) == list(range(5))
        assert np.isinf(scores[:, 5:]).all()
    finally:
        index.close()


def test_only_the_owner_thread_touches_the_index_under_concurrent_callers(tmp_path: Path) -> None:
    vectors, queries = _data("ip")
    index = TorchFlatIndex.from_file(_write(tmp_path, vectors, "ip"), "cpu", "bfloat16")
    seen: set[str] = set()
    original = index._search

    def recording(batch: np.ndarray, topk: int) -> tuple[np.ndarray, np.ndarray]:
        seen.add(threading.current_thread().name)
        return original(batch, topk)

    index._search = recording  # type: ignore[method-assign]
    try:
        serial = index.search(queries, TOPK)
        with ThreadPoolExecutor(16) as pool:
            results = list(pool.map(lambda i: index.search(queries[i : i + 5], TOPK), range(0, 32)))
        assert seen == {"index-owner-cpu"}
        for start, (_, ids) in enumerate(results):
            np.testing.assert_array_equal(ids, serial[1][start : start + 5])
    finally:
        index.close()
    assert not index._owner.is_alive() and index.device_bytes == 0


def test_device_memory_is_accounted(tmp_path: Path) -> None:
    index = TorchFlatIndex.from_file(_write(tmp_path, _data("l2")[0], "l2"), "cpu", "bfloat16")
    try:
        assert index.device_bytes == ROWS * DIM * 2 + ROWS * 4
        assert index.describe()["device_bytes"] == index.device_bytes
    finally:
        index.close()


def test_synthetic_index_is_generated_on_the_device_as_unit_vectors() -> None:
    index = TorchFlatIndex.synthetic(5000, DIM, "cpu", "float16", seed=3)
    try:
        rng = np.random.default_rng(0)
        queries = rng.standard_normal((4, DIM)).astype(np.float32)
        queries /= np.linalg.norm(queries, axis=1, keepdims=True)
        scores, ids = index.search(queries, 5)
        assert (ids >= 0).all() and (scores <= 1.001).all() and (np.diff(scores, axis=1) <= 0).all()
    finally:
        index.close()


def test_float16_refuses_values_beyond_its_range(tmp_path: Path) -> None:
    vectors, _ = _data("l2")
    vectors[100, 3] = 1e6
    with pytest.raises(IndexFileError, match="beyond float16's range"):
        TorchFlatIndex.from_file(_write(tmp_path, vectors, "l2"), "cpu", "float16")


def test_cuda_requested_without_cuda_fails_at_once_with_the_reason() -> None:
    import torch

    if torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    with pytest.raises(DeviceError, match=r"--index-device cuda: .*(CPU-only build|no CUDA device)"):
        resolve_device("cuda", "--index-device")
    with pytest.raises(DeviceError, match=r"--device cuda:1: "):
        resolve_device("cuda:1", "--device")
    with pytest.raises(DeviceError, match="expected cpu, cuda or cuda:N"):
        resolve_device("tpu")
    assert resolve_device(" CPU ") == "cpu"


def test_pipelined_batches_hand_off_at_most_two_and_keep_their_own_answers() -> None:
    """The batcher encodes batch N+1 while batch N is searched, and hands over no more than that."""
    import asyncio

    from app.batcher import PIPELINE_DEPTH, MicroBatcher

    index = TorchFlatIndex.synthetic(20_000, DIM, "cpu", "bfloat16", seed=5)
    rng = np.random.default_rng(1)
    table = {f"q{i}": v / np.linalg.norm(v) for i, v in enumerate(rng.standard_normal((64, DIM)).astype(np.float32))}
    outstanding, most = 0, 0
    lock = threading.Lock()

    def settle(_: object) -> None:
        nonlocal outstanding
        with lock:
            outstanding -= 1

    def two_stage(texts: list[str], topk: int, helpers: object = None) -> object:
        nonlocal outstanding, most
        vectors = np.stack([table[t] for t in texts])  # stage 1 (the encoder's place)
        with lock:
            outstanding += 1
            most = max(most, outstanding)
        pending = index.submit(vectors, topk)  # stage 2, on the owner thread
        pending.add_done_callback(settle)
        return pending

    async def drive() -> list[tuple[np.ndarray, np.ndarray]]:
        batcher = MicroBatcher(two_stage, max_batch_size=4, max_wait_ms=0, max_queue=1000, threads=1)
        await batcher.start()
        try:
            return await asyncio.gather(*(batcher.submit([f"q{i}", f"q{(i + 1) % 64}"], 3) for i in range(64)))
        finally:
            await batcher.stop()

    try:
        answers = asyncio.run(drive())
        for i, (_, ids) in enumerate(answers):
            _, want = index.search(np.stack([table[f"q{i}"], table[f"q{(i + 1) % 64}"]]), 3)
            np.testing.assert_array_equal(ids, want)
        assert 2 <= most <= PIPELINE_DEPTH  # overlapped, and bounded
    finally:
        index.close()
