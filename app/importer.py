"""`retriever import`: an index directory from existing artifacts (Search-R1's wiki-18), no re-encoding.

Inputs: a FAISS index as one file or as ordered parts (`part_aa part_ab`: concatenated by
streaming, as `cat` would), the passages jsonl (or .jsonl.gz) in index order, and the query
model (a local directory copied into the index directory, or referenced by path/name).

Order of work, cheapest checks first:
  1. the parts exist; the FAISS header of the first part gives type, dimension, row count and
     metric; for a Flat index the parts' total size must be exactly what the header implies
     (a missing or truncated part fails here, in milliseconds);
  2. free space in the output's filesystem; the model loads and its dimension matches the index;
  3. the corpus is converted once, streaming, into the store; it fails as soon as it holds more
     rows than the index, or at its end if it holds fewer;
  4. the parts are concatenated into index.faiss, hashed while copied;
  5. the model is copied (pooling set as asked), the manifest written with checksums, the result
     reopened and queried, and only then the temporary directory is renamed to its final name.

Memory is a few buffers whatever the corpus size. An interrupted import leaves only a hidden
`.NAME.importing-PID` directory without a manifest, which nothing accepts and the next import of
the same output removes.
"""

from __future__ import annotations

import datetime as dt
import errno
import gzip
import hashlib
import json
import logging
import os
import shutil
import struct
import sys
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import IO, Any

import numpy as np

from app.builder import _replace_dir
from app.corpus import OFFSETS_FILE, ROWS_FILE, parse_row
from app.errors import RetrieverError
from app.manifest import CORPUS_DIR, INDEX_FILE, MANIFEST_FILE, FileRecord, Manifest

log = logging.getLogger(__name__)

MODEL_DIR = "model"
# A manifest's model starting with this prefix lives inside the index directory.
IN_INDEX_PREFIX = "./"
COPY_BUFFER = 8 * 1024 * 1024
OFFSETS_FLUSH_ROWS = 65_536
POOLING_KEYS = {
    "mean": "pooling_mode_mean_tokens",
    "cls": "pooling_mode_cls_token",
    "max": "pooling_mode_max_tokens",
    "lasttoken": "pooling_mode_lasttoken",
}
POOLING_MODES = tuple(POOLING_KEYS)
LOG_EVERY_S = 10.0


class ImportError_(RetrieverError):
    """The import cannot complete; nothing that looks like an index directory was left."""


@dataclass(frozen=True)
class Preset:
    query_prefix: str
    passage_prefix: str
    pooling: str
    normalize: bool
    max_length: int


# Search-R1's retriever (search_r1/search/retrieval_server.py with intfloat/e5-base-v2): mean pooling,
# L2-normalised, "query: " before queries ("passage: " was used for the passages), 256 tokens.
PRESETS = {"search-r1-e5": Preset("query: ", "passage: ", "mean", True, 256)}


@dataclass
class ImportOptions:
    index_parts: list[Path]
    corpus: Path
    model: str
    out: Path
    copy_model: bool = True
    query_prefix: str | None = None
    passage_prefix: str | None = None
    pooling: str | None = None
    normalize: bool | None = None
    max_length: int | None = None
    preset: str | None = None
    force: bool = False
    progress: bool = True

    def resolved(self) -> Preset:
        """Explicit values win over the preset; without a preset: no prefix, model's pooling, normalised."""
        base = PRESETS[self.preset] if self.preset else Preset("", "", "", True, 0)
        return Preset(
            self.query_prefix if self.query_prefix is not None else base.query_prefix,
            self.passage_prefix if self.passage_prefix is not None else base.passage_prefix,
            self.pooling if self.pooling is not None else base.pooling,
            self.normalize if self.normalize is not None else base.normalize,
            self.max_length if self.max_length is not None else base.max_length,
        )


@dataclass
class IndexHeader:
    fourcc: str
    dimension: int
    count: int
    metric: str  # "ip" | "l2" | other FAISS metric number as text
    flat_bytes: int | None  # exact file size implied by the header, for plain Flat indexes

    @property
    def type_name(self) -> str:
        return {"IxFI": "Flat", "IxF2": "Flat", "IxFl": "Flat", "IHNf": "HNSW,Flat"}.get(self.fourcc, self.fourcc)


