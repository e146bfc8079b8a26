"""`retriever convert`: ANN / compressed indexes from a Flat index directory, with recall measured."""

from __future__ import annotations

import json
import re
import shutil
import time
from pathlib import Path

import faiss
import httpx
import numpy as np
import pytest

from app import recall
from app.convert import ConvertError, ConvertOptions, convert, recommended_nlist, resolve_factory
from app.manifest import CORPUS_DIR, INDEX_FILE, Manifest
from tests.helpers import run_cli, run_server


def test_recall_counts_the_exact_neighbours_found() -> None:
    exact = np.array([[1, 2, 3], [4, 5, 6]])
    found = np.array([[1, 9, 2], [7, 8, 9]])
    assert recall.recall_at(found, exact, 1) == 0.5
    assert recall.recall_at(found, exact, 3) == pytest.approx(2 / 6)


def test_exact_topk_in_slices_matches_one_scan(monkeypatch: pytest.MonkeyPatch) -> None:
    rng = np.random.default_rng(1)
    rows = rng.standard_normal((1000, 16)).astype(np.float32)
    queries = rng.standard_normal((20, 16)).astype(np.float32)
    monkeypatch.setattr(recall, "EXACT_CHUNK_ROWS", 97)
    _, whole = faiss.knn(queries, rows, 10, metric=faiss.METRIC_INNER_PRODUCT)
    assert (recall.exact_topk(rows, queries, 10, "ip") == whole).all()


def test_recommended_nlist_grows_with_sqrt_n_and_keeps_39_points_per_list() -> None:
    assert recommended_nlist(21_015_324) == 16384
    assert recommended_nlist(2_000_000) == 4096
    assert recommended_nlist(1000) * 39 <= 1000
    assert resolve_factory("IVF,SQ8", 2_000_000, 768) == ("IVF4096,SQ8", 4096)
    assert resolve_factory("IVF1024,PQ64", 2_000_000, 768) == ("IVF1024,PQ64", None)
    with pytest.raises(ConvertError, match="multiple of 7"):
        resolve_factory("IVF,PQ7", 2_000_000, 768)


def _convert(demo_index: Path, out: Path, factory: str, **kwargs: object) -> Manifest:
    options = ConvertOptions(source=demo_index, out=out, index_type=factory, progress=False, **kwargs)
    return convert(options).manifest


@pytest.mark.parametrize(
    ("factory", "knob"),
    [
        ("SQfp16", None),
        ("SQ8", None),
        ("HNSW16", "efSearch"),
        ("IVF,SQ8", "nprobe"),
        ("IVF4,PQ16x4", "nprobe"),
    ],
)
def test_convert_writes_a_servable_index_sharing_the_corpus(
    demo_index: Path, tmp_path: Path, factory: str, knob: str | None
) -> None:
    out = tmp_path / "out"
    manifest = _convert(demo_index, out, factory, recall_queries=50)
    source = Manifest.read(demo_index)
    assert manifest.count == source.count
    assert (out / CORPUS_DIR).is_symlink()
    assert (out / CORPUS_DIR).resolve() == (demo_index / CORPUS_DIR).resolve()
    assert manifest.model == source.model and manifest.query_prefix == source.query_prefix
    Manifest.read(out).check_files(out, checksums=True)
    index = faiss.read_index(str(out / INDEX_FILE))
    assert index.ntotal == source.count
    report = manifest.recall
    assert report["queries"]["source"] == "corpus-titles"
    assert report["knob"] == knob
    assert len(report["settings"]) >= (2 if knob else 1)
    for row in report["settings"]:
        assert 0.0 <= row["recall@1"] <= 1.0 and row["queries_per_s"] > 0
    if factory == "SQfp16":  # half precision keeps the ranking almost exactly
        assert report["settings"][0]["recall@10"] >= 0.98
    best = max(row["recall@10"] for row in report["settings"])
    if knob is not None and "PQ" not in factory:  # the widest setting finds (nearly) everything on 300 vectors
        assert best >= 0.9
    else:  # 4-bit PQ codes lose ranking precision, whatever the knob
        assert best >= 0.2


