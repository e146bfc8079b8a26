"""Bad data and startup faults: each must stop with one clear message naming the file and the problem.

Three ways a fault shows, each tested the way it happens:
- caught before the port is bound (`retriever serve` preflight): exit 3 (a data fault; 2 is for usage
  and configuration errors), `retriever: error: <message>`;
- caught by the loader of a started server: readiness never turns true, the log says
  `startup failed: <message>`, exit 3. Faults found after the model is loaded run the same
  `app.service.load` in this process (importing torch in a subprocess for each costs ~10 s);
  test_build_and_load.py already runs one of them (dimension mismatch) through a real server,
  and the unreadable model directory below runs through one too;
- `retriever build` failing (full disk, file size limit, killed): exit 3, and nothing that
  `serve` would accept is left behind (written under a temporary name, renamed when verified).
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import resource
import shutil
import signal
import stat
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import faiss
import pytest

from app.builder import BuildError, BuildOptions, build
from app.cli import _usage_errors
from app.corpus import CorpusStore
from app.encoder import BUNDLED_MODEL, resolve_model
from app.errors import RetrieverError
from app.manifest import Manifest, record_files
from app.service import Status, load
from app.settings import Settings
from tests.helpers import RETRIEVER, ROOT, run_server


@pytest.fixture
def index_copy(demo_index: Path, tmp_path: Path) -> Path:
    """A private, writable copy of the demo index directory (300 passages, ~0.5 MB)."""
    return Path(shutil.copytree(demo_index, tmp_path / "index"))


def serve_exit(args: list[str], tmp_path: Path, env: dict[str, str] | None = None) -> tuple[int, str]:
    """Start `retriever serve` on loopback and wait for it to give up; (exit code, log)."""
    with run_server(args, tmp_path, env=env, wait=False) as server:
        try:
            server.process.wait(timeout=180)
        except subprocess.TimeoutExpired:
            pytest.fail(f"server did not exit on a fault:\n{server.log()[-3000:]}")
        return server.process.returncode, server.log()


def assert_one_message(log: str, prefix: str, *needles: str) -> str:
    """Exactly one line carries the message; it holds every needle; no traceback anywhere."""
    lines = [line for line in log.splitlines() if prefix in line]
    assert len(lines) == 1, (lines, log[-3000:])
    for needle in needles:
        assert needle in lines[0], (needle, lines[0])
    assert "Traceback" not in log
    return lines[0]


def load_error(settings: Settings) -> str:
    """Run the server's loader in this process; it must fail with a data error the CLI prints as one line (exit 3)."""
    with pytest.raises(Exception) as raised:  # the type is checked just below
        load(settings, Status())
    assert isinstance(raised.value, RetrieverError), f"{type(raised.value).__name__}: {raised.value}"
    assert not isinstance(raised.value, _usage_errors())  # a data error: exit 3
    return str(raised.value)


def rewrite_manifest_records(directory: Path, *names: str) -> None:
    """Make the manifest agree with replaced files (sizes and checksums), so only the fault remains."""
    manifest = Manifest.read(directory)
    manifest.files.update(record_files(directory, list(names)))
    manifest.write(directory)


