"""Corpus conversion, `retriever build`, Search-R1 artifacts, loading and startup errors."""

from __future__ import annotations

import json
from pathlib import Path

import faiss
import httpx
import numpy as np
import pytest

from app.builder import BuildError, BuildOptions, build
from app.corpus import CorpusError, CorpusStore, convert_jsonl
from app.encoder import BUNDLED_MODEL
from app.manifest import Manifest
from tests.helpers import run_cli, run_server

TRICKY_ROWS = [
    {"id": "0", "contents": '"Zürich"\nZürich is the largest city in Switzerland — 日本語 too.', "lang": "de"},
    {"id": "1", "contents": '"Quote \\"inside\\""\nA title with "escaped" quotes and a backslash \\ here.'},
    {"id": "2", "contents": '"Extra"\nRows keep extra columns.', "meta": {"nested": [1, 2, {"x": None}]}, "n": 7},
    {"id": 3, "contents": '"Emoji"\nSnakes 🐍 and tabs\tand newlines\nin text.'},
]


def write_lines(path: Path, lines: list[str]) -> Path:
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def test_conversion_keeps_rows_exactly_and_skips_blank_lines(tmp_path: Path) -> None:
    lines = [json.dumps(TRICKY_ROWS[0], ensure_ascii=False), "", "   ", json.dumps(TRICKY_ROWS[1])]
    lines += [json.dumps(r, ensure_ascii=False) for r in TRICKY_ROWS[2:]]
    source = write_lines(tmp_path / "c.jsonl", lines)
    report = convert_jsonl(source, tmp_path / "store")
    store = CorpusStore(tmp_path / "store")
    assert report.rows == store.count == 4
    assert report.blank_lines == 2
    for i, row in enumerate(TRICKY_ROWS):
        assert store.row(i) == row
    store.close()


def test_malformed_lines_are_reported_with_line_numbers(tmp_path: Path) -> None:
    lines = [
        json.dumps(TRICKY_ROWS[0]),
        '{"id": "1", "contents": "unterminated',
        json.dumps(TRICKY_ROWS[1]),
        '["not", "an", "object"]',
        '{"id": "9", "text": "no contents field"}',
        '{"id": "10", "contents": "nan score", "score": NaN}',
    ]
    source = write_lines(tmp_path / "bad.jsonl", lines)
    with pytest.raises(CorpusError) as error:
        convert_jsonl(source, tmp_path / "store")
    message = str(error.value)
    assert "4 malformed line(s)" in message
    for needle in ("line 2: invalid JSON", "line 4: expected a JSON object", 'line 5: missing string field "contents"'):
        assert needle in message
    assert "line 6: holds NaN" in message
    report = convert_jsonl(source, tmp_path / "store2", skip_invalid=True)
    assert report.rows == 2 and report.bad_line_count == 4
    assert [b.line_no for b in report.bad_lines] == [2, 4, 5, 6]


def test_invalid_utf8_line_is_reported(tmp_path: Path) -> None:
    source = tmp_path / "latin1.jsonl"
    source.write_bytes(json.dumps(TRICKY_ROWS[1]).encode() + b'\n{"id": "x", "contents": "caf\xe9"}\n')
    with pytest.raises(CorpusError, match="line 2: not valid UTF-8"):
        convert_jsonl(source, tmp_path / "store")


def small_corpus(tmp_path: Path, rows: int = 64) -> Path:
    from app.demo import articles

    docs = articles(rows)
    lines = [json.dumps({"id": str(i), "contents": f'"{d.title}"\n{d.extract[:200]}'}) for i, d in enumerate(docs)]
    return write_lines(tmp_path / "small.jsonl", lines)


@pytest.mark.parametrize("factory", ["Flat", "HNSW16", "IVF4,Flat", "IVF4,PQ8x4", "SQ8"])
def test_build_index_types(tmp_path: Path, factory: str) -> None:
    corpus = small_corpus(tmp_path)
    out = tmp_path / "index"
    manifest = build(BuildOptions(corpus=corpus, out=out, model=BUNDLED_MODEL, index_factory=factory, progress=False))
    assert manifest.count == 64 and manifest.dimension == 384 and manifest.metric == "ip"
    assert set(manifest.files) == {"index.faiss", "corpus/corpus.bin", "corpus/offsets.u64"}
    Manifest.read(out).check_files(out, checksums=True)
    index = faiss.read_index(str(out / "index.faiss"))
    assert index.ntotal == 64
    assert not list(tmp_path.glob(".index.building-*")), "temporary build directory left behind"


def test_build_refuses_to_overwrite_and_leaves_nothing_on_failure(tmp_path: Path) -> None:
    corpus = small_corpus(tmp_path, 8)
    out = tmp_path / "index"
    build(BuildOptions(corpus=corpus, out=out, model=BUNDLED_MODEL, progress=False))
    with pytest.raises(BuildError, match="already exists"):
        build(BuildOptions(corpus=corpus, out=out, model=BUNDLED_MODEL, progress=False))
    with pytest.raises(BuildError, match="not a valid FAISS factory string"):
        build(BuildOptions(corpus=corpus, out=tmp_path / "x", model=BUNDLED_MODEL, index_factory="Nop", progress=False))
    bad = write_lines(tmp_path / "bad.jsonl", [json.dumps(TRICKY_ROWS[0]), "{oops"])
    with pytest.raises(CorpusError, match="line 2"):
        build(BuildOptions(corpus=bad, out=tmp_path / "y", model=BUNDLED_MODEL, progress=False))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    assert not list(tmp_path.glob(".*building*"))


