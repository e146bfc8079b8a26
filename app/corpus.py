"""Corpus store: passages as compact JSON rows in one memory-mapped file, O(1) access by row.

Layout of a store directory:
  corpus.bin   every row's compact JSON, back to back (UTF-8)
  offsets.u64  n+1 little-endian uint64 byte offsets into corpus.bin

No Python object per passage is ever held: a lookup slices the mapping. Rows are kept as
JSON bytes so the API can splice them into a response without parsing them again.

A Search-R1 passages jsonl served as it is (`--corpus-path`) is converted into a store once and
cached (`ensure_corpus_store`), under a file lock so that workers and test processes convert it once.
"""

from __future__ import annotations

import fcntl
import json
import logging
import mmap
import os
import shutil
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from app.errors import RetrieverError
from app.progress import Progress

log = logging.getLogger(__name__)

ROWS_FILE = "corpus.bin"
OFFSETS_FILE = "offsets.u64"
CORPUS_DIR_FILES = (ROWS_FILE, OFFSETS_FILE)
MAX_REPORTED_LINES = 20


class CorpusError(RetrieverError):
    """A corpus file that cannot be used; the message names the file and the problem."""


class CorpusReadError(CorpusError):
    """The store cannot be read now (file shrunk or unreadable): the requests that needed it fail."""


@dataclass
class BadLine:
    line_no: int
    reason: str


@dataclass
class ConversionReport:
    rows: int = 0
    blank_lines: int = 0
    bad_lines: list[BadLine] = field(default_factory=list)
    bad_line_count: int = 0

    def describe_bad(self) -> str:
        shown = "; ".join(f"line {b.line_no}: {b.reason}" for b in self.bad_lines)
        more = self.bad_line_count - len(self.bad_lines)
        return shown + (f"; and {more} more" if more > 0 else "")


def parse_row(line: bytes) -> tuple[dict[str, Any], bytes]:
    """Parse one jsonl line into (row, compact JSON bytes); raises ValueError with the reason."""
    try:
        text = line.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise ValueError(f"not valid UTF-8 at byte {exc.start}") from None
    try:
        row = json.loads(text)
    except json.JSONDecodeError as exc:
        raise ValueError(f"invalid JSON ({exc.msg} at column {exc.colno})") from None
    if not isinstance(row, dict):
        raise ValueError(f"expected a JSON object, got {type(row).__name__}")
    contents = row.get("contents")
    if not isinstance(contents, str):
        raise ValueError('missing string field "contents"')
    try:
        compact = json.dumps(row, ensure_ascii=False, separators=(",", ":"), allow_nan=False)
    except ValueError:
        raise ValueError("holds NaN or Infinity, which JSON does not allow") from None
    return row, compact.encode("utf-8")


def iter_jsonl(
    path: Path, report: ConversionReport, skip_invalid: bool, on_bytes: Callable[[int], None] | None = None
) -> Iterator[tuple[dict[str, Any], bytes]]:
    """Stream valid rows of a jsonl file; blank lines are counted, bad lines recorded by number."""
    try:
        handle: BinaryIO = open(path, "rb")  # noqa: SIM115 - closed below, generator-owned
    except OSError as exc:
        raise CorpusError(f"{path}: cannot open corpus ({exc.strerror})") from None
    with handle:
        for line_no, line in enumerate(handle, start=1):
            if on_bytes is not None:
                on_bytes(len(line))
            if not line.strip():
                report.blank_lines += 1
                continue
            try:
                parsed = parse_row(line.rstrip(b"\r\n"))
            except ValueError as exc:
                report.bad_line_count += 1
                if len(report.bad_lines) < MAX_REPORTED_LINES:
                    report.bad_lines.append(BadLine(line_no, str(exc)))
                if skip_invalid:
                    log.warning("%s line %d skipped: %s", path, line_no, exc)
                continue
            if report.bad_line_count and not skip_invalid:
                continue  # keep scanning to report every bad line, but write nothing more
            report.rows += 1
            yield parsed
    if report.bad_line_count and not skip_invalid:
        raise CorpusError(
            f"{path}: {report.bad_line_count} malformed line(s): {report.describe_bad()} "
            "(fix them, or pass --skip-invalid to build without them)"
        )