def write_jsonl(path: Path, rows: list[dict[str, object]]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


def demo_rows(demo_index: Path, count: int) -> list[dict[str, object]]:
    store = CorpusStore(demo_index / "corpus")
    try:
        return [store.row(i) for i in range(count)]
    finally:
        store.close()


# -- caught before the port is bound: exit 3 ---------------------------------------------------


def _remove(path: Path) -> None:
    path.unlink()


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _garble(path: Path) -> None:
    path.write_text('{"model": "x", "dimension": ')


@pytest.mark.parametrize(
    ("target", "damage", "needles"),
    [
        ("manifest.json", _remove, ["manifest.json: manifest is missing (not an index directory"]),
        ("manifest.json", _garble, ["manifest.json: unreadable manifest ("]),
        ("index.faiss", _remove, ["index.faiss: listed in the manifest but missing"]),
        ("index.faiss", _truncate, ["index.faiss: 230422 bytes, the manifest says 460845 (truncated or replaced)"]),
        ("corpus/offsets.u64", _remove, ["corpus/offsets.u64: listed in the manifest but missing"]),
        (
            "corpus/corpus.bin",
            _truncate,
            ["corpus/corpus.bin: ", "bytes, the manifest says", "(truncated or replaced)"],
        ),
    ],
    ids=lambda v: v.__name__.strip("_") if callable(v) else v if isinstance(v, str) else None,
)
def test_damaged_index_directory_fails_before_binding(
    index_copy: Path, tmp_path: Path, target: str, damage: object, needles: list[str]
) -> None:
    assert callable(damage)
    if target == "index.faiss" and damage is _truncate:
        assert (index_copy / target).stat().st_size == 460845  # the sizes in the needle
    damage(index_copy / target)
    code, log = serve_exit(["--index-dir", str(index_copy)], tmp_path)
    assert code == 3
    assert_one_message(log, "retriever: error:", str(index_copy / target.split("/")[0]), *needles)


def test_missing_search_r1_artifacts_fail_before_binding(demo_index: Path, tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "wiki.jsonl", demo_rows(demo_index, 3))
    code, log = serve_exit(["--index-path", str(tmp_path / "e5_Flat.index"), "--corpus-path", str(corpus)], tmp_path)
    assert code == 3
    assert_one_message(log, "retriever: error:", f"{tmp_path / 'e5_Flat.index'}: index file not found")
    index = str(demo_index / "index.faiss")
    code, log = serve_exit(["--index-path", index, "--corpus-path", str(tmp_path / "gone.jsonl")], tmp_path)
    assert code == 3
    assert_one_message(log, "retriever: error:", f"{tmp_path / 'gone.jsonl'}: corpus file not found")


# -- caught by the loader before the model is loaded: readiness never true, exit 3 ----------------


def test_corrupted_bytes_are_caught_by_checksums_at_load(index_copy: Path, tmp_path: Path) -> None:
    """Same size, one byte changed inside the vectors: sizes pass, FAISS would read it and serve
    wrong neighbours. With RETRIEVER_VERIFY_CHECKSUMS the server refuses it."""
    path = index_copy / "index.faiss"
    data = bytearray(path.read_bytes())
    data[-1000] ^= 0x40
    path.write_bytes(bytes(data))
    code, log = serve_exit(["--index-dir", str(index_copy), "--verify-checksums"], tmp_path)
    assert code == 3
    assert_one_message(log, "startup failed:", f"{path}: sha256 does not match the manifest (corrupted)")


def test_normalisation_against_the_manifest_is_refused(index_copy: Path, tmp_path: Path) -> None:
    code, log = serve_exit(["--index-dir", str(index_copy), "--normalize", "false"], tmp_path)
    assert code == 3
    assert_one_message(
        log,
        "startup failed:",
        f"{index_copy / 'manifest.json'}: the index was built with normalize=True but normalize=False was asked",
    )


def test_malformed_search_r1_corpus_is_refused_with_line_numbers(demo_index: Path, tmp_path: Path) -> None:
    corpus = tmp_path / "wiki.jsonl"
    rows = [json.dumps(row) for row in demo_rows(demo_index, 4)]
    corpus.write_text("\n".join([rows[0], rows[1][:-5], rows[2], '{"id": "3"}', rows[3]]) + "\n")
    index = str(demo_index / "index.faiss")
    code, log = serve_exit(["--index-path", index, "--corpus-path", str(corpus)], tmp_path)
    assert code == 3
    assert_one_message(
        log, "startup failed:", f"{corpus}: 2 malformed line(s): line 2: invalid JSON", "line 4: missing string field"
    )
    assert not (tmp_path / "wiki.jsonl.store").exists(), "a half-converted corpus store was left behind"


def test_index_path_without_corpus_is_a_usage_error(demo_index: Path, tmp_path: Path) -> None:
    # Conflicting options, not bad data: refused before binding, with the usage exit code.
    code, log = serve_exit(["--index-path", str(demo_index / "index.faiss")], tmp_path)
    assert code == 2
    assert_one_message(log, "retriever: error:", "--index-path and --corpus-path go together")


# -- caught by the loader after the model is loaded (same loader, in this process) -----------------


def test_corrupted_index_header(index_copy: Path, tmp_path: Path) -> None:
    path = index_copy / "index.faiss"
    data = bytearray(path.read_bytes())
    data[0:4] = b"XXXX"  # the FAISS type code
    path.write_bytes(bytes(data))
    rewrite_manifest_records(index_copy, "index.faiss")  # sizes and checksums agree: only FAISS can tell
    message = load_error(Settings(index_dir=index_copy, data_dir=tmp_path))
    assert message == (
        f'{path}: not a readable FAISS index (truncated or corrupted?): Index type 0x58585858 ("XXXX") not recognized'
    )


def test_truncated_bare_index(demo_index: Path, tmp_path: Path) -> None:
    """Search-R1's bare index files have no manifest: FAISS itself must refuse the short file."""
    index = tmp_path / "e5_Flat.index"
    data = (demo_index / "index.faiss").read_bytes()
    index.write_bytes(data[: len(data) - 4096])
    corpus = write_jsonl(tmp_path / "wiki.jsonl", demo_rows(demo_index, 300))
    message = load_error(Settings(index_path=index, corpus_path=corpus, data_dir=tmp_path))
    assert message.startswith(f"{index}: not a readable FAISS index (truncated or corrupted?): ")
    assert "read error" in message and "Error in " not in message  # FAISS's C++ location is dropped


def test_index_and_corpus_row_counts_differ(demo_index: Path, tmp_path: Path) -> None:
    corpus = write_jsonl(tmp_path / "wiki.jsonl", demo_rows(demo_index, 299))
    index = demo_index / "index.faiss"
    message = load_error(Settings(index_path=index, corpus_path=corpus, data_dir=tmp_path))
    assert message == (
        f"{tmp_path / 'wiki.jsonl.store'}: corpus has 299 rows but the index {index} has 300 vectors; "
        "they must match row for row"
    )


def test_index_metric_differs_from_the_manifest(index_copy: Path, tmp_path: Path) -> None:
    path = index_copy / "index.faiss"
    source = faiss.read_index(str(path))
    l2 = faiss.IndexFlatL2(source.d)
    l2.add(source.reconstruct_n(0, source.ntotal))
    faiss.write_index(l2, str(path))
    rewrite_manifest_records(index_copy, "index.faiss")
    message = load_error(Settings(index_dir=index_copy, data_dir=tmp_path))
    assert message == f"{path}: metric l2 but the manifest says ip"


def _model_variant(tmp_path: Path, name: str) -> Path:
    """The bundled model's files, linked into a new directory that a test can then alter."""
    source, target = Path(resolve_model(BUNDLED_MODEL)), tmp_path / name
    target.mkdir()
    for item in source.iterdir():
        (target / item.name).symlink_to(item)
    return target


def test_model_dimension_differs_from_the_index(index_copy: Path, tmp_path: Path) -> None:
    """A real sentence-transformers model whose output is 128-d (a Dense layer on MiniLM), against 384-d vectors."""
    from sentence_transformers.sentence_transformer.modules import Dense

    model = _model_variant(tmp_path, "minilm-128")
    modules = json.loads((model / "modules.json").read_text())
    (model / "modules.json").unlink()
    dense = Dense(384, 128)
    (model / "3_Dense").mkdir()
    dense.save(str(model / "3_Dense"))
    modules.append({"idx": 3, "name": "3", "path": "3_Dense", "type": f"{type(dense).__module__}.Dense"})
    (model / "modules.json").write_text(json.dumps(modules))
    message = load_error(Settings(index_dir=index_copy, model=str(model), data_dir=tmp_path))
    assert message == (
        f"{index_copy / 'index.faiss'}: index dimension 384 does not match model {model} (dimension 128); "
        "pass the model the index was built with"
    )


def test_model_directory_that_is_not_a_model(index_copy: Path, tmp_path: Path) -> None:
    model = _model_variant(tmp_path, "broken")
    (model / "config.json").unlink()
    (model / "config.json").write_text('{"model_type": "bert", "hidden_size": ')
    message = load_error(Settings(index_dir=index_copy, model=str(model), data_dir=tmp_path))
    assert message.startswith(f"{model}: cannot load model: ")
    assert f"{model / 'config.json'}' is not a valid JSON file" in message
    assert "offline" not in message  # a local directory: no hint about hubs
    weights = tmp_path / "model.safetensors"
    weights.write_bytes(b"not a directory")
    message = load_error(Settings(index_dir=index_copy, model=str(weights), data_dir=tmp_path))
    assert message == f"{weights}: model path is a file, expected a model directory"


def test_unreadable_model_directory_through_a_real_server(index_copy: Path, tmp_path: Path) -> None:
    """chmod 000 on the model directory. Root reads anything, so as root the server runs without
    the capabilities that bypass file permissions (setpriv), like an unprivileged container user."""
    model = _model_variant(tmp_path, "locked")
    prefix: list[str] = []
    if os.geteuid() == 0:
        setpriv = shutil.which("setpriv")
        if setpriv is None:
            pytest.skip("running as root and setpriv (util-linux) is missing: cannot drop DAC capabilities")
        drop = "-dac_override,-dac_read_search"
        prefix = [setpriv, f"--bounding-set={drop}", f"--inh-caps={drop}"]
    model.chmod(0)
    log_path = tmp_path / "server.log"
    try:
        with open(log_path, "wb") as log:
            process = subprocess.run(
                [*prefix, *RETRIEVER, "serve", "--port", "0", "--index-dir", str(index_copy), "--model", str(model)],
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd=ROOT,
                env=os.environ | {"HF_HUB_OFFLINE": "1", "RETRIEVER_DATA_DIR": str(tmp_path)},
                timeout=180,
                check=False,
            )
    finally:
        model.chmod(stat.S_IRWXU | stat.S_IRGRP | stat.S_IXGRP | stat.S_IROTH | stat.S_IXOTH)
    output = log_path.read_text(errors="replace")
    assert process.returncode == 3, output[-3000:]
    assert_one_message(output, "startup failed:", f"{model}: model directory is not readable")


# -- retriever build: out of space, file size limit, killed ------------------------------------------


def small_corpus(demo_index: Path, tmp_path: Path, rows: int) -> Path:
    return write_jsonl(tmp_path / f"corpus-{rows}.jsonl", demo_rows(demo_index, rows))


def assert_nothing_left(parent: Path, out: Path) -> None:
    assert not out.exists()
    leftovers = [p.name for p in parent.iterdir() if p.name.startswith(f".{out.name}.")]
    assert not leftovers, leftovers


@contextlib.contextmanager
def tiny_tmpfs(path: Path, size: str) -> Iterator[Path]:
    path.mkdir()
    mounted = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)], capture_output=True)
    if mounted.returncode != 0:
        pytest.skip(
            f"cannot mount a tmpfs here ({mounted.stderr.decode().strip()}); "
            "test_build_hits_file_size_limit_and_keeps_the_old_index covers the same path with EFBIG"
        )
    try:
        yield path
    finally:
        subprocess.run(["umount", "-l", str(path)], check=False)