@dataclass
class ImportReport:
    manifest: Manifest
    seconds: float
    index_bytes: int
    index_seconds: float
    corpus_source_bytes: int
    corpus_rows: int
    corpus_seconds: float
    timings: dict[str, float] = field(default_factory=dict)

    def summary(self, out: Path) -> str:
        gb = 1e9
        return (
            f"imported {out}: {self.manifest.count} rows x {self.manifest.dimension} ({self.manifest.index_factory}, "
            f"metric {self.manifest.metric}) in {self.seconds:.1f}s; index {self.index_bytes / gb:.2f} GB copied in "
            f"{self.index_seconds:.1f}s ({self.index_bytes / gb / max(self.index_seconds, 1e-9):.2f} GB/s); corpus "
            f"{self.corpus_source_bytes / gb:.2f} GB read, {self.corpus_rows} rows in {self.corpus_seconds:.1f}s "
            f"({self.corpus_source_bytes / gb / max(self.corpus_seconds, 1e-9):.3f} GB/s, "
            f"{self.corpus_rows / max(self.corpus_seconds, 1e-9):,.0f} rows/s)"
        )


# ---------------------------------------------------------------------------------------------
# progress: a bar on a terminal, a log line every LOG_EVERY_S seconds otherwise


class Progress:
    def __init__(self, total: int, desc: str, enabled: bool = True) -> None:
        self.total, self.desc, self.done = max(total, 1), desc, 0
        self._bar = None
        self._last_log = self._started = time.monotonic()
        if enabled and sys.stderr.isatty():
            from tqdm import tqdm

            self._bar = tqdm(total=total, unit="B", unit_scale=True, desc=desc)

    def update(self, count: int) -> None:
        self.done += count
        if self._bar is not None:
            self._bar.update(count)
            return
        now = time.monotonic()
        if now - self._last_log >= LOG_EVERY_S:
            self._last_log = now
            rate = self.done / max(now - self._started, 1e-9)
            log.info(
                "%s: %.1f%% (%.2f of %.2f GB, %.0f MB/s)",
                self.desc,
                100 * self.done / self.total,
                self.done / 1e9,
                self.total / 1e9,
                rate / 1e6,
            )

    def close(self) -> None:
        if self._bar is not None:
            self._bar.close()


# ---------------------------------------------------------------------------------------------
# FAISS header


def read_index_header(path: Path) -> IndexHeader:
    """The generic header FAISS writes first for every float index (write_index_header):
    fourcc, d (int32), ntotal (int64), two int64 placeholders, is_trained (1 byte), metric (int32)."""
    layout = "<4siqqq?i"
    size = struct.calcsize(layout)
    try:
        with open(path, "rb") as handle:
            head = handle.read(size + 8)
    except OSError as exc:
        raise ImportError_(f"{path}: cannot read the index ({exc.strerror})") from None
    if len(head) < size:
        raise ImportError_(f"{path}: {len(head)} bytes, too short to be a FAISS index")
    fourcc_raw, dimension, count, _, _, _, metric_type = struct.unpack(layout, head[:size])
    fourcc = fourcc_raw.decode("latin-1")
    if not fourcc.isprintable() or dimension <= 0 or dimension > 1 << 20 or count < 0:
        raise ImportError_(f"{path}: not a FAISS index (header {fourcc_raw!r}, d={dimension}, n={count})")
    metric = {0: "ip", 1: "l2"}.get(metric_type, str(metric_type))
    flat_bytes = None
    if fourcc in ("IxFI", "IxF2") and len(head) == size + 8:
        # The vectors follow as one vector<float>: its element count, then count x d x 4 bytes.
        (floats,) = struct.unpack("<Q", head[size:])
        if floats != count * dimension:
            raise ImportError_(f"{path}: Flat header says {count} x {dimension} but holds {floats} floats")
        flat_bytes = size + 8 + 4 * floats
    return IndexHeader(fourcc, dimension, count, metric, flat_bytes)


