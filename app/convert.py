"""`retriever convert SRC_DIR --index-type FACTORY --out OUT_DIR`: a compressed or ANN index made from
an existing Flat index directory, without re-encoding the corpus.

Memory: the source vectors are read through a mapping of the source file, one chunk at a time; each
chunk's pages are released (MADV_DONTNEED) once added, so the process holds the output index, the
training sample and one chunk, never a copy of the source. The corpus store is not copied: the new
directory's `corpus` is a symlink to the source's, and the model is referenced by the same name.
Everything is written under a temporary name, verified (count, a query), measured (recall against
exact search, see app/recall.py) and only then renamed to OUT_DIR, like `retriever build`.
"""

from __future__ import annotations

import contextlib
import datetime as dt
import logging
import math
import mmap
import os
import re
import shutil
import struct
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import faiss
import numpy as np
from tqdm import tqdm

from app import recall
from app.builder import _replace_dir, _write_index, _writing
from app.errors import RetrieverError
from app.index import FaissIndex
from app.manifest import CORPUS_DIR, INDEX_FILE, MANIFEST_FILE, Manifest, record_files

log = logging.getLogger(__name__)

# k-means wants at least this many training points per list (FAISS warns below 39).
MIN_POINTS_PER_LIST = 39
# PQ trains 256 centroids per sub-quantizer.
PQ_CENTROIDS = 256
DEFAULT_TARGET_RECALL = 0.95


class ConvertError(RetrieverError):
    """The conversion cannot complete; nothing was left at the output path."""


@dataclass
class ConvertOptions:
    source: Path
    out: Path
    index_type: str
    train_size: int = 100_000
    chunk_size: int = 65_536
    queries: Path | None = None
    recall_queries: int = 500
    target_recall: float = DEFAULT_TARGET_RECALL
    measure_recall: bool = True
    threads: int = 0
    force: bool = False
    progress: bool = True
    seed: int = 0


@dataclass
class ConvertResult:
    manifest: Manifest
    factory: str
    recommended_nlist: int | None
    seconds: dict[str, float] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def recommended_nlist(count: int) -> int:
    """IVF lists for `count` vectors: the power of two nearest 4 x sqrt(N) (FAISS's guidance is
    4-16 x sqrt(N)), at most N / 39 so k-means has enough points per list, at least 1."""
    if count < MIN_POINTS_PER_LIST:
        return 1
    target = 4 * math.sqrt(count)
    nlist = 2 ** round(math.log2(target))
    cap = count // MIN_POINTS_PER_LIST
    while nlist > cap and nlist > 1:
        nlist //= 2
    return max(nlist, 1)


_IVF_WITHOUT_N = re.compile(r"\bIVF(?=,|$)")


def resolve_factory(factory: str, count: int, dimension: int) -> tuple[str, int | None]:
    """The factory string with `IVF` (no list count) filled in; returns (string, recommended nlist)."""
    factory = factory.strip()
    if not factory:
        raise ConvertError("--index-type: empty factory string")
    recommended = None
    if _IVF_WITHOUT_N.search(factory):
        recommended = recommended_nlist(count)
        factory = _IVF_WITHOUT_N.sub(f"IVF{recommended}", factory)
    for m in re.findall(r"PQ(\d+)", factory):
        if dimension % int(m):
            raise ConvertError(
                f"--index-type {factory}: PQ{m} needs the dimension ({dimension}) to be a multiple of {m}"
            )
    return factory, recommended


def _stream(desc: str, total: int, unit: str, enabled: bool) -> tqdm:
    # A bar on a terminal; elsewhere (logs, pods) a line every 10 s.
    tty = sys.stderr.isatty()
    return tqdm(total=total, desc=desc, unit=unit, unit_scale=True, disable=not enabled, mininterval=0.5 if tty else 10)


