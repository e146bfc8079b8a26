"""Serving Search-R1's bare files from read-only volumes: the corpus store rules (app/store_rules.py).

The source directory is made truly read-only for the server with a read-only bind mount in a private
mount namespace (`unshare -m`): permission bits would not do, since the tests run as root.
"""

from __future__ import annotations

import json
import shutil
import subprocess
import time
from pathlib import Path

import httpx
import pytest

from app.devtools.server import ServerProcess
from app.manifest import INDEX_FILE
from tests.helpers import DEMO_LIMIT, RETRIEVER, run_server

READ_ONLY = 'd="$0"; mount --bind "$d" "$d" && mount -o remount,bind,ro "$d" && exec "$@"'


def _read_only_prefix(directory: Path) -> list[str]:
    return ["unshare", "-m", "sh", "-c", READ_ONLY, str(directory)]


@pytest.fixture(scope="module")
def can_mount_read_only(tmp_path_factory: pytest.TempPathFactory) -> None:
    probe = tmp_path_factory.mktemp("ro-probe")
    if shutil.which("unshare") is None:
        pytest.skip("unshare (util-linux) is not installed")
    proc = subprocess.run(
        [*_read_only_prefix(probe), "sh", "-c", f"touch {probe}/x"], capture_output=True, text=True, check=False
    )
    if "Read-only file system" not in proc.stderr:
        pytest.skip(f"cannot make a read-only bind mount here (needs CAP_SYS_ADMIN): {proc.stderr.strip()[-200:]}")


@pytest.fixture
def bare_files(demo_index: Path, tmp_path: Path) -> Path:
    """e5_Flat.index + wiki-18.jsonl shaped: the demo's Flat file and the jsonl it was built from."""
    volume = tmp_path / "volume"
    volume.mkdir()
    shutil.copy(demo_index / INDEX_FILE, volume / "e5_Flat.index")
    shutil.copy(demo_index.parent / "wiki-leads.jsonl", volume / "wiki-18.jsonl")
    return volume


def _args(volume: Path) -> list[str]:
    return ["--index-path", str(volume / "e5_Flat.index"), "--corpus-path", str(volume / "wiki-18.jsonl")]


def _serve_read_only(volume: Path, data_dir: Path, tmp_path: Path, extra_env: dict[str, str]) -> ServerProcess:
    """`retriever serve` on the bare files, with `volume` mounted read-only in its own namespace."""
    env = {"RETRIEVER_DATA_DIR": str(data_dir)} | extra_env
    executable = [*_read_only_prefix(volume), *RETRIEVER]
    return ServerProcess(_args(volume), tmp_path / "read-only-server.log", env=env, executable=executable).start()


def test_valid_store_beside_a_read_only_source_is_used_as_it_is(
    can_mount_read_only: None, bare_files: Path, tmp_path: Path
) -> None:
    # Prepared once on a writable volume: the first start converts the jsonl beside it.
    with run_server(_args(bare_files), tmp_path) as server:
        assert "converting corpus" in server.log()
    assert json.loads((bare_files / "wiki-18.jsonl.store" / "source.json").read_text())["rows"] == DEMO_LIMIT
    # The volume copied and mounted elsewhere (path changes), read-only, with a cache that holds nothing.
    mounted = tmp_path / "mnt" / "wiki-18"
    shutil.copytree(bare_files, mounted)
    data_dir = tmp_path / "empty-cache"
    server = _serve_read_only(mounted, data_dir, tmp_path, {"RETRIEVER_CACHE_SIZE_LIMIT_BYTES": "0"})
    try:
        server.wait_ready(timeout=180)
        r = httpx.post(f"{server.url}/retrieve", json={"queries": ["epic poem"], "topk": 1}, timeout=30)
        assert r.status_code == 200 and r.json()["result"][0][0]["contents"], r.text[:300]
        info = httpx.get(f"{server.url}/info", timeout=10).json()
        assert info["corpus"]["path"] == str(mounted / "wiki-18.jsonl.store")
    finally:
        server.stop(60)
    log = server.log()
    assert "converting corpus" not in log and "used as it is" in log, log[-2000:]
    assert not (data_dir / "corpora").exists() or not any((data_dir / "corpora").iterdir())


def test_read_only_source_and_too_small_cache_fails_at_once(
    can_mount_read_only: None, bare_files: Path, tmp_path: Path
) -> None:
    data_dir = tmp_path / "cache"
    started = time.monotonic()
    server = _serve_read_only(bare_files, data_dir, tmp_path, {"RETRIEVER_CACHE_SIZE_LIMIT_BYTES": str(64 * 1024)})
    assert server.process is not None
    returncode = server.process.wait(timeout=120)
    elapsed = time.monotonic() - started
    log = server.log()
    assert returncode == 3, log[-2000:]
    assert "directory is read-only and no valid store is beside it" in log
    assert "needs about" in log and "Raise the chart's `cacheSizeLimit`" in log and "RETRIEVER_DATA_DIR" in log
    assert "Traceback" not in log and "loading model" not in log, "it must fail before any loading"
    print(f"failed after {elapsed:.1f}s")


def test_stale_store_beside_a_writable_source_is_remade(bare_files: Path, tmp_path: Path) -> None:
    with run_server(_args(bare_files), tmp_path) as server:
        assert "converting corpus" in server.log()
    # The source changes (its last passage edited, same size): the store no longer belongs to it.
    corpus = bare_files / "wiki-18.jsonl"
    lines = corpus.read_text().splitlines(keepends=True)
    assert "a" in lines[-1]
    lines[-1] = lines[-1].replace("a", "b", 1)
    size = corpus.stat().st_size
    corpus.write_text("".join(lines))
    assert corpus.stat().st_size == size
    with run_server(_args(bare_files), tmp_path) as server:
        assert "converting corpus" in server.log()
        from app.corpus import CorpusStore

        store = CorpusStore(bare_files / "wiki-18.jsonl.store")
        assert store.row(DEMO_LIMIT - 1) == json.loads(lines[-1])
        store.close()