def test_the_chosen_knob_is_stored_in_the_index(demo_index: Path, tmp_path: Path) -> None:
    manifest = _convert(demo_index, tmp_path / "hnsw", "HNSW8", recall_queries=50, target_recall=0.5)
    loaded = faiss.read_index(str(tmp_path / "hnsw" / INDEX_FILE))  # kept: the downcast view does not own it
    assert manifest.recall["default"] == {"efSearch": faiss.downcast_index(loaded).hnsw.efSearch}
    chosen = next(row for row in manifest.recall["settings"] if row["knob"] == manifest.recall["default"])
    assert chosen["recall@10"] >= 0.5


def test_convert_refuses_bad_input_and_leaves_nothing(demo_index: Path, tmp_path: Path) -> None:
    out = tmp_path / "out"
    with pytest.raises(ConvertError, match="not a valid FAISS factory"):
        _convert(demo_index, out, "NotAnIndex12")
    with pytest.raises(ConvertError, match="OPQ needs a training sample of at least 9,984"):
        _convert(demo_index, out, "OPQ16,IVF4,PQ16x4")  # FAISS segfaults training OPQ on 300 vectors
    with pytest.raises(ConvertError, match="Flat index already"):
        _convert(demo_index, out, "Flat")
    assert not out.exists()
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".out.")]
    hnsw = tmp_path / "hnsw"
    _convert(demo_index, hnsw, "HNSW8", measure_recall=False)
    with pytest.raises(ConvertError, match="must be a Flat index"):
        _convert(hnsw, out, "SQ8")
    with pytest.raises(ConvertError, match="already exists"):
        _convert(demo_index, hnsw, "SQ8")


def test_cli_convert_prints_recall_table_from_a_query_file_and_serves(demo_index: Path, tmp_path: Path) -> None:
    queries = tmp_path / "queries.jsonl"
    queries.write_text("".join(json.dumps({"query": q}) + "\n" for q in ["a city in France", "an American actor"]))
    out = tmp_path / "ivf"
    done = run_cli("convert", str(demo_index), "--index-type", "IVF,Flat", "--out", str(out), "--queries", str(queries))
    assert done.returncode == 0, done.stderr
    assert "recommended nlist" in done.stdout
    assert "2 queries from" in done.stdout and "[file]" in done.stdout
    assert "recall@10" in done.stdout and "queries/s" in done.stdout
    assert Manifest.read(out).recall["queries"]["source"] == "file"
    verified = run_cli("verify", str(out))
    assert verified.returncode == 0, verified.stderr
    missing = run_cli(
        "convert",
        str(demo_index),
        "--index-type",
        "SQ8",
        "--out",
        str(tmp_path / "x"),
        "--queries",
        str(tmp_path / "nope.txt"),
    )
    assert missing.returncode == 3 and "nope.txt: query file not found" in missing.stderr
    assert "Traceback" not in missing.stderr
    assert not (tmp_path / "x").exists()


def test_convert_survives_a_moved_source_corpus_check(demo_index: Path, tmp_path: Path) -> None:
    """A converted directory whose source corpus vanished fails `verify` with the file's name."""
    source = tmp_path / "src"
    shutil.copytree(demo_index, source)
    out = tmp_path / "sq8"
    _convert(source, out, "SQ8", measure_recall=False)
    shutil.rmtree(source / CORPUS_DIR)
    done = run_cli("verify", str(out))
    assert done.returncode == 3 and "missing" in done.stderr


def _recall_at_3(answer: dict, exact: np.ndarray) -> float:
    found = [[int(row["id"]) for row in rows] for rows in answer["result"]]
    return recall.recall_at(np.array(found), exact, 3)


