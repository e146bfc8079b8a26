"""`retriever build`: passages jsonl -> embeddings -> FAISS index + corpus store + manifest.

Streams the corpus: memory holds one encoding chunk, the training sample (IVF/PQ only)
and the index itself. Everything is written under a temporary name, verified, then renamed,
so a crash or a full disk never leaves a directory that `serve` would accept.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import errno
import logging
import os
import shutil
import sys
from collections.abc import Iterator
from pathlib import Path

import faiss
import numpy as np

from app.corpus import CORPUS_DIR_FILES, ConversionReport, CorpusStore, CorpusWriter, iter_jsonl
from app.encoder import SentenceTransformerEncoder
from app.errors import RetrieverError
from app.index import FaissIndex
from app.manifest import CORPUS_DIR, INDEX_FILE, MANIFEST_FILE, Manifest, record_files
from app.progress import Progress
from app.spec import BuildOptions

log = logging.getLogger(__name__)


class BuildError(RetrieverError):
    """The build cannot complete; nothing was left at the output path."""


def _chunks(rows: Iterator[tuple[dict, bytes]], size: int) -> Iterator[list[tuple[dict, bytes]]]:
    chunk: list[tuple[dict, bytes]] = []
    for row in rows:
        chunk.append(row)
        if len(chunk) == size:
            yield chunk
            chunk = []
    if chunk:
        yield chunk


def build(options: BuildOptions) -> Manifest:
    out = options.out
    if not options.corpus.is_file():
        raise BuildError(f"{options.corpus}: corpus file not found")
    if out.exists() and not options.force:
        raise BuildError(f"{out}: already exists (pass --force to replace it)")
    tmp = out.parent / f".{out.name}.building-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        manifest = _build_into(tmp, options)
        if options.export_onnx:
            # Exported now, into the directory being built: nothing is exported at serve time.
            from app.encoder_onnx import export_checked

            export_checked(options.model or manifest.model, tmp, manifest)
        _replace_dir(tmp, out)
        return manifest
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BuildError(_describe_write_error(exc, out)) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


class _WriteFailed(OSError):
    """An OSError while writing `target` (its final name: the temporary directory is removed)."""

    def __init__(self, cause: OSError, target: Path) -> None:
        super().__init__(cause.errno, cause.strerror or str(cause))
        self.target = target


@contextlib.contextmanager
def _writing(target: Path) -> Iterator[None]:
    try:
        yield
    except _WriteFailed:
        raise
    except OSError as exc:
        raise _WriteFailed(exc, target) from exc


def _describe_write_error(exc: OSError, out: Path) -> str:
    name = exc.target if isinstance(exc, _WriteFailed) else Path(exc.filename or out)
    hints = {
        errno.ENOSPC: "free some space or build elsewhere",
        errno.EDQUOT: "raise the quota or build elsewhere",
        errno.EFBIG: "the filesystem's or the process's file size limit (ulimit -f) is too small",
    }
    hint = f" ({hints[exc.errno]})" if exc.errno in hints else ""
    return f"{name}: {exc.strerror or exc} while building{hint}; the partial build was removed, nothing was written"


def _write_index(index: faiss.Index, path: Path) -> None:
    """faiss.write_index through a Python file: a failed write (full disk, file size limit) raises
    OSError with its errno, and the flush + fsync catch what FAISS's fclose would not report."""
    with open(path, "wb") as handle:
        faiss.write_index(index, faiss.PyCallbackIOWriter(handle.write))
        handle.flush()
        os.fsync(handle.fileno())


def _replace_dir(tmp: Path, out: Path) -> None:
    if out.exists():
        old = out.parent / f".{out.name}.old-{os.getpid()}"
        os.rename(out, old)
        os.rename(tmp, out)
        shutil.rmtree(old, ignore_errors=True)
    else:
        os.rename(tmp, out)