def check_parts(parts: list[Path]) -> tuple[IndexHeader, int]:
    if not parts:
        raise ImportError_("--index: give the index file, or its parts in order")
    for part in parts:
        if not part.is_file():
            raise ImportError_(f"{part}: index part not found")
    if len(set(p.resolve() for p in parts)) != len(parts):
        raise ImportError_("--index: the same part is given twice")
    header = read_index_header(parts[0])
    total = sum(p.stat().st_size for p in parts)
    if header.flat_bytes is not None and total != header.flat_bytes:
        sizes = ", ".join(f"{p.name} {p.stat().st_size}" for p in parts)
        missing = "missing or truncated" if total < header.flat_bytes else "extra"
        raise ImportError_(
            f"--index: the parts hold {total} bytes ({sizes}) but the FAISS header of {parts[0].name} says "
            f"{header.count} x {header.dimension} float32 = {header.flat_bytes} bytes: a part is {missing} "
            "(give every part, in order)"
        )
    return header, total


# ---------------------------------------------------------------------------------------------
# model


def _pooling_of(model_dir: Path) -> str | None:
    """The pooling mode a sentence-transformers directory declares (None: no pooling module)."""
    try:
        modules = json.loads((model_dir / "modules.json").read_text())
    except (OSError, ValueError):
        return None
    for module in modules:
        if str(module.get("type", "")).endswith("Pooling"):
            try:
                config = json.loads((model_dir / module["path"] / "config.json").read_text())
            except (OSError, ValueError, KeyError):
                return None
            if config.get("pooling_mode"):
                return str(config["pooling_mode"])
            for mode, key in POOLING_KEYS.items():
                if config.get(key):
                    return mode
    return None


def _set_pooling(model_dir: Path, mode: str, dimension: int) -> None:
    """Write the pooling module of a copied model (adding modules.json to a plain transformers dir)."""
    modules_path = model_dir / "modules.json"
    try:
        modules = json.loads(modules_path.read_text())
    except (OSError, ValueError):
        modules = [{"idx": 0, "name": "0", "path": "", "type": "sentence_transformers.models.Transformer"}]
    pooling = [m for m in modules if str(m.get("type", "")).endswith("Pooling")]
    if not pooling:
        module = {"idx": len(modules), "name": str(len(modules)), "path": "1_Pooling"}
        module["type"] = "sentence_transformers.models.Pooling"
        modules.append(module)
        pooling = [module]
    config_path = model_dir / pooling[0]["path"] / "config.json"
    config_path.parent.mkdir(parents=True, exist_ok=True)
    config = {
        "word_embedding_dimension": dimension,
        "pooling_mode_cls_token": mode == "cls",
        "pooling_mode_mean_tokens": mode == "mean",
        "pooling_mode_max_tokens": mode == "max",
        "pooling_mode_mean_sqrt_len_tokens": False,
        "pooling_mode_weightedmean_tokens": False,
        "pooling_mode_lasttoken": mode == "lasttoken",
        "include_prompt": True,
    }
    config_path.write_text(json.dumps(config, indent=2) + "\n")
    modules_path.write_text(json.dumps(modules, indent=2) + "\n")


def _load_encoder(model: str, max_length: int) -> Any:
    from app.encoder import EncoderConfig, SentenceTransformerEncoder, resolve_model

    return SentenceTransformerEncoder(EncoderConfig(model=resolve_model(model), max_length=max_length or None))


def resolve_manifest_model(manifest: Manifest, directory: Path) -> str | None:
    """The model to load for an index directory: a copy inside it, else the path or name recorded
    (None: the bundled demo model)."""
    if manifest.model and manifest.model.startswith(IN_INDEX_PREFIX):
        return str(directory / manifest.model[len(IN_INDEX_PREFIX) :])
    return manifest.model


# ---------------------------------------------------------------------------------------------
# corpus