def test_served_converted_index_shows_build_recall_and_guards_it_live(
    demo_index: Path, tmp_path: Path, encoder
) -> None:
    out = tmp_path / "ivf"
    manifest = _convert(demo_index, out, "IVF,SQ8", recall_queries=50)
    from app.corpus import CorpusStore

    store = CorpusStore(demo_index / CORPUS_DIR)
    titles = recall.corpus_titles(store, 40, seed=5)
    assert all(int(store.row(i)["id"]) == i for i in range(store.count))  # ids are row numbers here
    store.close()
    flat = faiss.read_index(str(demo_index / INDEX_FILE))
    _, exact = flat.search(encoder.encode(titles), 3)
    env = {"RETRIEVER_RECALL_SAMPLE_FRACTION": "1", "RETRIEVER_NPROBE": "1", "RETRIEVER_RECALL_FLOOR": "0.5"}
    with run_server(["--index-dir", str(out)], tmp_path, env=env) as server:
        info = httpx.get(f"{server.url}/info").json()
        answer = httpx.post(f"{server.url}/retrieve", json={"queries": ["a city", "a river", "a film"]}).json()
        # per-request override: Search-R1's payload uses the server's nprobe 1, search_params all 4 lists
        default = httpx.post(f"{server.url}/retrieve", json={"queries": titles, "topk": 3}).json()
        body = {"queries": titles, "topk": 3, "search_params": {"nprobe": 4}}
        widened = httpx.post(f"{server.url}/retrieve", json=body).json()
        refused = {
            name: httpx.post(f"{server.url}/retrieve", json={"queries": ["x"], "search_params": params})
            for name, params in {
                "efSearch": {"efSearch": 64},
                "too many": {"nprobe": 5},
                "zero": {"nprobe": 0},
                "unknown": {"nprob": 2},
                "string": {"nprobe": "4"},
            }.items()
        }
        # every served query is sampled (fraction 1): 3 + 40 + 40, each checked or (queue full) dropped
        deadline = time.monotonic() + 120
        while (guard := httpx.get(f"{server.url}/info").json()["recall_guard"])["samples"] + guard["dropped"] < 83:
            assert time.monotonic() < deadline, guard
            time.sleep(0.1)
        metrics = httpx.get(f"{server.url}/metrics").text
        knobs = httpx.get(f"{server.url}/openapi.json").json()["components"]["schemas"]["SearchParams"]["properties"]
    # the schema offers the served index's knobs only, within its limits (generated clients, fuzzers)
    assert knobs["efSearch"]["anyOf"] == [{"type": "null"}]
    assert {
        key: value for key, value in knobs["nprobe"]["anyOf"][0].items() if key in ("type", "minimum", "maximum")
    } == {"type": "integer", "minimum": 1, "maximum": 4}
    assert info["index"]["type"] == "IndexIVFScalarQuantizer"
    assert info["index"]["recall_at_build"] == manifest.recall
    assert len(answer["result"][0]) == 3
    assert guard["reference"] == str((demo_index / INDEX_FILE).resolve())
    assert guard["samples"] + guard["dropped"] == 83 and guard["samples"] >= 3
    assert 0 <= guard["recall@topk"] <= 1 and 0 <= guard["recall@1"] <= 1
    for k, key in (("topk", "recall@topk"), ("1", "recall@1")):
        gauge = re.search(rf'^retriever_live_recall{{k="{k}"}} ([0-9.e+-]+)$', metrics, re.M)
        assert gauge is not None and float(gauge.group(1)) == pytest.approx(guard[key], abs=1e-3)
    assert f"retriever_live_recall_samples_total {float(guard['samples'])}" in metrics
    assert f"retriever_live_recall_dropped_total {float(guard['dropped'])}" in metrics
    assert "retriever_live_recall_floor 0.5" in metrics
    assert _recall_at_3(widened, exact) >= 0.9
    assert _recall_at_3(default, exact) < _recall_at_3(widened, exact)
    assert {name: r.status_code for name, r in refused.items()} == dict.fromkeys(refused, 422)
    assert (
        "search_params.efSearch: the served index (IndexIVFScalarQuantizer) has no efSearch"
        in refused["efSearch"].json()["detail"]
    )
    assert "search_params.nprobe: 5 exceeds the index's 4 lists" in refused["too many"].json()["detail"]
    for name in ("zero", "unknown", "string"):
        locs = [problem["loc"] for problem in refused[name].json()["detail"]]
        assert any(loc[:2] == ["body", "search_params"] for loc in locs), (name, locs)