def _build_into(tmp: Path, options: BuildOptions) -> Manifest:
    encoder = SentenceTransformerEncoder(options.encoder_config())
    try:
        index = faiss.index_factory(encoder.dimension, options.index_factory, faiss.METRIC_INNER_PRODUCT)
    except RuntimeError as exc:
        raise BuildError(f"index type {options.index_factory!r} is not a valid FAISS factory string: {exc}") from None

    report = ConversionReport()
    with _writing(options.out / CORPUS_DIR):
        writer = CorpusWriter(tmp / CORPUS_DIR)
    total = options.corpus.stat().st_size
    bar = Progress(
        "build: encoding passages",
        total,
        "B",
        mode="auto" if options.progress else "off",
        on_fraction=options.on_progress,
    )
    training: list[np.ndarray] = []
    training_rows = 0
    rows = iter_jsonl(options.corpus, report, options.skip_invalid, on_bytes=bar.update)
    try:
        with _writing(options.out / CORPUS_DIR):
            for chunk in _chunks(rows, options.chunk_size):
                vectors = encoder.encode([row["contents"] for row, _ in chunk])
                for _, compact in chunk:
                    writer.add(compact)
                if index.is_trained:
                    index.add(vectors)
                    continue
                training.append(vectors)
                training_rows += len(vectors)
                if training_rows >= options.train_size:
                    _train_and_flush(index, training)
            if not index.is_trained:
                _train_and_flush(index, training)
    finally:
        bar.close(ok=sys.exc_info()[0] is None)
        with _writing(options.out / CORPUS_DIR):
            writer.close()
    if report.rows == 0:
        raise BuildError(f"{options.corpus}: no passages found")
    log.info(
        "encoded %d passages (%d blank lines, %d skipped)",
        report.rows,
        report.blank_lines,
        report.bad_line_count,
    )

    with _writing(options.out / INDEX_FILE):
        _write_index(index, tmp / INDEX_FILE)
    del index
    names = [INDEX_FILE] + [f"{CORPUS_DIR}/{name}" for name in CORPUS_DIR_FILES]
    manifest = Manifest(
        model=options.model,
        dimension=encoder.dimension,
        metric="ip",
        normalize=options.normalize,
        query_prefix=options.query_prefix,
        passage_prefix=options.passage_prefix,
        max_length=encoder.max_length,
        index_factory=options.index_factory,
        count=report.rows,
        files=record_files(tmp, names),
        source={
            "path": str(options.corpus),
            "bytes": total,
            "blank_lines": report.blank_lines,
            "skipped_lines": [vars(bad) for bad in report.bad_lines],
            "skipped_count": report.bad_line_count,
        },
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    )
    with _writing(options.out / MANIFEST_FILE):
        manifest.write(tmp)
    _verify_built(tmp, manifest, encoder)
    return manifest


def _train_and_flush(index: faiss.Index, training: list[np.ndarray]) -> None:
    sample = np.concatenate(training) if training else np.zeros((0, index.d), dtype=np.float32)
    try:
        index.train(sample)
    except RuntimeError as exc:
        message = str(exc).strip().splitlines()[-1]
        raise BuildError(f"cannot train the index on {len(sample)} passages: {message}") from None
    index.add(sample)
    training.clear()


def _verify_built(directory: Path, manifest: Manifest, encoder: SentenceTransformerEncoder) -> None:
    """Reload what was written and check it answers, before it gets its final name."""
    loaded = FaissIndex(directory / INDEX_FILE, use_mmap=True)
    store = CorpusStore(directory / CORPUS_DIR)
    try:
        if loaded.count != manifest.count or store.count != manifest.count:
            raise BuildError(
                f"verification failed: index holds {loaded.count} vectors, corpus {store.count} rows, "
                f"expected {manifest.count}"
            )
        probe = encoder.encode([store.row(0)["contents"]])
        _, ids = loaded.search(probe, 1)
        if ids[0, 0] < 0:
            raise BuildError("verification failed: the built index returned no result for its first passage")
    finally:
        store.close()
