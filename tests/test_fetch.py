"""`retriever fetch`: resumable, checksummed HTTP downloads of an index's parts, then the import.

A real HTTP server on loopback serves the files with Range support; it can cut the first response
of a file short (a dropped connection) to prove that the download resumes instead of restarting.
"""

from __future__ import annotations

import hashlib
import http.server
import re
import shutil
import tarfile
import threading
from collections.abc import Iterator
from pathlib import Path

import pytest

from app.manifest import INDEX_FILE, Manifest, sha256_file
from tests.helpers import DEMO_LIMIT, run_cli
from tests.test_import import artifacts  # noqa: F401 - the shared fixture


class FileServer(http.server.ThreadingHTTPServer):
    def __init__(self, root: Path) -> None:
        super().__init__(("127.0.0.1", 0), _Handler)
        self.root = root
        self.cut_first: set[str] = set()  # names whose first full GET is cut off halfway
        self.requests: list[tuple[str, str | None, int]] = []  # (name, Range header, status)

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}"


class _Handler(http.server.BaseHTTPRequestHandler):
    server: FileServer

    def log_message(self, *args: object) -> None:
        pass

    def do_GET(self) -> None:
        name = self.path.lstrip("/")
        path = self.server.root / name
        if not path.is_file():
            self.server.requests.append((name, None, 404))
            self.send_error(404)
            return
        data = path.read_bytes()
        wanted = self.headers.get("Range")
        start = 0
        if wanted:
            start = int(re.fullmatch(r"bytes=(\d+)-", wanted).group(1))  # type: ignore[union-attr]
            if start >= len(data):
                self.server.requests.append((name, wanted, 416))
                self.send_response(416)
                self.send_header("Content-Range", f"bytes */{len(data)}")
                self.end_headers()
                return
        status = 206 if wanted else 200
        self.server.requests.append((name, wanted, status))
        self.send_response(status)
        if wanted:
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        self.send_header("Content-Length", str(len(data) - start))
        self.end_headers()
        body = data[start:]
        if name in self.server.cut_first and not wanted:
            self.server.cut_first.discard(name)
            self.wfile.write(body[: len(body) // 2])
            self.wfile.flush()
            self.connection.close()  # the client sees a short body: it must resume from here
            return
        self.wfile.write(body)


@pytest.fixture
def file_server(artifacts: dict[str, Path], tmp_path: Path) -> Iterator[FileServer]:  # noqa: F811
    root = tmp_path / "served"
    root.mkdir()
    for key in ("aa", "ab", "gz"):
        shutil.copy(artifacts[key], root / artifacts[key].name)
    with tarfile.open(root / "model.tar.gz", "w:gz") as tar:
        tar.add(artifacts["model"], arcname="all-MiniLM-L6-v2")
    server = FileServer(root)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server
    finally:
        server.shutdown()
        server.server_close()


def _sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _fetch(server: FileServer, out: Path, *extra: str, index_sha: list[str] | None = None):
    args = ["fetch", "--index-url", f"{server.url}/part_aa", f"{server.url}/part_ab"]
    if index_sha:
        args += ["--index-sha256", *index_sha]
    args += ["--corpus-url", f"{server.url}/corpus.jsonl.gz", "--out", str(out), "--no-progress", *extra]
    return run_cli(*args)


def test_fetch_resumes_checks_imports_and_then_skips(
    file_server: FileServer,
    artifacts: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "volume" / "wiki"
    file_server.cut_first = {"part_ab", "corpus.jsonl.gz"}
    shas = [_sha(artifacts["aa"]), _sha(artifacts["ab"])]
    proc = _fetch(file_server, out, "--model-url", f"{file_server.url}/model.tar.gz", index_sha=shas)
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert f"{DEMO_LIMIT} rows x 384" in proc.stdout
    # The cut downloads continued from where they stopped, with a Range request, not from zero.
    resumed = [(name, rng) for name, rng, status in file_server.requests if status == 206]
    assert {name for name, _ in resumed} == {"part_ab", "corpus.jsonl.gz"}, file_server.requests
    assert all(rng != "bytes=0-" for _, rng in resumed)
    assert "resuming" in proc.stderr and "sha256 ok" in proc.stderr
    assert sha256_file(out / INDEX_FILE) == sha256_file(artifacts["whole"])
    assert Manifest.read(out).model == "./model" and (out / "model" / "modules.json").is_file()
    assert not (out.parent / ".wiki.downloads").exists(), "downloads are deleted after the import"

    # A second run (a restarted pod on the same volume) downloads nothing.
    before = len(file_server.requests)
    again = _fetch(file_server, out, "--model", str(artifacts["model"]))
    assert again.returncode == 0 and "nothing fetched" in again.stdout, again.stderr[-2000:]
    assert len(file_server.requests) == before


def test_wrong_checksum_fails_and_deletes_the_download(
    file_server: FileServer,
    artifacts: dict[str, Path],  # noqa: F811
    tmp_path: Path,
) -> None:
    out = tmp_path / "wiki"
    wrong = ["0" * 64, _sha(artifacts["ab"])]
    proc = _fetch(file_server, out, "--model", str(artifacts["model"]), index_sha=wrong)
    assert proc.returncode == 3, proc.stderr[-2000:]
    assert "part_aa: sha256" in proc.stderr and "does not match the expected" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists()
    assert not list((tmp_path / ".wiki.downloads").glob("part_aa*"))


def test_missing_url_is_a_clear_error(file_server: FileServer, artifacts: dict[str, Path], tmp_path: Path) -> None:  # noqa: F811
    proc = run_cli(
        "fetch",
        "--index-url",
        f"{file_server.url}/part_zz",
        "--corpus-url",
        f"{file_server.url}/corpus.jsonl.gz",
        "--model",
        str(artifacts["model"]),
        "--out",
        str(tmp_path / "wiki"),
        "--no-progress",
    )
    assert proc.returncode == 3 and "part_zz: HTTP 404; check the URL" in proc.stderr, proc.stderr[-1000:]


def test_checksum_count_must_match_urls(file_server: FileServer, tmp_path: Path) -> None:
    proc = _fetch(file_server, tmp_path / "w", "--model", "x", index_sha=["0" * 64])
    assert proc.returncode == 3 and "1 checksum(s) for 2 URL(s)" in proc.stderr, proc.stderr[-1000:]