def test_exact_index_runs_no_guard_and_a_wrong_reference_is_named(demo_index: Path, tmp_path: Path) -> None:
    with run_server(["--index-dir", str(demo_index)], tmp_path) as server:
        assert httpx.get(f"{server.url}/info").json()["recall_guard"] is None
    hnsw = tmp_path / "hnsw"
    _convert(demo_index, hnsw, "HNSW8", measure_recall=False)
    done = run_cli("verify", str(hnsw), env={"RETRIEVER_RECALL_REFERENCE": str(tmp_path / "missing.faiss")})
    assert done.returncode == 3 and "missing.faiss: recall reference index not found" in done.stderr


@pytest.mark.parametrize("factory", ["IVF4,Flat", "IVF4,PQ16x4", "HNSW8"])
def test_a_request_override_searches_like_the_server_setting(demo_index: Path, tmp_path: Path, factory: str) -> None:
    """search_params reach FAISS per call and leave the index's own setting alone."""
    from app.index import FaissIndex

    out = tmp_path / "out"
    _convert(demo_index, out, factory, measure_recall=False)
    index = FaissIndex(out / INDEX_FILE)
    knob = "efSearch" if "HNSW" in factory else "nprobe"
    low, high = (1, 4) if knob == "nprobe" else (1, 64)
    flat = FaissIndex(demo_index / INDEX_FILE)
    vectors = np.stack([flat.index.reconstruct(i) for i in range(0, flat.count, 7)])
    index.set_search_params(**({"nprobe": low} if knob == "nprobe" else {"ef_search": low}))
    before = index.search_params()[knob]
    overridden = index.search(vectors, 5, params={knob: high})
    assert index.search_params()[knob] == before == low
    index.set_search_params(**({"nprobe": high} if knob == "nprobe" else {"ef_search": high}))
    assert (index.search(vectors, 5)[1] == overridden[1]).all()


def test_recall_from_a_vector_file_uses_those_vectors_and_names_a_wrong_width(demo_index: Path, tmp_path: Path) -> None:
    dimension = Manifest.read(demo_index).dimension
    # Index rows, scaled: convert normalises the vectors like the index's queries. (Copied out with
    # reconstruct_n: a pointer into a downcast temporary reads freed memory once it is collected.)
    vectors = faiss.read_index(str(demo_index / INDEX_FILE)).reconstruct_n(0, 40) * 3.0
    assert vectors.shape == (40, dimension)
    path = tmp_path / "queries.npy"
    np.save(path, vectors)
    manifest = _convert(demo_index, tmp_path / "ivf", "IVF4,Flat", queries=path, recall_queries=25)
    assert manifest.recall["queries"]["source"] == "vectors-file"
    assert manifest.recall["queries"]["count"] == 25
    # The queries are index rows themselves: at every nprobe the exact top 1 is the row, and the
    # widest setting scans all four lists, so it finds everything exact search finds.
    widest = max(manifest.recall["settings"], key=lambda row: row["knob"]["nprobe"])
    assert widest["recall@10"] == 1.0
    np.save(tmp_path / "narrow.npy", vectors[:, :16])
    with pytest.raises(recall.RecallError, match="dimension 16, the index has"):
        _convert(demo_index, tmp_path / "bad", "SQ8", queries=tmp_path / "narrow.npy")
    assert not (tmp_path / "bad").exists()
