"""The manifest of an index directory: what was built, with which model, and checksums."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from app.errors import RetrieverError
from app.progress import Progress

MANIFEST_FILE = "manifest.json"
INDEX_FILE = "index.faiss"
CORPUS_DIR = "corpus"
FORMAT_VERSION = 1


class ManifestError(RetrieverError):
    """A manifest that is missing, unreadable or disagrees with the files beside it."""


@dataclass
class FileRecord:
    bytes: int
    sha256: str


@dataclass
class Manifest:
    model: str
    dimension: int
    metric: str
    normalize: bool
    query_prefix: str
    passage_prefix: str
    max_length: int
    index_factory: str
    count: int
    files: dict[str, FileRecord] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)
    created: str = ""
    format_version: int = FORMAT_VERSION
    # Recall against exact search measured by `retriever convert` (app/recall.py); empty for Flat.
    recall: dict[str, Any] = field(default_factory=dict)

    def write(self, directory: Path) -> None:
        path = directory / MANIFEST_FILE
        path.write_text(json.dumps(asdict(self), indent=2, ensure_ascii=False) + "\n")

    @classmethod
    def read(cls, directory: Path) -> Manifest:
        path = directory / MANIFEST_FILE
        if not directory.is_dir():
            raise ManifestError(f"{directory}: index directory does not exist")
        if not path.is_file():
            raise ManifestError(f"{path}: manifest is missing (not an index directory made by `retriever build`)")
        try:
            raw = json.loads(path.read_text())
            raw["files"] = {name: FileRecord(**rec) for name, rec in raw.get("files", {}).items()}
            manifest = cls(**raw)
        except (OSError, ValueError, TypeError) as exc:
            raise ManifestError(f"{path}: unreadable manifest ({exc})") from None
        if manifest.format_version != FORMAT_VERSION:
            raise ManifestError(f"{path}: format version {manifest.format_version}, expected {FORMAT_VERSION}")
        return manifest

    def check_files(self, directory: Path, checksums: bool, on_fraction: Callable[[float], None] | None = None) -> None:
        """Sizes always (cheap, catches truncation); sha256 when asked (reads every byte, with progress)."""
        for name, record in self.files.items():
            path = directory / name
            if not path.is_file():
                raise ManifestError(f"{path}: listed in the manifest but missing")
            size = path.stat().st_size
            if size != record.bytes:
                raise ManifestError(f"{path}: {size} bytes, the manifest says {record.bytes} (truncated or replaced)")
        if not checksums:
            return
        total = sum(record.bytes for record in self.files.values())
        with Progress("verify: sha256", total, "B", on_fraction=on_fraction) as progress:
            for name, record in self.files.items():
                if sha256_file(directory / name, on_bytes=progress.update) != record.sha256:
                    raise ManifestError(f"{directory / name}: sha256 does not match the manifest (corrupted)")


def sha256_file(path: Path, chunk: int = 8 * 1024 * 1024, on_bytes: Callable[[int], None] | None = None) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        while block := handle.read(chunk):
            digest.update(block)
            if on_bytes is not None:
                on_bytes(len(block))
    return digest.hexdigest()


def record_files(directory: Path, names: list[str]) -> dict[str, FileRecord]:
    return {name: FileRecord((directory / name).stat().st_size, sha256_file(directory / name)) for name in names}