def _open_corpus(path: Path) -> tuple[IO[bytes], IO[bytes]]:
    """(line source, raw file): progress is counted on the raw (compressed) bytes."""
    try:
        raw = open(path, "rb")  # noqa: SIM115 - closed by the caller
    except OSError as exc:
        raise ImportError_(f"{path}: cannot open corpus ({exc.strerror})") from None
    magic = raw.read(2)
    raw.seek(0)
    if magic == b"\x1f\x8b":
        return gzip.GzipFile(fileobj=raw, mode="rb"), raw  # type: ignore[return-value]
    return raw, raw


class _HashingWriter:
    def __init__(self, path: Path) -> None:
        self.path = path
        self.handle = open(path, "wb", buffering=COPY_BUFFER)  # noqa: SIM115 - closed in close()
        self.digest = hashlib.sha256()
        self.bytes = 0

    def write(self, data: bytes) -> None:
        self.handle.write(data)
        self.digest.update(data)
        self.bytes += len(data)

    def close(self) -> FileRecord:
        self.handle.flush()
        os.fsync(self.handle.fileno())
        self.handle.close()
        return FileRecord(self.bytes, self.digest.hexdigest())


def _iter_lines(source: IO[bytes], path: Path) -> Iterator[bytes]:
    try:
        yield from source
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ImportError_(f"{path}: cannot read the corpus ({exc}); is the download complete?") from None


def convert_corpus(path: Path, store_dir: Path, expected_rows: int, progress: bool) -> tuple[int, dict, int]:
    """Stream the jsonl into a store (corpus.bin + offsets.u64) with sha256 of both; returns
    (rows, file records, source bytes). Fails on the first line past `expected_rows`, and at the
    end when there are fewer: rows must match the index vector for vector."""
    store_dir.mkdir(parents=True)
    source, raw = _open_corpus(path)
    total = path.stat().st_size
    bar = Progress(total, f"corpus {path.name}", progress)
    rows_out = _HashingWriter(store_dir / ROWS_FILE)
    offsets_out = _HashingWriter(store_dir / OFFSETS_FILE)
    pending: list[int] = [0]
    position = rows = 0
    last_raw = 0
    try:
        with source, raw:
            for line_no, line in enumerate(_iter_lines(source, path), start=1):
                if line_no % 4096 == 0:
                    now_raw = raw.tell()
                    bar.update(now_raw - last_raw)
                    last_raw = now_raw
                if not line.strip():
                    continue
                try:
                    _, compact = parse_row(line.rstrip(b"\r\n"))
                except ValueError as exc:
                    raise ImportError_(
                        f"{path}: line {line_no}: {exc}; a corpus row must match its index vector, "
                        "so malformed lines cannot be skipped"
                    ) from None
                rows += 1
                if rows > expected_rows:
                    raise ImportError_(
                        f"{path}: more rows than the index has vectors ({expected_rows}): the corpus does not "
                        "belong to this index (row by row, in order)"
                    )
                rows_out.write(compact)
                position += len(compact)
                pending.append(position)
                if len(pending) >= OFFSETS_FLUSH_ROWS:
                    offsets_out.write(np.asarray(pending, dtype="<u8").tobytes())
                    pending.clear()
            bar.update(total - last_raw)
        if pending:
            offsets_out.write(np.asarray(pending, dtype="<u8").tobytes())
    finally:
        bar.close()
        records = {
            f"{CORPUS_DIR}/{ROWS_FILE}": rows_out.close(),
            f"{CORPUS_DIR}/{OFFSETS_FILE}": offsets_out.close(),
        }
    if rows != expected_rows:
        raise ImportError_(
            f"{path}: {rows} rows but the index has {expected_rows} vectors: they must match row for row "
            "(is the corpus download complete?)"
        )
    return rows, records, total


# ---------------------------------------------------------------------------------------------
# index


