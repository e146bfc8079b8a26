"""Document lookup by a column's value (`id`, `url`) in the mapped corpus store, and the document
shapes the trainers' dialects read (title and text split from Search-R1's `"Title"\\ntext`).

Search-R1's wiki-18 (and the demo corpus) number their rows: row i has id "i". A lookup tries that
first (O(1), nothing built). Any other id, and every url, goes through a hash table of the column,
built on the first such lookup by one pass over the store (a few seconds per million rows; logged)
and kept for the life of the process: 16 bytes per row, never a Python object per row.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from typing import Any

import numpy as np

from app.corpus import CorpusStore

log = logging.getLogger(__name__)

PROGRESS_EVERY_ROWS = 1_000_000


def _key(value: str) -> int:
    # Python's own str hash, as a signed 64-bit key: stable within the process, which is all a
    # table held in memory needs. Collisions are harmless: every candidate row is checked.
    return hash(value)


def column_value(row: dict[str, Any], field: str) -> str | None:
    value = row.get(field)
    if value is None or isinstance(value, (dict, list, bool)):
        return None
    return str(value)


class ColumnIndex:
    """Rows by the string value of one column; built lazily, once, thread-safe."""

    def __init__(self, corpus: CorpusStore, field: str) -> None:
        self.corpus, self.field = corpus, field
        self._keys: np.ndarray | None = None
        self._rows: np.ndarray | None = None
        self._lock = threading.Lock()

    def find(self, value: str) -> int | None:
        """The first row whose column equals `value`, or None."""
        if self.field == "id" and value.isascii() and value.isdigit() and value == str(int(value)):
            row = int(value)
            if row < self.corpus.count and column_value(self.corpus.row(row), "id") == value:
                return row
        keys, rows = self._table()
        start = int(np.searchsorted(keys, _key(value), side="left"))
        for position in range(start, len(keys)):
            if keys[position] != _key(value):
                break
            candidate = int(rows[position])
            if column_value(self.corpus.row(candidate), self.field) == value:
                return candidate
        return None

    def _table(self) -> tuple[np.ndarray, np.ndarray]:
        if self._keys is not None and self._rows is not None:
            return self._keys, self._rows
        with self._lock:
            if self._keys is None or self._rows is None:
                self._keys, self._rows = self._build()
        return self._keys, self._rows

    def _build(self) -> tuple[np.ndarray, np.ndarray]:
        count = self.corpus.count
        started = time.perf_counter()
        log.info("indexing corpus column %r for lookups: %d rows (once per process)", self.field, count)
        keys = np.empty(count, dtype=np.int64)
        present = np.zeros(count, dtype=bool)
        for row in range(count):
            value = column_value(json.loads(self.corpus.row_bytes(row)), self.field)
            if value is not None:
                keys[row], present[row] = _key(value), True
            if row and row % PROGRESS_EVERY_ROWS == 0:
                log.info("indexing column %r: %d/%d rows (%.0f%%)", self.field, row, count, 100 * row / count)
        rows = np.flatnonzero(present).astype(np.int64)
        keys = keys[rows]
        order = np.argsort(keys, kind="stable")  # stable: equal keys keep row order, so the first row wins
        log.info("indexed column %r: %d values in %.1fs", self.field, len(rows), time.perf_counter() - started)
        return keys[order], rows[order]


class DocumentLookup:
    """What `/access`, `/document` and MCP's `get_document` answer from: rows by id or by url."""

    def __init__(self, corpus: CorpusStore) -> None:
        self.corpus = corpus
        self.by_id = ColumnIndex(corpus, "id")
        self.by_url = ColumnIndex(corpus, "url")

    def row_by_id(self, doc_id: str) -> int | None:
        return self.by_id.find(doc_id)

    def row_by_url(self, url: str) -> int | None:
        """By the `url` column; a corpus without one answers by id, so its ids work as urls."""
        return self.by_url.find(url) if self._has_urls() else self.by_id.find(url)

    def _has_urls(self) -> bool:
        return self.corpus.count > 0 and "url" in self.corpus.row(0)


def split_contents(row: dict[str, Any]) -> tuple[str, str]:
    """(title, text) of a row. Search-R1's contents are `"Title"\\ntext`: the first line without its
    quotes is the title, the rest the text (as Search-R1's own BM25 server and BrowseComp-Plus split
    them). Contents without a newline are all text, titled by a `title` column if there is one."""
    contents = row.get("contents")
    if not isinstance(contents, str):
        contents = ""
    first, newline, rest = contents.partition("\n")
    if newline:
        return first.strip().strip('"'), rest
    title = row.get("title")
    return (title if isinstance(title, str) else ""), contents


def doc_id(row: dict[str, Any], row_number: int) -> str:
    """The row's `id` as a string (the dialects send ids as strings), or its row number."""
    value = column_value(row, "id")
    return value if value is not None else str(row_number)
