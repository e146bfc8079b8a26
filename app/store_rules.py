"""Where the corpus store of a bare jsonl (`--corpus-path`) lives, and whether one must be made.

Rules, in order:
  1. a valid store beside the source (`<corpus>.store/`) is used as it is, even when that
     directory is read-only (a volume prepared once, mounted read-only into every pod);
  2. else a valid store in the cache (`RETRIEVER_DATA_DIR/corpora/`) is used;
  3. else one must be made: beside the source when that directory is writable, otherwise in the
     cache. Before converting, the space it needs is checked against the free space and against
     `cache_size_limit_bytes` (the chart's `cacheSizeLimit`: an emptyDir larger than its limit
     gets the pod evicted, so free space on the node says nothing). Too small: startup fails at
     once, naming the size needed and the value to change.

A store is valid when its `source.json` records the source's size and fingerprint (sha256 of its
first and last MiB): not its path or mtime, which change when a prepared volume is copied or
mounted elsewhere. The store's own files are checked for truncation when opened.
"""

from __future__ import annotations

import hashlib
import json
import math
import os
import shutil
from dataclasses import dataclass
from pathlib import Path

FINGERPRINT_BYTES = 1024 * 1024
MARKER = "source.json"
# Compact JSON rows are at most the source line (whitespace dropped), plus 8 bytes of offset per
# row (a row is at least ~16 bytes): 1.5 x the source is a safe upper bound, with headroom.
STORE_SIZE_FACTOR = 1.5


class StoreSpaceError(Exception):
    """A store must be made and the writable space cannot hold it."""


@dataclass
class StoreChoice:
    directory: Path
    valid: bool  # True: use as it is; False: convert into `directory`
    needed_bytes: int


def fingerprint(path: Path) -> dict[str, object]:
    size = path.stat().st_size
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        digest.update(handle.read(FINGERPRINT_BYTES))
        if size > FINGERPRINT_BYTES:
            handle.seek(max(FINGERPRINT_BYTES, size - FINGERPRINT_BYTES))
            digest.update(handle.read(FINGERPRINT_BYTES))
    return {"bytes": size, "head_tail_sha256": digest.hexdigest()}


def marker_for(corpus_path: Path, rows: int) -> str:
    source = {"path": str(corpus_path.resolve()), **fingerprint(corpus_path)}
    return json.dumps({"source": source, "rows": rows})


def is_valid_store(store_dir: Path, corpus_path: Path) -> bool:
    try:
        recorded = json.loads((store_dir / MARKER).read_text())["source"]
    except (OSError, ValueError, KeyError, TypeError):
        return False
    if recorded.get("bytes") != corpus_path.stat().st_size or "head_tail_sha256" not in recorded:
        return False
    return recorded["head_tail_sha256"] == fingerprint(corpus_path)["head_tail_sha256"]


def beside(corpus_path: Path) -> Path:
    return corpus_path.parent / f"{corpus_path.name}.store"


def in_cache(corpus_path: Path, data_dir: Path) -> Path:
    digest = hashlib.sha1(str(corpus_path.resolve()).encode()).hexdigest()[:12]
    return data_dir / "corpora" / f"{corpus_path.name}-{digest}.store"


def _used_bytes(directory: Path) -> int:
    if not directory.is_dir():
        return 0
    return sum(p.stat().st_size for p in directory.rglob("*") if p.is_file())


def choose_store(corpus_path: Path, data_dir: Path, cache_size_limit_bytes: int | None = None) -> StoreChoice:
    """Apply the rules above; raises StoreSpaceError before any conversion when space is short."""
    needed = int(corpus_path.stat().st_size * STORE_SIZE_FACTOR)
    for candidate in (beside(corpus_path), in_cache(corpus_path, data_dir)):
        if is_valid_store(candidate, corpus_path):
            return StoreChoice(candidate, True, 0)
    if os.access(corpus_path.parent, os.W_OK):
        target = beside(corpus_path)
        free = shutil.disk_usage(corpus_path.parent).free
        if free < needed:
            raise StoreSpaceError(
                f"{corpus_path}: converting it needs about {needed / 1e9:.2f} GB beside it in {corpus_path.parent}, "
                f"which has {free / 1e9:.2f} GB free: free space there, or pre-make the index directory with "
                "`retriever import` and serve it with --index-dir"
            )
        return StoreChoice(target, False, needed)
    target = in_cache(corpus_path, data_dir)
    data_dir.mkdir(parents=True, exist_ok=True)
    free = shutil.disk_usage(data_dir).free
    room = free
    if cache_size_limit_bytes is not None:
        room = min(free, cache_size_limit_bytes - _used_bytes(data_dir) + _used_bytes(target))
    if room < needed:
        limit = f", limit {cache_size_limit_bytes / 2**30:.2f} GiB" if cache_size_limit_bytes is not None else ""
        raise StoreSpaceError(
            f"{corpus_path}: its directory is read-only and no valid store is beside it, so the corpus must be "
            f"converted into RETRIEVER_DATA_DIR={data_dir}, which needs about {needed / 2**30:.2f} GiB "
            f"(room: {max(room, 0) / 2**30:.2f} GiB{limit}). Raise the chart's `cacheSizeLimit` "
            f"(RETRIEVER_CACHE_SIZE_LIMIT_BYTES) to at least {math.ceil(needed / 2**30)}Gi or point RETRIEVER_DATA_DIR "
            f"at a larger volume; better, make the store once beside the source ({beside(corpus_path)}) or use "
            "`retriever import` and serve the index directory"
        )
    return StoreChoice(target, False, needed)