def concatenate_parts(parts: list[Path], target: Path, total: int, progress: bool) -> FileRecord:
    """`cat parts > target` through one buffer, hashing on the way (no second read for the checksum)."""
    digest = hashlib.sha256()
    buffer = memoryview(bytearray(COPY_BUFFER))
    bar = Progress(total, f"index {target.name}", progress)
    written = 0
    try:
        with open(target, "wb", buffering=0) as out:
            for part in parts:
                with open(part, "rb", buffering=0) as handle:
                    if hasattr(os, "posix_fadvise"):
                        os.posix_fadvise(handle.fileno(), 0, 0, os.POSIX_FADV_SEQUENTIAL)
                    while count := handle.readinto(buffer):
                        chunk = buffer[:count]
                        digest.update(chunk)
                        view = chunk
                        while view:
                            view = view[out.write(view) :]
                        written += count
                        bar.update(count)
            os.fsync(out.fileno())
    finally:
        bar.close()
    return FileRecord(written, digest.hexdigest())


# ---------------------------------------------------------------------------------------------
# the import


def _free_bytes(directory: Path) -> int:
    return shutil.disk_usage(directory).free


def _tree_bytes(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _describe_os_error(exc: OSError, out: Path) -> str:
    hints = {errno.ENOSPC: "free some space or import elsewhere", errno.EDQUOT: "raise the quota"}
    hint = f" ({hints[exc.errno]})" if exc.errno in hints else ""
    name = exc.filename or out
    return f"{name}: {exc.strerror or exc} while importing{hint}; the partial import was removed"


def _remove_stale(out: Path) -> None:
    """Temporary directories of interrupted imports of the same output (their process is gone)."""
    for stale in out.parent.glob(f".{out.name}.importing-*"):
        pid = stale.name.rsplit("-", 1)[-1]
        if pid.isdigit() and not Path(f"/proc/{pid}").exists():
            log.info("removing %s, left by an interrupted import", stale)
            shutil.rmtree(stale, ignore_errors=True)


def import_index(options: ImportOptions, on_stage: Callable[[str], None] | None = None) -> ImportReport:
    started = time.perf_counter()
    say = on_stage or (lambda text: log.info("import: %s", text))
    settings = options.resolved()
    if settings.pooling and settings.pooling not in POOLING_MODES:
        raise ImportError_(f"--pooling: {settings.pooling!r} is not one of {', '.join(POOLING_MODES)}")
    out = options.out
    if out.exists() and not options.force:
        raise ImportError_(f"{out}: already exists (pass --force to replace it)")
    if not options.corpus.is_file():
        raise ImportError_(f"{options.corpus}: corpus file not found")

    # 1. the parts against their own header
    header, index_bytes = check_parts(options.index_parts)
    if header.metric not in ("ip", "l2"):
        raise ImportError_(f"{options.index_parts[0]}: metric {header.metric} is not served (inner product or L2)")
    say(f"index: {header.type_name}, {header.count} x {header.dimension}, metric {header.metric}, {index_bytes} bytes")

    # 2. space, then the model against the index
    model_path = Path(options.model)
    copy_model = options.copy_model and model_path.is_dir()
    if options.copy_model and not model_path.is_dir():
        raise ImportError_(
            f"--model {options.model}: not a local directory, so it cannot be copied into the index "
            "(give the model's directory, or pass --model-reference to record the name)"
        )
    out.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale(out)
    needed = index_bytes + options.corpus.stat().st_size + (_tree_bytes(model_path) if copy_model else 0)
    free = _free_bytes(out.parent)
    if free < needed:
        raise ImportError_(
            f"{out.parent}: {free / 1e9:.1f} GB free, the import needs at least {needed / 1e9:.1f} GB "
            "(index + corpus, more when the corpus is compressed): import onto a larger volume"
        )
    say(f"loading model {options.model} to check its dimension")
    encoder = _load_encoder(options.model, settings.max_length)
    if encoder.dimension != header.dimension:
        raise ImportError_(
            f"--model {options.model}: embeddings of dimension {encoder.dimension}, but the index holds "
            f"{header.dimension}-d vectors: give the model the index was built with"
        )
    declared = _pooling_of(model_path) if model_path.is_dir() else None
    if settings.pooling and not copy_model and declared not in (None, settings.pooling):
        raise ImportError_(
            f"--model {options.model}: the model pools by {declared} but --pooling {settings.pooling} was asked; "
            "copy the model into the index (drop --model-reference) so that its pooling can be set"
        )

    tmp = out.parent / f".{out.name}.importing-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    timings: dict[str, float] = {}
    try:
        tmp.mkdir()
        # 3. corpus, before the (larger) index copy: a wrong corpus fails early
        say(f"converting corpus {options.corpus}")
        t0 = time.perf_counter()
        rows, corpus_records, corpus_source_bytes = convert_corpus(
            options.corpus, tmp / CORPUS_DIR, header.count, options.progress
        )
        timings["corpus_s"] = time.perf_counter() - t0
        # 4. index
        say(f"concatenating {len(options.index_parts)} part(s) into {INDEX_FILE}")
        t0 = time.perf_counter()
        index_record = concatenate_parts(options.index_parts, tmp / INDEX_FILE, index_bytes, options.progress)
        timings["index_s"] = time.perf_counter() - t0
        # 5. model, manifest, verification
        t0 = time.perf_counter()
        if copy_model:
            say(f"copying model {model_path} into the index directory")
            shutil.copytree(model_path, tmp / MODEL_DIR, symlinks=False)
            if settings.pooling:
                _set_pooling(tmp / MODEL_DIR, settings.pooling, header.dimension)
            model_ref = IN_INDEX_PREFIX + MODEL_DIR
        else:
            model_ref = str(model_path.resolve()) if model_path.is_dir() else options.model
        timings["model_s"] = time.perf_counter() - t0
        files = {INDEX_FILE: index_record, **corpus_records}
        manifest = Manifest(
            model=model_ref,
            dimension=header.dimension,
            metric=header.metric,
            normalize=settings.normalize,
            query_prefix=settings.query_prefix,
            passage_prefix=settings.passage_prefix,
            max_length=settings.max_length or encoder.max_length,
            index_factory=header.type_name,
            count=rows,
            files=files,
            source={
                "imported": True,
                "index_parts": [{"path": str(p), "bytes": p.stat().st_size} for p in options.index_parts],
                "corpus": {"path": str(options.corpus), "bytes": corpus_source_bytes},
                "model": options.model,
                "pooling": settings.pooling or _pooling_of(model_path) or "",
                "preset": options.preset or "",
            },
            created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        )
        t0 = time.perf_counter()
        say("verifying: reopening the index and corpus and running one query")
        _verify(tmp, manifest)
        manifest.write(tmp)  # last: a directory without a manifest is never served
        timings["verify_s"] = time.perf_counter() - t0
        _replace_dir(tmp, out)
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ImportError_(_describe_os_error(exc, out)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return ImportReport(
        manifest=manifest,
        seconds=time.perf_counter() - started,
        index_bytes=index_bytes,
        index_seconds=timings["index_s"],
        corpus_source_bytes=corpus_source_bytes,
        corpus_rows=rows,
        corpus_seconds=timings["corpus_s"],
        timings=timings,
    )


def _verify(directory: Path, manifest: Manifest) -> None:
    """What was written opens (mapped), agrees with the manifest and answers a query for row 0."""
    from app.corpus import CorpusStore
    from app.index import FaissIndex, IndexFileError

    try:
        index = FaissIndex(directory / INDEX_FILE, use_mmap=True)
    except IndexFileError as exc:
        raise ImportError_(f"the concatenated index cannot be read: {exc}") from None
    store = CorpusStore(directory / CORPUS_DIR)
    try:
        if index.count != manifest.count or store.count != manifest.count or index.dimension != manifest.dimension:
            raise ImportError_(
                f"verification failed: index {index.count} x {index.dimension}, corpus {store.count} rows, "
                f"expected {manifest.count} x {manifest.dimension}"
            )
        probe = np.zeros((1, index.dimension), dtype=np.float32)
        probe[0, 0] = 1.0
        if not index.self_test(probe):
            raise ImportError_("verification failed: the imported index returned no result")
    finally:
        store.close()


def is_valid_index_dir(directory: Path) -> bool:
    """A finished index directory: manifest readable and every listed file of the right size."""
    from app.manifest import ManifestError

    try:
        Manifest.read(directory).check_files(directory, checksums=False)
    except ManifestError:
        return False
    return (directory / MANIFEST_FILE).is_file()
