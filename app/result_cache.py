"""A bounded LRU of search results for repeated queries (GRPO rollouts and evaluation repeat them).

A key holds everything an answer depends on: the serving index's version, the encoder model and
its query prefix, the query text and topk. So an entry can never answer for another index or
model: after an index swap the old keys simply stop matching and age out.
"""

from __future__ import annotations

import sys
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np

# Per entry, besides the arrays and the query text: the key tuple, the OrderedDict node, the
# numpy headers. Measured with tracemalloc on CPython 3.11 at about 500 bytes; rounded up.
ENTRY_OVERHEAD_BYTES = 600


@dataclass(frozen=True)
class CacheKey:
    index_version: str
    model: str
    query: str
    topk: int


@dataclass
class CacheStats:
    hits: int = 0
    misses: int = 0
    evictions: int = 0


class ResultCache:
    """LRU bounded both in entries and in bytes. Used from the event loop only (no lock needed)."""

    def __init__(self, max_entries: int, max_bytes: int, on_evict: Callable[[int], object] | None = None) -> None:
        if max_entries < 1 or max_bytes < 1:
            raise ValueError("a result cache needs room for at least one entry and one byte")
        self.max_entries, self.max_bytes = max_entries, max_bytes
        self._entries: OrderedDict[CacheKey, tuple[np.ndarray, np.ndarray, int]] = OrderedDict()
        self.bytes = 0
        self.stats = CacheStats()
        self._on_evict = on_evict  # told how many answers each put evicted (the metrics counter)

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: CacheKey) -> tuple[np.ndarray, np.ndarray] | None:
        entry = self._entries.get(key)
        if entry is None:
            self.stats.misses += 1
            return None
        self._entries.move_to_end(key)
        self.stats.hits += 1
        return entry[0], entry[1]

    def put(self, key: CacheKey, scores: np.ndarray, ids: np.ndarray) -> None:
        # Copies: a row of a batch's result array would keep the whole batch alive.
        scores, ids = np.array(scores, copy=True), np.array(ids, copy=True)
        size = scores.nbytes + ids.nbytes + sys.getsizeof(key.query) + ENTRY_OVERHEAD_BYTES
        if size > self.max_bytes:
            return
        previous = self._entries.pop(key, None)
        if previous is not None:
            self.bytes -= previous[2]
        self._entries[key] = (scores, ids, size)
        self.bytes += size
        evicted = 0
        while len(self._entries) > self.max_entries or self.bytes > self.max_bytes:
            _, (_, _, freed) = self._entries.popitem(last=False)
            self.bytes -= freed
            evicted += 1
        if evicted:
            self.stats.evictions += evicted
            if self._on_evict is not None:
                self._on_evict(evicted)

    def clear(self) -> None:
        self._entries.clear()
        self.bytes = 0