def test_build_on_a_full_disk(demo_index: Path, tmp_path: Path) -> None:
    """A 64 KiB tmpfs: the corpus store fits, the index (64 x 384 floats = 96 KiB) does not."""
    corpus = small_corpus(demo_index, tmp_path, 64)
    with tiny_tmpfs(tmp_path / "disk", "64k") as disk:
        out = disk / "index"
        with pytest.raises(BuildError) as raised:
            build(BuildOptions(corpus=corpus, out=out, model=BUNDLED_MODEL, progress=False))
        assert str(raised.value) == (
            f"{out / 'index.faiss'}: {os.strerror(errno.ENOSPC)} while building (free some space or build "
            "elsewhere); the partial build was removed, nothing was written"
        )
        assert_nothing_left(disk, out)
        assert shutil.disk_usage(disk).used < 16 * 1024, "the partial files were not removed"


def _limit_file_size() -> None:
    resource.setrlimit(resource.RLIMIT_FSIZE, (64 * 1024, 64 * 1024))
    signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # get EFBIG from write() instead of being killed


def test_build_hits_file_size_limit_and_keeps_the_old_index(demo_index: Path, tmp_path: Path) -> None:
    """`ulimit -f` (EFBIG, not ENOSPC) during `retriever build --force` over a good index: exit 3, one
    message, the old index untouched and still valid, no temporary directory left."""
    out = tmp_path / "index"
    build(BuildOptions(corpus=small_corpus(demo_index, tmp_path, 8), out=out, model=BUNDLED_MODEL, progress=False))
    before = {p.name: p.stat().st_mtime_ns for p in out.rglob("*")}
    corpus = small_corpus(demo_index, tmp_path, 64)
    result = subprocess.run(
        [*RETRIEVER, "build", "--corpus", str(corpus), "--out", str(out), "--force", "--no-progress"],
        capture_output=True,
        text=True,
        cwd=ROOT,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
        preexec_fn=_limit_file_size,  # sets a limit and a signal disposition
        timeout=300,
        check=False,
    )
    assert result.returncode == 3, result.stderr[-3000:]
    assert_one_message(
        result.stderr,
        "retriever: error:",
        f"{out / 'index.faiss'}: {os.strerror(errno.EFBIG)} while building",
        "file size limit (ulimit -f)",
        "the partial build was removed, nothing was written",
    )
    assert {p.name: p.stat().st_mtime_ns for p in out.rglob("*")} == before
    Manifest.read(out).check_files(out, checksums=True)
    assert Manifest.read(out).count == 8
    assert not [p.name for p in tmp_path.iterdir() if p.name.startswith(".index.")]


