"""`retriever fetch`: download an index's artifacts over HTTP(S), then `retriever import` them.

Made for the chart's initContainer (and for a person at a shell): the index parts, the corpus and
optionally a model archive are downloaded into a work directory on the index volume

  - resumable: a download continues from its `.partial` file with an HTTP Range request (a server
    that ignores Range answers 200, and the download starts again from zero); network errors are
    retried with back-off, each retry resuming;
  - checksummed when a sha256 is given (hashed while downloading, the resumed prefix first);
  - with progress in the log (percent, GB, MB/s every few seconds);

then imported into `--out` (atomic, see app/importer.py) and the downloads deleted. When `--out`
already is a valid index directory nothing is downloaded: a restarted pod on a volume that keeps
its data (hostPath, PVC) starts at once.
"""

from __future__ import annotations

import hashlib
import logging
import shutil
import tarfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import unquote, urlparse

import httpx

from app.errors import RetrieverError
from app.importer import ImportOptions, ImportReport, Progress, import_index, is_valid_index_dir

log = logging.getLogger(__name__)

CHUNK = 4 * 1024 * 1024
PARTIAL_SUFFIX = ".partial"


class FetchError(RetrieverError):
    """A download that cannot complete; the message names the URL and the problem."""


@dataclass
class Download:
    url: str
    sha256: str | None = None
    name: str = ""

    def file_name(self) -> str:
        if self.name:
            return self.name
        name = Path(unquote(urlparse(self.url).path)).name
        if not name:
            raise FetchError(f"{self.url}: the URL names no file; cannot choose a download name")
        return name


@dataclass
class FetchOptions:
    index: list[Download]
    corpus: Download
    out: Path
    work_dir: Path | None = None
    model: str | None = None  # a local directory (e.g. baked into the image) or a name
    model_archive: Download | None = None  # a .tar/.tar.gz of a model directory
    import_options: dict = field(default_factory=dict)  # preset, query_prefix, pooling, ...
    retries: int = 5
    timeout_s: float = 60.0
    keep_downloads: bool = False
    progress: bool = True


def download(item: Download, directory: Path, options: FetchOptions, client: httpx.Client) -> Path:
    """Download `item` into `directory`, resuming a partial file; verify its sha256 when given."""
    target = directory / item.file_name()
    if target.is_file() and item.sha256 is None:
        log.info("%s: already downloaded", target)
        return target
    partial = target.with_name(target.name + PARTIAL_SUFFIX)
    if target.is_file():  # complete but unverified yet: verify it in place
        target.rename(partial)
    attempt = 0
    while True:
        try:
            _download_once(item, partial, options, client)
            break
        except (httpx.TransportError, httpx.HTTPStatusError, _Retry) as exc:
            status = getattr(getattr(exc, "response", None), "status_code", None)
            if status is not None and 400 <= status < 500 and status not in (408, 429):
                raise FetchError(f"{item.url}: HTTP {status}; check the URL") from None
            attempt += 1
            if attempt > options.retries:
                raise FetchError(f"{item.url}: failed after {options.retries} retries: {exc}") from None
            wait = min(2**attempt, 30)
            log.warning("%s: %s; resuming in %ds (retry %d of %d)", item.url, exc, wait, attempt, options.retries)
            time.sleep(wait)
    partial.rename(target)
    return target


class _Retry(Exception):
    pass


def _download_once(item: Download, partial: Path, options: FetchOptions, client: httpx.Client) -> None:
    digest = hashlib.sha256()
    have = partial.stat().st_size if partial.is_file() else 0
    if have and item.sha256:
        with open(partial, "rb") as handle:
            while block := handle.read(CHUNK):
                digest.update(block)
    headers = {"Range": f"bytes={have}-"} if have else {}
    with client.stream("GET", item.url, headers=headers, timeout=options.timeout_s) as response:
        if response.status_code == 416 and have:  # nothing left to fetch: the partial file is whole
            total = have
        else:
            response.raise_for_status()
            if have and response.status_code != 206:
                log.info("%s: the server ignores Range requests; downloading from the start", item.url)
                have, digest = 0, hashlib.sha256()
            length = response.headers.get("content-length")
            total = have + int(length) if length is not None else 0
            bar = Progress(total, f"download {item.file_name()}", options.progress)
            bar.update(have)
            mode = "ab" if have else "wb"
            received = have
            try:
                with open(partial, mode) as out:
                    for block in response.iter_raw():  # as received: a cut keeps what came
                        out.write(block)
                        if item.sha256:
                            digest.update(block)
                        received += len(block)
                        bar.update(len(block))
            finally:
                bar.close()
            if total and received != total:
                raise _Retry(f"connection closed at {received} of {total} bytes")
            total = received
    if item.sha256:
        if digest.hexdigest() != item.sha256.lower():
            partial.unlink()
            raise FetchError(
                f"{item.url}: sha256 {digest.hexdigest()} does not match the expected {item.sha256} "
                "(the download was deleted; check the checksum or the source)"
            )
        log.info("%s: sha256 ok", item.file_name())
    log.info("%s: %d bytes", item.file_name(), total)


def _unpack_model(archive: Path, directory: Path) -> Path:
    """A model archive unpacked into `directory`; the model is its single top-level directory, if any."""
    target = directory / "model-unpacked"
    shutil.rmtree(target, ignore_errors=True)
    try:
        with tarfile.open(archive) as tar:
            tar.extractall(target, filter="data")
    except (tarfile.TarError, OSError) as exc:
        raise FetchError(f"{archive}: cannot unpack the model archive ({exc})") from None
    entries = [p for p in target.iterdir()]
    return entries[0] if len(entries) == 1 and entries[0].is_dir() else target


def fetch(options: FetchOptions) -> ImportReport | None:
    """Download and import; None when `out` already holds a valid index directory."""
    if is_valid_index_dir(options.out):
        log.info("%s is a valid index directory already: nothing to fetch", options.out)
        return None
    if not options.index:
        raise FetchError("--index-url: give the URL of the index, or of each of its parts in order")
    if (options.model is None) == (options.model_archive is None):
        raise FetchError("give the model either as --model (a directory or name) or as --model-url (an archive)")
    work = options.work_dir or options.out.parent / f".{options.out.name}.downloads"
    work.mkdir(parents=True, exist_ok=True)
    names = [d.file_name() for d in options.index] + [options.corpus.file_name()]
    if len(set(names)) != len(names):
        raise FetchError(f"two downloads share a file name ({', '.join(names)}): name them apart")
    started = time.perf_counter()
    with httpx.Client(follow_redirects=True) as client:
        parts = [download(d, work, options, client) for d in options.index]
        corpus = download(options.corpus, work, options, client)
        model = options.model
        if options.model_archive is not None:
            model = str(_unpack_model(download(options.model_archive, work, options, client), work))
    downloaded = sum(p.stat().st_size for p in [*parts, corpus])
    seconds = time.perf_counter() - started
    log.info(
        "downloaded %.2f GB in %.1fs (%.0f MB/s)", downloaded / 1e9, seconds, downloaded / 1e6 / max(seconds, 1e-9)
    )
    assert model is not None
    report = import_index(
        ImportOptions(
            index_parts=parts,
            corpus=corpus,
            model=model,
            out=options.out,
            force=options.out.exists(),  # an invalid leftover (checked above) is replaced
            progress=options.progress,
            **options.import_options,
        )
    )
    if not options.keep_downloads:
        shutil.rmtree(work, ignore_errors=True)
    return report
