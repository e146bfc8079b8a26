"""`retriever import`: an index directory from a FAISS index in parts, a jsonl.gz and a model, no re-encoding.

Real data throughout: the demo index's FAISS Flat file (MiniLM embeddings) cut into two parts, the
demo passages gzipped, the bundled MiniLM model directory.
"""

from __future__ import annotations

import gzip
import json
import shutil
import signal
import subprocess
import sys
from pathlib import Path

import faiss
import httpx
import numpy as np
import pytest

from app.demo import labelled_queries
from app.manifest import CORPUS_DIR, INDEX_FILE, Manifest, sha256_file
from tests.helpers import DEMO_LIMIT, ROOT, run_cli, run_server


@pytest.fixture(scope="module")
def artifacts(demo_index: Path, tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Search-R1-shaped inputs: index parts (like part_aa/part_ab), corpus .jsonl.gz, model directory."""
    from app.encoder import BUNDLED_MODEL, resolve_model

    root = tmp_path_factory.mktemp("artifacts")
    whole = (demo_index / INDEX_FILE).read_bytes()
    cut = len(whole) // 3  # an arbitrary byte, inside the vectors, as `split -b` would cut
    (root / "part_aa").write_bytes(whole[:cut])
    (root / "part_ab").write_bytes(whole[cut:])
    jsonl = demo_index.parent / "wiki-leads.jsonl"
    with open(jsonl, "rb") as src, gzip.open(root / "corpus.jsonl.gz", "wb") as dst:
        shutil.copyfileobj(src, dst)
    shutil.copy(jsonl, root / "corpus.jsonl")
    return {
        "aa": root / "part_aa",
        "ab": root / "part_ab",
        "gz": root / "corpus.jsonl.gz",
        "jsonl": root / "corpus.jsonl",
        "model": Path(resolve_model(BUNDLED_MODEL)),
        "whole": demo_index / INDEX_FILE,
    }


def _import(a: dict[str, Path], out: Path, *extra: str, parts: list[Path] | None = None, corpus: Path | None = None):
    parts = parts if parts is not None else [a["aa"], a["ab"]]
    return run_cli(
        "import",
        "--index",
        *map(str, parts),
        "--corpus",
        str(corpus or a["gz"]),
        "--model",
        str(a["model"]),
        "--out",
        str(out),
        "--no-progress",
        *extra,
    )


def _leftovers(out: Path) -> list[str]:
    return sorted(p.name for p in out.parent.iterdir() if p.name.startswith(f".{out.name}."))


def test_import_from_parts_and_gz_serves_known_passages(artifacts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "wiki"
    proc = _import(artifacts, out)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert f"{DEMO_LIMIT} rows x 384" in proc.stdout and "GB/s" in proc.stdout, proc.stdout

    manifest = Manifest.read(out)
    assert manifest.count == DEMO_LIMIT and manifest.dimension == 384 and manifest.metric == "ip"
    assert manifest.index_factory == "Flat"
    # The parts were concatenated byte for byte; every checksum in the manifest is the file's.
    assert sha256_file(out / INDEX_FILE) == sha256_file(artifacts["whole"])
    for name, record in manifest.files.items():
        assert sha256_file(out / name) == record.sha256 and (out / name).stat().st_size == record.bytes
    # The store equals what `retriever build` made from the same jsonl.
    built = artifacts["whole"].parent / CORPUS_DIR
    for name in ("corpus.bin", "offsets.u64"):
        assert (out / CORPUS_DIR / name).read_bytes() == (built / name).read_bytes()
    # The model travels inside the index directory and is what serves.
    assert manifest.model == "./model" and (out / "model" / "config.json").is_file()
    assert not _leftovers(out)

    labelled = labelled_queries(DEMO_LIMIT)[:10]
    rows = [json.loads(line) for line in artifacts["jsonl"].read_text().splitlines()]
    with run_server(["--index-dir", str(out)], tmp_path) as server:
        info = httpx.get(f"{server.url}/info", timeout=10).json()
        assert info["model"]["name"] == str(out / "model")
        r = httpx.post(
            f"{server.url}/retrieve",
            json={"queries": [q for q, _ in labelled], "topk": 3, "return_scores": True},
            timeout=60,
        )
        assert r.status_code == 200, r.text[:300]
        hits = r.json()["result"]
    found = sum(any(h["document"] == rows[row] for h in hits[i]) for i, (_, row) in enumerate(labelled))
    assert found >= 7, f"only {found}/10 labelled queries found their passage"


def test_preset_search_r1_e5_is_recorded_and_sets_pooling(artifacts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "e5"
    proc = _import(artifacts, out, "--preset", "search-r1-e5", "--pooling", "cls", "--max-length", "128")
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = Manifest.read(out)
    # The preset's values, with explicit flags winning over it.
    assert (manifest.query_prefix, manifest.passage_prefix, manifest.normalize) == ("query: ", "passage: ", True)
    assert manifest.max_length == 128 and manifest.source["pooling"] == "cls"
    modules = json.loads((out / "model" / "modules.json").read_text())
    pooling = next(m for m in modules if m["type"].endswith("Pooling"))
    config = json.loads((out / "model" / pooling["path"] / "config.json").read_text())
    assert config["pooling_mode_cls_token"] is True and config["pooling_mode_mean_tokens"] is False
    # The bundled model itself is untouched (mean pooling).
    from app.importer import _pooling_of

    assert _pooling_of(artifacts["model"]) == "mean" and _pooling_of(out / "model") == "cls"


def test_plain_jsonl_one_file_and_model_reference(artifacts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "ref"
    proc = _import(artifacts, out, "--model-reference", parts=[artifacts["whole"]], corpus=artifacts["jsonl"])
    assert proc.returncode == 0, proc.stderr[-2000:]
    manifest = Manifest.read(out)
    assert manifest.model == str(artifacts["model"].resolve()) and not (out / "model").exists()


def test_referenced_model_with_other_pooling_is_refused(artifacts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "pool"
    proc = _import(artifacts, out, "--model-reference", "--pooling", "cls")
    assert proc.returncode == 3 and "pools by mean but --pooling cls" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists() and not _leftovers(out)


def test_missing_part_fails_before_any_copy(artifacts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "missing"
    proc = _import(artifacts, out, parts=[artifacts["aa"]])
    assert proc.returncode == 3, proc.stderr
    assert "a part is missing or truncated" in proc.stderr and "give every part, in order" in proc.stderr
    assert "Traceback" not in proc.stderr and not out.exists() and not _leftovers(out)
    proc = _import(artifacts, out, parts=[artifacts["aa"], tmp_path / "part_ac"])
    assert proc.returncode == 3 and "part_ac: index part not found" in proc.stderr, proc.stderr


def test_dimension_mismatch_names_both(artifacts: dict[str, Path], tmp_path: Path) -> None:
    index = faiss.IndexFlatIP(768)
    index.add(np.random.default_rng(0).standard_normal((DEMO_LIMIT, 768)).astype(np.float32))
    faiss.write_index(index, str(tmp_path / "e5_Flat.index"))
    out = tmp_path / "dim"
    proc = _import(artifacts, out, parts=[tmp_path / "e5_Flat.index"])
    assert proc.returncode == 3, proc.stderr
    assert "embeddings of dimension 384, but the index holds 768-d vectors" in proc.stderr, proc.stderr
    assert not out.exists() and not _leftovers(out)


@pytest.mark.parametrize("change", ["fewer", "more"])
def test_row_count_mismatch_is_refused(artifacts: dict[str, Path], tmp_path: Path, change: str) -> None:
    lines = artifacts["jsonl"].read_text().splitlines(keepends=True)
    lines = lines[:-1] if change == "fewer" else [*lines, lines[0]]
    corpus = tmp_path / "corpus.jsonl"
    corpus.write_text("".join(lines))
    out = tmp_path / "rows"
    proc = _import(artifacts, out, corpus=corpus)
    assert proc.returncode == 3, proc.stderr
    expected = f"{DEMO_LIMIT - 1} rows but the index has {DEMO_LIMIT}" if change == "fewer" else "more rows than"
    assert expected in proc.stderr and "Traceback" not in proc.stderr, proc.stderr
    assert not out.exists() and not _leftovers(out)


def test_malformed_line_is_named_and_never_skipped(artifacts: dict[str, Path], tmp_path: Path) -> None:
    lines = artifacts["jsonl"].read_text().splitlines(keepends=True)
    lines[41] = '{"id": "41", "contents": \n'
    corpus = tmp_path / "bad.jsonl"
    corpus.write_text("".join(lines))
    proc = _import(artifacts, tmp_path / "bad", corpus=corpus)
    assert proc.returncode == 3 and "line 42: invalid JSON" in proc.stderr, proc.stderr


def test_truncated_gzip_is_a_clear_error(artifacts: dict[str, Path], tmp_path: Path) -> None:
    data = artifacts["gz"].read_bytes()
    corpus = tmp_path / "cut.jsonl.gz"
    corpus.write_bytes(data[: len(data) // 2])
    proc = _import(artifacts, tmp_path / "cut", corpus=corpus)
    assert proc.returncode == 3 and "cannot read the corpus" in proc.stderr, proc.stderr
    assert "Traceback" not in proc.stderr


def test_existing_output_needs_force(artifacts: dict[str, Path], tmp_path: Path) -> None:
    out = tmp_path / "exists"
    out.mkdir()
    proc = _import(artifacts, out)
    assert proc.returncode == 3 and "already exists (pass --force" in proc.stderr


# A child process that imports and dies by SIGKILL halfway through the index copy.
KILLED_MID_COPY = """
import os, signal, sys
from pathlib import Path
import app.importer as importer

real = importer.Progress.update

def update(self, count):
    real(self, count)
    if self.desc.startswith("index"):
        os.kill(os.getpid(), signal.SIGKILL)

importer.Progress.update = update
aa, ab, corpus, model, out = sys.argv[1:]
importer.import_index(importer.ImportOptions([Path(aa), Path(ab)], Path(corpus), model, Path(out), progress=False))
"""


def test_killed_import_leaves_nothing_valid_and_is_cleaned_next_time(
    artifacts: dict[str, Path], tmp_path: Path
) -> None:
    from app.importer import is_valid_index_dir

    out = tmp_path / "killed"
    args = [str(artifacts[k]) for k in ("aa", "ab", "gz", "model")] + [str(out)]
    child = subprocess.run(
        [sys.executable, "-c", KILLED_MID_COPY, *args], cwd=ROOT, capture_output=True, text=True, timeout=300
    )
    assert child.returncode == -signal.SIGKILL, child.stderr[-2000:]
    assert not out.exists()
    [leftover] = _leftovers(out)
    assert leftover.startswith(".killed.importing-") and (tmp_path / leftover / INDEX_FILE).is_file()
    assert not is_valid_index_dir(tmp_path / leftover)
    proc = run_cli("serve", "--index-dir", str(tmp_path / leftover), "--port", "0")
    assert proc.returncode != 0 and "manifest is missing" in proc.stderr, proc.stderr[-500:]
    # The next import of the same output removes what the dead one left.
    assert _import(artifacts, out).returncode == 0
    assert is_valid_index_dir(out) and not _leftovers(out)