def test_killed_build_leaves_nothing_serve_accepts(demo_index: Path, tmp_path: Path) -> None:
    corpus = small_corpus(demo_index, tmp_path, 300)
    out = tmp_path / "index"
    process = subprocess.Popen(
        [*RETRIEVER, "build", "--corpus", str(corpus), "--out", str(out), "--chunk-size", "16", "--no-progress"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        cwd=ROOT,
        env=os.environ | {"HF_HUB_OFFLINE": "1"},
    )
    try:
        deadline = time.monotonic() + 120
        building: list[Path] = []
        while time.monotonic() < deadline and process.poll() is None:
            building = [p for p in tmp_path.glob(".index.building-*") if (p / "corpus" / "corpus.bin").exists()]
            if building and (building[0] / "corpus" / "corpus.bin").stat().st_size > 0:
                break
            time.sleep(0.05)
        assert process.poll() is None, "the build finished before it could be interrupted"
        assert building, "the build never started writing"
        process.send_signal(signal.SIGKILL)
        process.wait(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert not out.exists()
    code, log = serve_exit(["--index-dir", str(out)], tmp_path)
    assert code == 3
    assert_one_message(log, "retriever: error:", f"{out}: index directory does not exist")
    # The half-written directory itself has no manifest yet: serve refuses it by name too.
    assert not (building[0] / "manifest.json").exists()
    with pytest.raises(Exception, match="manifest is missing"):
        Manifest.read(building[0])