def read_sequentially(
    paths: list[Path], progress: Callable[[float], None] | None = None, step: int = 64 * 1024 * 1024
) -> None:
    """Read files start to end through one small buffer (page cache fill, constant memory)."""
    total = max(sum(p.stat().st_size for p in paths), 1)
    buffer = memoryview(bytearray(min(max(step, mmap.PAGESIZE), 8 * 1024 * 1024)))
    done = reported = 0
    for path in paths:
        with open(path, "rb", buffering=0) as handle:
            if hasattr(os, "posix_fadvise"):
                os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
            while count := handle.readinto(buffer):
                done += count
                if progress is not None and done - reported >= step:
                    reported = done
                    progress(min(1.0, done / total))
    if progress is not None:
        progress(1.0)


class CorpusWriter:
    """Appends rows to a store directory with constant memory."""

    def __init__(self, directory: Path) -> None:
        directory.mkdir(parents=True, exist_ok=True)
        self.directory = directory
        self._rows = open(directory / ROWS_FILE, "wb")  # noqa: SIM115 - closed in close()
        self._offsets = open(directory / OFFSETS_FILE, "wb")  # noqa: SIM115
        self._position = 0
        self.count = 0
        self._offsets.write(np.uint64(0).tobytes())

    def add(self, compact_row: bytes) -> None:
        self._rows.write(compact_row)
        self._position += len(compact_row)
        self._offsets.write(np.uint64(self._position).tobytes())
        self.count += 1

    def close(self) -> None:
        for handle in (self._rows, self._offsets):
            handle.flush()
            os.fsync(handle.fileno())
            handle.close()


