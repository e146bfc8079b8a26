"""The result cache: bounded in entries and bytes, least recently used out first, never crossing keys."""

from __future__ import annotations

import numpy as np
import pytest

from app.result_cache import ENTRY_OVERHEAD_BYTES, CacheKey, ResultCache


def key(query: str, topk: int = 3, index_version: str = "v1", model: str = "m") -> CacheKey:
    return CacheKey(index_version=index_version, model=model, query=query, topk=topk)


def result(seed: int, topk: int = 3) -> tuple[np.ndarray, np.ndarray]:
    return np.full(topk, seed / 10, dtype=np.float32), np.arange(seed, seed + topk, dtype=np.int64)


def test_a_stored_result_is_returned_and_counted_as_a_hit() -> None:
    cache = ResultCache(max_entries=10, max_bytes=1 << 20)
    assert cache.get(key("jazz")) is None
    cache.put(key("jazz"), *result(1))
    scores, ids = cache.get(key("jazz"))
    assert list(ids) == [1, 2, 3] and scores[0] == pytest.approx(0.1)
    assert (cache.stats.hits, cache.stats.misses) == (1, 1)


@pytest.mark.parametrize(
    "other",
    [key("jazz", topk=5), key("jazz", index_version="v2"), key("jazz", model="e5"), key("Jazz")],
    ids=["topk", "index version", "model", "query text"],
)
def test_an_answer_never_serves_a_key_that_differs_in_any_part(other: CacheKey) -> None:
    cache = ResultCache(max_entries=10, max_bytes=1 << 20)
    cache.put(key("jazz"), *result(1))
    assert cache.get(other) is None


def test_the_least_recently_used_entry_goes_first_when_entries_run_out() -> None:
    cache = ResultCache(max_entries=2, max_bytes=1 << 20)
    cache.put(key("a"), *result(1))
    cache.put(key("b"), *result(2))
    cache.get(key("a"))  # b is now the oldest
    cache.put(key("c"), *result(3))
    assert cache.get(key("b")) is None and cache.get(key("a")) is not None and cache.get(key("c")) is not None
    assert cache.stats.evictions == 1 and len(cache) == 2


def test_the_byte_bound_holds_whatever_the_entry_count() -> None:
    one_entry = ENTRY_OVERHEAD_BYTES + 3 * 4 + 3 * 8 + 100
    cache = ResultCache(max_entries=1000, max_bytes=3 * one_entry)
    for i in range(50):
        cache.put(key(f"query {i}"), *result(i))
        assert cache.bytes <= cache.max_bytes
    assert 1 <= len(cache) <= 3
    assert cache.stats.evictions == 50 - len(cache)


def test_an_entry_larger_than_the_whole_cache_is_not_stored() -> None:
    cache = ResultCache(max_entries=10, max_bytes=ENTRY_OVERHEAD_BYTES)
    cache.put(key("x" * 1000), *result(1))
    assert len(cache) == 0 and cache.bytes == 0


def test_a_cached_row_is_a_copy_not_a_view_of_the_batch() -> None:
    cache = ResultCache(max_entries=10, max_bytes=1 << 20)
    batch_ids = np.arange(30, dtype=np.int64).reshape(10, 3)
    cache.put(key("a"), np.zeros(3, np.float32), batch_ids[4])
    batch_ids[4] = -1
    assert list(cache.get(key("a"))[1]) == [12, 13, 14]


def test_replacing_a_key_keeps_the_byte_count_exact() -> None:
    cache = ResultCache(max_entries=10, max_bytes=1 << 20)
    cache.put(key("a"), *result(1))
    size = cache.bytes
    cache.put(key("a"), *result(2))
    assert cache.bytes == size and len(cache) == 1
