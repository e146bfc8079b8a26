"""A passages jsonl served as it is converts into a store once, and again only when it changes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from app.corpus import CorpusError, CorpusStore, ensure_corpus_store


def write_jsonl(path: Path, rows: int) -> None:
    path.write_text("".join(json.dumps({"id": str(i), "contents": f'"T{i}"\ntext {i}'}) + "\n" for i in range(rows)))


def test_converted_once_then_reused_while_the_source_is_unchanged(tmp_path: Path) -> None:
    source = tmp_path / "wiki.jsonl"
    write_jsonl(source, 5)
    stages: list[str] = []
    progress: list[float] = []
    store = ensure_corpus_store(source, tmp_path / "data", on_stage=stages.append, on_progress=progress.append)
    assert store == tmp_path / "wiki.jsonl.store"
    assert len(stages) == 1 and stages[0].startswith("converting corpus wiki.jsonl")
    assert progress[-1] == pytest.approx(1.0)
    assert ensure_corpus_store(source, tmp_path / "data", on_stage=stages.append) == store
    assert len(stages) == 1, "an unchanged source must not be converted again"
    write_jsonl(source, 7)
    ensure_corpus_store(source, tmp_path / "data", on_stage=stages.append)
    assert len(stages) == 2
    opened = CorpusStore(store)
    assert opened.count == 7 and opened.row(6)["id"] == "6"
    opened.close()


def test_a_missing_source_names_the_file(tmp_path: Path) -> None:
    with pytest.raises(CorpusError, match=r"gone\.jsonl: corpus file not found"):
        ensure_corpus_store(tmp_path / "gone.jsonl", tmp_path / "data")