class FlatSource:
    """The vectors of a Flat index file, read through this process's own mapping, chunk by chunk.

    IndexFlat files end with the vectors (a uint64 count of floats, then N x d float32), so they sit
    at file_size - N*d*4. That offset is checked against the count field and against a row
    reconstructed by FAISS from its own mapping of the file.
    """

    def __init__(self, path: Path) -> None:
        self.path = path
        self.faiss_index = FaissIndex(path, use_mmap=True)
        inner = faiss.downcast_index(self.faiss_index.index)
        if type(inner) not in (faiss.IndexFlatIP, faiss.IndexFlatL2):
            raise ConvertError(
                f"{path}: the source must be a Flat index (IndexFlatIP or IndexFlatL2), it is {type(inner).__name__}"
            )
        self.count, self.dimension, self.metric = inner.ntotal, inner.d, self.faiss_index.metric
        size = path.stat().st_size
        data_bytes = self.count * self.dimension * 4
        self.offset = size - data_bytes
        self._file = open(path, "rb")  # noqa: SIM115 (closed in close())
        self._map = mmap.mmap(self._file.fileno(), 0, access=mmap.ACCESS_READ)
        (floats,) = struct.unpack("<Q", self._map[self.offset - 8 : self.offset])
        if floats != self.count * self.dimension:
            raise ConvertError(f"{path}: unexpected Flat index layout (vector count field {floats})")
        self.rows = np.frombuffer(self._map, dtype=np.float32, count=self.count * self.dimension, offset=self.offset)
        self.rows = self.rows.reshape(self.count, self.dimension)
        if self.count and not np.array_equal(self.rows[self.count - 1], inner.reconstruct(self.count - 1)):
            raise ConvertError(f"{path}: vectors read from the file differ from FAISS's (unexpected layout)")

    def chunks(self, size: int) -> Iterator[tuple[int, np.ndarray]]:
        for lo in range(0, self.count, size):
            hi = min(lo + size, self.count)
            yield lo, self.rows[lo:hi]
            self.release(lo, hi)

    def release(self, lo: int, hi: int) -> None:
        """Drop this process's pages of rows [lo, hi) (they stay in the page cache for others)."""
        start = self.offset + lo * self.dimension * 4
        page = mmap.PAGESIZE
        aligned = start - start % page
        length = self.offset + hi * self.dimension * 4 - aligned
        if hasattr(self._map, "madvise") and length > 0:
            self._map.madvise(mmap.MADV_DONTNEED, aligned, length)

    def sample(self, count: int, seed: int, progress: bool) -> np.ndarray:
        """`count` distinct random rows, gathered in row order (one pass over the file)."""
        count = min(count, self.count)
        rng = np.random.default_rng(seed)
        picked = np.sort(rng.choice(self.count, size=count, replace=False))
        out = np.empty((count, self.dimension), dtype=np.float32)
        bar = _stream("training sample", count, "vec", progress)
        step = max(1, count // 100)
        for start in range(0, count, step):
            ids = picked[start : start + step]
            out[start : start + len(ids)] = self.rows[ids]
            # Drop the pages behind this step (the kernel maps neighbouring pages on each fault:
            # without this a 10% sample brought the whole file into this process's RSS).
            self.release(int(ids[0]), int(ids[-1]) + 1)
            bar.update(len(ids))
        bar.close()
        return out

    def close(self) -> None:
        self.rows = np.empty((0, self.dimension), dtype=np.float32)
        with contextlib.suppress(BufferError):  # a view still alive elsewhere: the GC closes it later
            self._map.close()
        self._file.close()


def _train_size(factory: str, index: faiss.Index, asked: int, count: int) -> tuple[int, list[str]]:
    notes = []
    needed = 0
    ivf = faiss.try_extract_index_ivf(index)
    if ivf is not None:
        needed = max(needed, MIN_POINTS_PER_LIST * ivf.nlist)
    if "PQ" in factory:
        needed = max(needed, MIN_POINTS_PER_LIST * PQ_CENTROIDS)
    size = min(asked, count)
    if needed and size < needed:
        notes.append(
            f"training sample {size:,} is below {needed:,} (39 points per centroid) for {factory}: "
            f"{'raise --train-size' if count > size else 'the source has too few vectors'}; quality may suffer"
        )
    return size, notes


def convert(options: ConvertOptions) -> ConvertResult:
    src, out = options.source, options.out
    source_manifest = Manifest.read(src)
    source_manifest.check_files(src, checksums=False)
    if out.exists() and not options.force:
        raise ConvertError(f"{out}: already exists (pass --force to replace it)")
    if out.resolve() == src.resolve():
        raise ConvertError(f"{out}: the output cannot be the source directory")
    if options.chunk_size < 1 or options.train_size < 1 or options.recall_queries < 1:
        raise ConvertError("--chunk-size, --train-size and --recall-queries must be at least 1")
    if options.threads:
        faiss.omp_set_num_threads(options.threads)
    tmp = out.parent / f".{out.name}.converting-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    try:
        out.parent.mkdir(parents=True, exist_ok=True)
        tmp.mkdir()
        result = _convert_into(tmp, options, source_manifest)
        _replace_dir(tmp, out)
        return result
    except OSError as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ConvertError(
            f"{getattr(exc, 'target', exc.filename or out)}: {exc.strerror or exc} while converting; "
            "the partial output was removed"
        ) from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def _convert_into(tmp: Path, options: ConvertOptions, source_manifest: Manifest) -> ConvertResult:
    src = options.source
    source = FlatSource(src / INDEX_FILE)
    try:
        return _convert_from(tmp, options, source_manifest, source)
    finally:
        source.close()


def _convert_from(tmp: Path, options: ConvertOptions, source_manifest: Manifest, source: FlatSource) -> ConvertResult:
    factory, nlist = resolve_factory(options.index_type, source.count, source.dimension)
    notes: list[str] = []
    if nlist is not None:
        log.info(
            "no list count given: recommended nlist %d for %d vectors (power of two nearest 4 x sqrt(N), at most N/39)",
            nlist,
            source.count,
        )
    metric = faiss.METRIC_INNER_PRODUCT if source.metric == "ip" else faiss.METRIC_L2
    try:
        index = faiss.index_factory(source.dimension, factory, metric)
    except RuntimeError as exc:
        message = str(exc).strip().splitlines()[-1] if str(exc).strip() else "invalid"
        raise ConvertError(f"--index-type {factory!r}: not a valid FAISS factory string ({message})") from None
    if isinstance(faiss.downcast_index(index), faiss.IndexFlat):
        raise ConvertError(f"--index-type {factory!r}: that is a Flat index already; nothing to convert")
    seconds: dict[str, float] = {}

    if not index.is_trained:
        size, train_notes = _train_size(factory, faiss.downcast_index(index), options.train_size, source.count)
        if "OPQ" in factory and size < MIN_POINTS_PER_LIST * PQ_CENTROIDS:
            # FAISS's OPQ training crashed the whole process (SIGSEGV) on 300 vectors here: refuse instead.
            raise ConvertError(
                f"--index-type {factory}: OPQ needs a training sample of at least "
                f"{MIN_POINTS_PER_LIST * PQ_CENTROIDS:,} vectors (has {size:,}: raise --train-size, or use "
                "IVF{n},PQ{m} without OPQ on a source this small)"
            )
        notes += train_notes
        for note in train_notes:
            log.warning(note)
        started = time.perf_counter()
        sample = source.sample(size, options.seed, options.progress)
        log.info("training %s on %d vectors (k-means: this is the slow step for IVF/PQ)", factory, len(sample))
        try:
            index.train(sample)
        except RuntimeError as exc:
            message = str(exc).strip().splitlines()[-1]
            raise ConvertError(f"cannot train {factory} on {len(sample)} vectors: {message}") from None
        del sample
        seconds["train"] = round(time.perf_counter() - started, 2)
        log.info("trained in %.1fs", seconds["train"])

    started = time.perf_counter()
    bar = _stream(f"adding to {factory}", source.count, "vec", options.progress)
    for _, chunk in source.chunks(options.chunk_size):
        index.add(chunk)
        bar.update(len(chunk))
    bar.close()
    seconds["add"] = round(time.perf_counter() - started, 2)

    recall_report: dict[str, Any] = {}
    if options.measure_recall:
        started = time.perf_counter()
        recall_report = _measure_recall(index, source, source_manifest, options)
        seconds["recall"] = round(time.perf_counter() - started, 2)

    with _writing(options.out / INDEX_FILE):
        _write_index(index, tmp / INDEX_FILE)
    del index
    # The corpus store is shared: a symlink to the source's (absolute, so the output may move).
    os.symlink((src_corpus := (options.source / CORPUS_DIR).resolve()), tmp / CORPUS_DIR, target_is_directory=True)
    files = record_files(tmp, [INDEX_FILE])
    files.update({name: record for name, record in source_manifest.files.items() if name.startswith(CORPUS_DIR + "/")})
    manifest = Manifest(
        model=source_manifest.model,
        dimension=source.dimension,
        metric=source.metric,
        normalize=source_manifest.normalize,
        query_prefix=source_manifest.query_prefix,
        passage_prefix=source_manifest.passage_prefix,
        max_length=source_manifest.max_length,
        index_factory=factory,
        count=source.count,
        files=files,
        source={
            "converted_from": str(options.source.resolve()),
            "exact_index": str((options.source / INDEX_FILE).resolve()),
            "source_index_factory": source_manifest.index_factory,
            "corpus": str(src_corpus),
            "train_size": options.train_size,
            "seconds": seconds,
        },
        created=dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
        recall=recall_report,
    )
    with _writing(options.out / MANIFEST_FILE):
        manifest.write(tmp)
    _verify(tmp, manifest, source)
    return ConvertResult(manifest, factory, nlist, seconds, notes)


def _query_sample(source: FlatSource, manifest: Manifest, options: ConvertOptions) -> recall.QuerySample:
    from app.encoder import EncoderConfig, EncoderError, SentenceTransformerEncoder, resolve_model

    def encoder() -> SentenceTransformerEncoder:
        return SentenceTransformerEncoder(
            EncoderConfig(
                model=resolve_model(manifest.model),
                prefix=manifest.query_prefix,
                normalize=manifest.normalize,
                max_length=manifest.max_length,
            )
        )

    if options.queries is not None and options.queries.suffix == ".npy":
        vectors = recall.read_query_vectors(options.queries, options.recall_queries, source.dimension,
                                            manifest.normalize)  # fmt: skip
        return recall.QuerySample(vectors, "vectors-file", f"{len(vectors)} query vectors from {options.queries}")
    if options.queries is not None:
        texts = recall.read_query_file(options.queries, options.recall_queries)
        vectors = encoder().encode(texts)
        return recall.QuerySample(vectors, "file", f"{len(texts)} queries from {options.queries}")
    from app.corpus import CorpusStore

    try:
        store = CorpusStore(options.source / CORPUS_DIR)
        try:
            titles = recall.corpus_titles(store, options.recall_queries, options.seed)
        finally:
            store.close()
        vectors = encoder().encode(titles)
        return recall.QuerySample(
            vectors, "corpus-titles", f"{len(titles)} corpus titles (random rows) encoded with {manifest.model}"
        )
    except (EncoderError, OSError, ValueError) as exc:
        log.warning("cannot encode corpus titles (%s): falling back to perturbed index vectors", exc)
    vectors = recall.perturbed_vectors(source.rows, options.recall_queries, manifest.normalize, options.seed)
    source.release(0, source.count)
    return recall.QuerySample(
        vectors,
        "perturbed-vectors",
        f"{len(vectors)} index vectors plus noise of norm {recall.PERTURB_NORM} x |v| (no model available)",
    )


def _measure_recall(
    index: faiss.Index, source: FlatSource, manifest: Manifest, options: ConvertOptions
) -> dict[str, Any]:
    sample = _query_sample(source, manifest, options)
    log.info("recall queries: %s", sample.description)
    k = max(recall.RECALL_KS)
    bar = _stream("exact search (ground truth)", source.count, "vec", options.progress)

    def scanned(lo: int, hi: int) -> None:
        source.release(lo, hi)
        bar.update(hi - lo)

    exact = recall.exact_topk(source.rows, sample.vectors, k, source.metric, on_rows=scanned)
    bar.close()
    knob, settings = recall.knob_sweep(index)
    rows = recall.measure(index, sample.vectors, exact, settings or [None], knob)
    chosen = recall.choose(rows, options.target_recall)
    # The chosen setting is stored in the index file (FAISS saves nprobe / efSearch): it is what
    # `serve` uses unless --nprobe / --ef-search say otherwise.
    recall.apply_knob(index, knob, chosen["knob"].get(knob) if knob else None)
    return {
        "queries": {"source": sample.source, "count": len(sample.vectors), "description": sample.description},
        "k": list(recall.RECALL_KS),
        "knob": knob,
        "settings": rows,
        "default": chosen["knob"],
        "target_recall@10": options.target_recall,
        "meets_target": chosen["recall@10"] >= options.target_recall,
        "measured": dt.datetime.now(dt.timezone.utc).isoformat(timespec="seconds"),
    }


def _verify(directory: Path, manifest: Manifest, source: FlatSource) -> None:
    loaded = FaissIndex(directory / INDEX_FILE, use_mmap=True)
    if loaded.count != manifest.count:
        raise ConvertError(
            f"verification failed: the new index holds {loaded.count} vectors, expected {manifest.count}"
        )
    probe = np.ascontiguousarray(source.rows[:1])
    _, ids = loaded.search(probe, 1)
    source.release(0, 1)
    if manifest.count and ids[0, 0] < 0:
        raise ConvertError("verification failed: the new index returned no result for the first source vector")
    Manifest.read(directory).check_files(directory, checksums=False)


def cmd_convert(args: Any) -> int:
    """`retriever convert` (arguments parsed in app/cli.py): converts, prints the recall table."""
    result = convert(
        ConvertOptions(
            source=Path(args.source),
            out=Path(args.out),
            index_type=args.index_type,
            train_size=args.train_size,
            chunk_size=args.chunk_size,
            queries=Path(args.queries) if args.queries else None,
            recall_queries=args.recall_queries,
            target_recall=args.target_recall,
            measure_recall=not args.no_recall,
            threads=args.threads,
            force=args.force,
            progress=not args.no_progress,
        )
    )
    manifest = result.manifest
    for note in result.notes:
        print(f"note: {note}")
    if result.recommended_nlist is not None:
        print(
            f"recommended nlist for {manifest.count:,} vectors: {result.recommended_nlist} -> {result.factory} "
            "(power of two nearest 4 x sqrt(N), at most N/39 so k-means gets 39 points per list)"
        )
    timing = ", ".join(f"{stage} {s:.1f}s" for stage, s in result.seconds.items())
    print(f"converted {args.source} -> {args.out}: {result.factory}, {manifest.count:,} vectors ({timing})")
    print(f"index file: {manifest.files[INDEX_FILE].bytes / 2**20:,.1f} MiB; corpus shared with {args.source}")
    if manifest.recall:
        report = manifest.recall
        print(
            f"recall against exact search; queries: {report['queries']['description']} [{report['queries']['source']}]"
        )
        chosen = next((row for row in report["settings"] if row["knob"] == report["default"]), None)
        print(recall.format_table(report["settings"], chosen))
        if report["knob"]:
            verdict = "reaches" if report["meets_target"] else "does NOT reach"
            print(
                f"stored default {report['knob']} {report['default'][report['knob']]}: {verdict} recall@10 "
                f">= {report['target_recall@10']} (override with serve --nprobe / --ef-search)"
            )
    return 0