def test_cli_build_then_plan_and_verify(tmp_path: Path) -> None:
    corpus = small_corpus(tmp_path, 16)
    out = tmp_path / "idx"
    built = run_cli("build", "--corpus", str(corpus), "--out", str(out), "--no-progress")
    assert built.returncode == 0, built.stderr
    assert "16 passages" in built.stdout
    planned = run_cli("plan", str(out), "--workers", "2", "--json")
    assert planned.returncode == 0, planned.stderr
    plan = json.loads(planned.stdout)
    assert plan["index_bytes"] == (out / "index.faiss").stat().st_size
    assert f"index:\n  sizeGiB: {plan['index_gib']}" in plan["helm_values"]
    assert "workers: 2" in plan["helm_values"]
    assert plan["memory_gib"] >= plan["index_gib"] + plan["corpus_gib"] + 2 * plan["per_worker_overhead_gib"]
    verified = run_cli("verify", str(out))
    assert verified.returncode == 0, verified.stderr
    # Flip one byte inside the index: same size, wrong checksum.
    data = bytearray((out / "index.faiss").read_bytes())
    data[-10] ^= 0xFF
    (out / "index.faiss").write_bytes(bytes(data))
    broken = run_cli("verify", str(out))
    assert broken.returncode == 3  # a data failure
    assert "index.faiss: sha256 does not match the manifest" in broken.stderr
    assert "Traceback" not in broken.stderr


def test_cli_errors_name_the_problem(tmp_path: Path) -> None:
    # Exit codes: 3 for data that is missing or broken, 2 for a wrong command line or setting.
    missing = run_cli("build", "--corpus", str(tmp_path / "nope.jsonl"), "--out", str(tmp_path / "o"))
    assert missing.returncode == 3 and "nope.jsonl: corpus file not found" in missing.stderr
    serve = run_cli("serve", "--index-dir", str(tmp_path / "nothing"))
    assert serve.returncode == 3 and "nothing: index directory does not exist" in serve.stderr
    flag = run_cli("serve", "--max-queue", "lots")
    assert flag.returncode == 2 and "--max-queue" in flag.stderr
    env_setting = run_cli("serve", env={"RETRIEVER_MAX_QUEUE": "lots"})
    assert env_setting.returncode == 2 and "--max-queue" in env_setting.stderr
    unknown = run_cli("serve", "--no-such-flag")
    assert unknown.returncode == 2 and "unrecognized arguments: --no-such-flag" in unknown.stderr
    half = run_cli("serve", "--index-path", str(tmp_path / "e5_Flat.index"))
    assert half.returncode == 2 and "--index-path and --corpus-path go together" in half.stderr
    for result in (missing, serve, flag, env_setting, unknown, half):
        assert "Traceback" not in result.stderr


def test_help_shows_defaults_environment_variables_and_exit_codes() -> None:
    serve = run_cli("serve", "--help")
    assert serve.returncode == 0
    text = " ".join(serve.stdout.split())  # argparse wraps lines
    assert "Listen port. [default: 8000; env RETRIEVER_PORT]" in text
    assert "Index directory made by `retriever build`. [env RETRIEVER_INDEX_DIR]" in text
    assert "2 usage or configuration error" in text and "3 data or load failure" in text
    load = " ".join(run_cli("load", "--help").stdout.split())
    assert "requests in flight at once (default: 16)" in load
    assert "RETRIEVER_TOKEN bearer token" in load
    build = " ".join(run_cli("build", "--help").stdout.split())
    assert "FAISS factory string: Flat, HNSW32, IVF4096,Flat, ... (default: Flat)" in build
    assert "--force replace an existing output directory (default" not in build  # switches show no default


def test_search_r1_artifacts_served_as_they_are(tmp_path: Path, encoder) -> None:
    """A bare IndexFlatIP file + the jsonl it was built from, like e5_Flat.index + wiki-18.jsonl."""
    corpus = small_corpus(tmp_path, 40)
    rows = [json.loads(line) for line in corpus.read_text().splitlines()]
    vectors = encoder.encode([r["contents"] for r in rows])
    index = faiss.IndexFlatIP(vectors.shape[1])
    index.add(vectors)
    faiss.write_index(index, str(tmp_path / "e5_Flat.index"))
    args = ["--index-path", str(tmp_path / "e5_Flat.index"), "--corpus-path", str(corpus)]
    with run_server(args, tmp_path, wait=False) as server:
        statuses = server.wait_ready(interval=0.05)  # every status seen
        query = rows[7]["contents"]
        response = httpx.post(f"{server.url}/retrieve", json={"queries": [query], "topk": 2, "return_scores": True})
        top = response.json()["result"][0][0]
        assert top["document"] == rows[7]
        assert top["score"] == pytest.approx(float(vectors[7] @ vectors[7]), abs=1e-4)
    assert 503 in statuses, "health must answer 503 while loading"
    assert statuses[-1] == 200
    store = corpus.parent / "small.jsonl.store"
    assert json.loads((store / "source.json").read_text())["rows"] == 40
    # A second start reuses the converted store instead of converting again.
    with run_server(args, tmp_path) as server:
        assert "converting corpus" not in server.log()


def test_dimension_mismatch_fails_with_a_clear_message(tmp_path: Path) -> None:
    corpus = small_corpus(tmp_path, 4)
    index = faiss.IndexFlatIP(768)  # e5-base-v2 size; the bundled model is 384
    index.add(np.random.default_rng(0).standard_normal((4, 768)).astype("float32"))
    faiss.write_index(index, str(tmp_path / "e5.index"))
    args = ["--index-path", str(tmp_path / "e5.index"), "--corpus-path", str(corpus)]
    with run_server(args, tmp_path, wait=False) as s:
        s.process.wait(timeout=120)
        assert s.process.returncode == 3
        assert "index dimension 768 does not match model" in s.log()