class CorpusStore:
    """Read-only, memory-mapped view of a store directory."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        rows_path, offsets_path = directory / ROWS_FILE, directory / OFFSETS_FILE
        for path in (rows_path, offsets_path):
            if not path.is_file():
                raise CorpusError(f"{path}: corpus store file is missing")
        offsets_size = offsets_path.stat().st_size
        if offsets_size < 8 or offsets_size % 8:
            raise CorpusError(f"{offsets_path}: truncated offsets file ({offsets_size} bytes)")
        self._offsets = np.memmap(offsets_path, dtype="<u8", mode="r")
        self.count = len(self._offsets) - 1
        self.rows_bytes = rows_path.stat().st_size
        if int(self._offsets[-1]) != self.rows_bytes:
            raise CorpusError(
                f"{rows_path}: size {self.rows_bytes} does not match its offsets "
                f"({int(self._offsets[-1])} expected); the store is truncated or corrupted"
            )
        self._file = open(rows_path, "rb")  # noqa: SIM115 - lives as long as the store
        self._map: mmap.mmap | None = None
        if self.rows_bytes:
            self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
            if hasattr(mmap, "MADV_RANDOM"):
                self._map.madvise(mmap.MADV_RANDOM)  # lookups are scattered: no readahead

    @property
    def nbytes(self) -> int:
        return self.rows_bytes + 8 * (self.count + 1)

    def row_bytes(self, index: int) -> bytes:
        start, end = int(self._offsets[index]), int(self._offsets[index + 1])
        assert self._map is not None
        return self._map[start:end]

    def check_readable(self) -> None:
        """Raise CorpusReadError when the rows file no longer holds what the offsets promise.

        Called before rendering a batch: touching a page of the mapping past the end of a file that
        shrank underneath it kills the process with SIGBUS, where this check (one fstat) turns it
        into an error for the requests at hand. It clears by itself once the file is whole again."""
        try:
            size = os.fstat(self._file.fileno()).st_size
        except OSError as exc:
            raise CorpusReadError(f"{self.directory / ROWS_FILE}: cannot be read ({exc.strerror})") from None
        if size < self.rows_bytes:
            raise CorpusReadError(
                f"{self.directory / ROWS_FILE}: the file shrank to {size} of {self.rows_bytes} bytes while serving "
                "(disk replaced or file rewritten); the passages cannot be read"
            )

    def row(self, index: int) -> dict[str, Any]:
        return json.loads(self.row_bytes(index))

    def files(self) -> list[Path]:
        return [self.directory / ROWS_FILE, self.directory / OFFSETS_FILE]

    def touch_pages(self, progress: Callable[[float], None] | None = None, step: int = 64 * 1024 * 1024) -> None:
        """Warm-up: read the offsets and rows files once, sequentially, into the page cache (lookups
        keep MADV_RANDOM); `progress` gets the fraction of `nbytes` done after each `step` bytes."""
        read_sequentially([self.directory / OFFSETS_FILE, self.directory / ROWS_FILE], progress, step)

    def close(self) -> None:
        if self._map is not None:
            self._map.close()
        self._file.close()


def convert_jsonl(
    source: Path,
    target_dir: Path,
    skip_invalid: bool = False,
    on_bytes: Callable[[int], None] | None = None,
) -> ConversionReport:
    """Convert a passages jsonl into a store directory (streaming, constant memory)."""
    report = ConversionReport()
    writer = CorpusWriter(target_dir)
    try:
        for _row, compact in iter_jsonl(source, report, skip_invalid, on_bytes):
            writer.add(compact)
    finally:
        writer.close()
    return report


@contextmanager
def file_lock(path: Path) -> Iterator[None]:
    """One holder at a time, across workers and processes (an exclusive flock on `path`)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "w") as handle:
        fcntl.flock(handle, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def store_cache_dir(corpus_path: Path, data_dir: Path) -> Path:
    """Where a new store of a jsonl goes: beside it when that is writable, else in data_dir."""
    from app.store_rules import beside, in_cache

    return beside(corpus_path) if os.access(corpus_path.parent, os.W_OK) else in_cache(corpus_path, data_dir)


def ensure_corpus_store(
    corpus_path: Path,
    data_dir: Path,
    on_stage: Callable[[str], None] | None = None,
    on_progress: Callable[[float], None] | None = None,
    cache_size_limit_bytes: int | None = None,
) -> Path:
    """Use a valid store of a Search-R1 jsonl (beside it first, even when read-only, else in the
    cache), or convert it once; the rules and the space check are app/store_rules.py.

    `on_stage` hears that a conversion starts, `on_progress` its fraction of the file read."""
    from app.store_rules import StoreSpaceError, choose_store, is_valid_store, marker_for

    if not corpus_path.is_file():
        raise CorpusError(f"{corpus_path}: corpus file not found")
    try:
        choice = choose_store(corpus_path, data_dir, cache_size_limit_bytes)
    except StoreSpaceError as exc:
        raise CorpusError(str(exc)) from None
    store_dir = choice.directory
    if choice.valid:
        log.info("corpus store %s is valid for %s: used as it is", store_dir, corpus_path)
        return store_dir
    size = corpus_path.stat().st_size
    with file_lock(store_dir.parent / f".{store_dir.name}.lock"):
        if is_valid_store(store_dir, corpus_path):
            return store_dir
        tmp = store_dir.parent / f".{store_dir.name}.converting-{os.getpid()}"
        shutil.rmtree(tmp, ignore_errors=True)
        if on_stage is not None:
            on_stage(f"converting corpus {corpus_path.name} (once, cached in {store_dir})")
        try:
            with Progress(f"converting {corpus_path.name}", size, "B", on_fraction=on_progress) as progress:
                report = convert_jsonl(corpus_path, tmp, skip_invalid=False, on_bytes=progress.update)
            (tmp / "source.json").write_text(marker_for(corpus_path, report.rows))
            shutil.rmtree(store_dir, ignore_errors=True)
            os.rename(tmp, store_dir)
        finally:
            shutil.rmtree(tmp, ignore_errors=True)
        log.info("converted %s: %d rows, %d blank lines", corpus_path, report.rows, report.blank_lines)
    return store_dir
